"""scapy option classes for PDM and PDMv2, registered so ``IPv6ExtHdrDestOpt`` dissects them.

One class per layout, as on the wire (Option Type 0x0F; Option Length tells them apart, draft
-03 §6.3; docs/protocol.md §1):

=====================  ======  ===============================================================
class                  length  fields after Option Type and Option Length
=====================  ======  ===============================================================
``PDM8250``            10      RFC 8250 PDM: scales, PSNTP, PSNLR, DELTATLR, DELTATLS
``PDMv2Clear``         0x12    PDMv2 in the clear: version, Random Number, F, scales, Global
                               Pointer, PSNTP, PSNLR, DELTATLR, DELTATLS
``PDMv2Encrypted``     0x22    PDMv2 encrypted: version, Random Number, F, then ``sealed``
                               (14 octets of ciphertext and the 16-octet AEAD tag)
``PDMBadLength``       other   any other Option Length (or an option cut short): raw octets
=====================  ======  ===============================================================

All four derive from :class:`PDMOption`, whose ``dispatch_hook`` picks the class from the
Option Length, both when dissecting (``PDMOption(raw)``) and when building
(``PDMOption(optlen=0x22, ...)``; without ``optlen`` it builds the clear layout).

scapy picks an IPv6 option's class by Option Type (``HBHOptUnknown.dispatch_hook`` and the table
``scapy.layers.inet6._hbhoptcls``) but does not call the hook of the class it picked.
Importing this module (or calling :func:`register`) puts :class:`PDMOption` in that table for
0x0F and lets scapy's hook hand over to the picked class's own ``dispatch_hook`` when it has
one; scapy's own options have none, so they are dissected as before.

For tests and for users crafting packets; the protocol stack itself does not use scapy.
"""

from __future__ import annotations

from typing import Any

from scapy.fields import BitField, ByteField, FieldLenField, IntField, ShortField, StrFixedLenField, StrLenField
from scapy.layers import inet6
from scapy.packet import Packet

from .core.option import OPTION_TYPE_PDM, PDMV2_VERSION, SEALED_LEN, OptionLength

__all__ = ["PDM8250", "PDMBadLength", "PDMOption", "PDMv2Clear", "PDMv2Encrypted", "register"]


class PDMOption(Packet):
    """Base of the PDM option classes; calling it gives the class of the Option Length."""

    name = "PDM option"
    # The layout of PDMBadLength; the layouts below replace it.
    fields_desc = [  # noqa: RUF012  (scapy reads this class attribute)
        ByteField("otype", OPTION_TYPE_PDM),
        FieldLenField("optlen", None, length_of="optdata", fmt="B"),
        StrLenField("optdata", b"", length_from=lambda pkt: pkt.optlen),
    ]

    @classmethod
    def dispatch_hook(cls, _pkt: bytes | None = None, *args: Any, **kargs: Any) -> type[Packet]:
        """The class for ``_pkt`` (its second octet) or for the ``optlen`` keyword."""
        if _pkt:
            if len(_pkt) < 2:
                return PDMBadLength
            layout = _LAYOUTS.get(_pkt[1], PDMBadLength)
            # A layout needs the whole option; a cut-short one is kept as raw octets.
            return layout if len(_pkt) >= 2 + _pkt[1] else PDMBadLength
        optlen = kargs.get("optlen")
        if optlen is None:
            return PDMv2Clear
        return _LAYOUTS.get(optlen, PDMBadLength)

    def alignment_delta(self, curpos: int) -> int:
        """RFC 8250 §3.1: the option starts at an even offset (2n)."""
        return curpos % 2

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


class PDM8250(PDMOption):
    """RFC 8250 PDM, Option Length 10."""

    name = "PDM (RFC 8250)"
    fields_desc = [  # noqa: RUF012
        ByteField("otype", OPTION_TYPE_PDM),
        ByteField("optlen", int(OptionLength.PDM)),
        ByteField("scale_dtlr", 0),
        ByteField("scale_dtls", 0),
        ShortField("psntp", 0),
        ShortField("psnlr", 0),
        ShortField("delta_tlr", 0),
        ShortField("delta_tls", 0),
    ]


class PDMv2Clear(PDMOption):
    """PDMv2 unencrypted, Option Length 0x12."""

    name = "PDMv2 (clear)"
    fields_desc = [  # noqa: RUF012
        ByteField("otype", OPTION_TYPE_PDM),
        ByteField("optlen", int(OptionLength.PDMV2_CLEAR)),
        BitField("version", PDMV2_VERSION, 4),
        BitField("reserved", 0, 12),
        BitField("random_number", 1, 15),
        BitField("f", 0, 1),
        ByteField("scale_dtlr", 0),
        ByteField("scale_dtls", 0),
        IntField("global_pointer", 1),
        ShortField("psntp", 0),
        ShortField("psnlr", 0),
        ShortField("delta_tlr", 0),
        ShortField("delta_tls", 0),
    ]


class PDMv2Encrypted(PDMOption):
    """PDMv2 encrypted, Option Length 0x22: ``sealed`` is the ciphertext then the tag."""

    name = "PDMv2 (encrypted)"
    fields_desc = [  # noqa: RUF012
        ByteField("otype", OPTION_TYPE_PDM),
        ByteField("optlen", int(OptionLength.PDMV2_ENCRYPTED)),
        BitField("version", PDMV2_VERSION, 4),
        BitField("reserved", 0, 12),
        BitField("random_number", 1, 15),
        BitField("f", 0, 1),
        StrFixedLenField("sealed", b"\x00" * SEALED_LEN, SEALED_LEN),
    ]


class PDMBadLength(PDMOption):
    """Option Type 0x0F with an Option Length of no layout, or cut short: the raw octets."""

    name = "PDM option (unknown Option Length)"


_LAYOUTS: dict[int, type[PDMOption]] = {
    int(OptionLength.PDM): PDM8250,
    int(OptionLength.PDMV2_CLEAR): PDMv2Clear,
    int(OptionLength.PDMV2_ENCRYPTED): PDMv2Encrypted,
}

_SCAPY_HOOK = "_scapy_dispatch_hook"
_current = inet6.HBHOptUnknown.__dict__["dispatch_hook"].__func__
# scapy's own hook, also when this module is imported again (importlib.reload) after register().
_BY_TYPE = getattr(_current, _SCAPY_HOOK, _current)


def _by_type_then_own_hook(cls: type[Packet], _pkt: bytes | None = None, *args: Any, **kargs: Any) -> type[Packet]:
    """scapy's choice by Option Type, then the chosen class's own dispatch_hook, if it has one."""
    chosen: type[Packet] = _BY_TYPE(cls, _pkt, *args, **kargs)
    if chosen is not cls and "dispatch_hook" in chosen.__dict__:
        return chosen.dispatch_hook(_pkt, *args, **kargs)  # type: ignore[no-any-return]
    return chosen


setattr(_by_type_then_own_hook, _SCAPY_HOOK, _BY_TYPE)


def register() -> None:
    """Make scapy dissect option type 0x0F with the PDM classes (idempotent)."""
    inet6._hbhoptcls[OPTION_TYPE_PDM] = PDMOption
    if inet6.HBHOptUnknown.__dict__["dispatch_hook"].__func__ is not _by_type_then_own_hook:
        inet6.HBHOptUnknown.dispatch_hook = classmethod(_by_type_then_own_hook)  # type: ignore[method-assign,assignment]


register()
