"""A scapy option class for PDM and PDMv2, registered so ``IPv6ExtHdrDestOpt`` dissects it.

One class serves the three formats; its fields depend on Option Length (10, 0x12, 0x22), as
on the wire.  Importing this module registers it in ``scapy.layers.inet6._hbhoptcls[0x0F]``.
For tests and for users crafting packets; the protocol stack itself does not use scapy.
"""

from __future__ import annotations

from typing import Any

from scapy.fields import (
    BitField,
    ByteField,
    ConditionalField,
    IntField,
    ShortField,
    StrFixedLenField,
    StrLenField,
)
from scapy.layers import inet6
from scapy.packet import Packet

from .core.option import OPTION_TYPE_PDM, SEALED_LEN, OptionLength

__all__ = ["PDMOption", "register"]

_V1 = int(OptionLength.PDM)
_CLEAR = int(OptionLength.PDMV2_CLEAR)
_ENC = int(OptionLength.PDMV2_ENCRYPTED)


def _is(*lengths: int) -> Any:
    return lambda pkt: pkt.optlen in lengths


class PDMOption(Packet):
    """RFC 8250 PDM (optlen 10), PDMv2 clear (0x12) or PDMv2 encrypted (0x22)."""

    name = "PDM / PDMv2 Destination Option"
    fields_desc = [  # noqa: RUF012  (scapy reads this class attribute)
        ByteField("otype", OPTION_TYPE_PDM),
        ByteField("optlen", _CLEAR),
        ConditionalField(BitField("version", 2, 4), _is(_CLEAR, _ENC)),
        ConditionalField(BitField("reserved", 0, 12), _is(_CLEAR, _ENC)),
        ConditionalField(BitField("random_number", 1, 15), _is(_CLEAR, _ENC)),
        ConditionalField(BitField("f", 0, 1), _is(_CLEAR, _ENC)),
        ConditionalField(ByteField("scale_dtlr", 0), _is(_V1, _CLEAR)),
        ConditionalField(ByteField("scale_dtls", 0), _is(_V1, _CLEAR)),
        ConditionalField(IntField("global_pointer", 1), _is(_CLEAR)),
        ConditionalField(ShortField("psntp", 0), _is(_V1, _CLEAR)),
        ConditionalField(ShortField("psnlr", 0), _is(_V1, _CLEAR)),
        ConditionalField(ShortField("delta_tlr", 0), _is(_V1, _CLEAR)),
        ConditionalField(ShortField("delta_tls", 0), _is(_V1, _CLEAR)),
        ConditionalField(StrFixedLenField("sealed", b"\x00" * SEALED_LEN, SEALED_LEN), _is(_ENC)),
        ConditionalField(
            StrLenField("optdata", b"", length_from=lambda pkt: pkt.optlen),
            lambda pkt: pkt.optlen not in (_V1, _CLEAR, _ENC),
        ),
    ]

    def alignment_delta(self, curpos: int) -> int:
        """RFC 8250 §3.1: the option starts at an even offset (2n)."""
        return curpos % 2

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


def register() -> None:
    """Make scapy dissect option type 0x0F with :class:`PDMOption` (idempotent)."""
    inet6._hbhoptcls[OPTION_TYPE_PDM] = PDMOption


register()
