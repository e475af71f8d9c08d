"""Wire codec of the three PDM options: RFC 8250 PDM, PDMv2 clear, PDMv2 encrypted.

Each ``encode_*`` has its ``decode_*`` beside it.  ``decode_option`` tells the three apart
by Option Length, as draft-ietf-ippm-encrypted-pdmv2-03 §6.3 says; an unknown length or
version is a :class:`DecodeError`, never parsed with the wrong layout.  Offsets in errors
count from the Option Type octet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from .errors import DecodeError, EncodeError

__all__ = [
    "OPTION_TYPE_PDM",
    "PDMV2_VERSION",
    "OptionLength",
    "PdmOption",
    "Pdmv2Fields",
    "Pdmv2ClearOption",
    "Pdmv2EncryptedOption",
    "AnyPdmOption",
    "encode_option",
    "decode_option",
    "encode_fields",
    "decode_fields",
    "encode_v2_header",
    "option_size",
    "FIELDS_LEN",
    "TAG_LEN",
    "SEALED_LEN",
    "V2_HEADER_LEN",
]

# RFC 8250 §3.1: Option Type 0x0F, action bits 00 (skip if unrecognised), not mutable.
OPTION_TYPE_PDM = 0x0F
# draft-ietf-ippm-encrypted-pdmv2-03 §6.3: Version Number 0x2.
PDMV2_VERSION = 2


class OptionLength(IntEnum):
    """Option Length values, which tell the formats apart (draft -03 §6.3)."""

    PDM = 10  # RFC 8250 §3.1
    PDMV2_CLEAR = 0x12  # draft -03 §6.3, "Unencrypted PDM"
    PDMV2_ENCRYPTED = 0x22  # draft -03 §6.3, "Encrypted PDM"


FIELDS_LEN = 14  # ScaleDTLR..DELTATLS of PDMv2: the AEAD plaintext
TAG_LEN = 16  # AES-GCM and ChaCha20-Poly1305 tags
SEALED_LEN = FIELDS_LEN + TAG_LEN  # "Encrypted PDM Data (30 bytes)"
V2_HEADER_LEN = 6  # Type, Length, Vrsn/Reserved, Random Number/F: the AAD

_V1 = struct.Struct(">BBBBHHHH")
_V2_HEADER = struct.Struct(">BBHH")
_FIELDS = struct.Struct(">BBIHHHH")


@dataclass(frozen=True, slots=True)
class PdmOption:
    """RFC 8250 PDM (version 1), Option Length 10."""

    scale_dtlr: int
    """ScaleDTLR: scale of DELTATLR (u8)."""
    scale_dtls: int
    """ScaleDTLS: scale of DELTATLS (u8)."""
    psntp: int
    """Packet Sequence Number This Packet (u16)."""
    psnlr: int
    """Packet Sequence Number Last Received (u16)."""
    delta_tlr: int
    """Delta Time Last Received, 16 significant bits (u16)."""
    delta_tls: int
    """Delta Time Last Sent, 16 significant bits (u16)."""


@dataclass(frozen=True, slots=True)
class Pdmv2Fields:
    """The seven PDMv2 metric fields: the clear option's body and the encrypted option's plaintext."""

    scale_dtlr: int
    """ScaleDTLR: scale of DELTATLR (u8)."""
    scale_dtls: int
    """ScaleDTLS: scale of DELTATLS (u8)."""
    global_pointer: int
    """Global Pointer of the source-address type (u32, first packet 1; draft -03 §6.2)."""
    psntp: int
    """Packet Sequence Number This Packet (u16)."""
    psnlr: int
    """Packet Sequence Number Last Received (u16)."""
    delta_tlr: int
    """Delta Time Last Received, 16 significant bits (u16)."""
    delta_tls: int
    """Delta Time Last Sent, 16 significant bits (u16)."""


@dataclass(frozen=True, slots=True)
class Pdmv2ClearOption:
    """PDMv2 unencrypted, Option Length 0x12 (draft -03 §6.3)."""

    random_number: int
    """Random Number (15 bits): the PRSEQ value of this packet."""
    f: int
    """F bit: flips when the sender starts a new SessionTemporaryKey."""
    fields: Pdmv2Fields
    """The metric fields, in the clear."""


@dataclass(frozen=True, slots=True)
class Pdmv2EncryptedOption:
    """PDMv2 encrypted, Option Length 0x22: AEAD ciphertext (14 octets) then tag (16)."""

    random_number: int
    """Random Number (15 bits): selects the nonce (base_nonce XOR Random Number)."""
    f: int
    """F bit: flips when the sender starts a new SessionTemporaryKey."""
    sealed: bytes
    """Ciphertext of the 14 field octets followed by the 16-octet tag."""


AnyPdmOption = PdmOption | Pdmv2ClearOption | Pdmv2EncryptedOption


def option_size(length: OptionLength) -> int:
    """Octets the option takes in a header, with its Type and Length octets."""
    return int(length) + 2


def encode_fields(fields: Pdmv2Fields) -> bytes:
    """The 14 octets ScaleDTLR || ScaleDTLS || GP || PSNTP || PSNLR || DELTATLR || DELTATLS."""
    try:
        return _FIELDS.pack(
            fields.scale_dtlr,
            fields.scale_dtls,
            fields.global_pointer,
            fields.psntp,
            fields.psnlr,
            fields.delta_tlr,
            fields.delta_tls,
        )
    except struct.error:
        raise _range_error(fields) from None


def decode_fields(data: bytes, base: int = 0) -> Pdmv2Fields:
    """Inverse of :func:`encode_fields`; ``base`` is the offset reported in errors."""
    if len(data) != FIELDS_LEN:
        raise DecodeError("fields", base, f"need {FIELDS_LEN} octets, got {len(data)}")
    return Pdmv2Fields(*_FIELDS.unpack(data))


def encode_v2_header(length: OptionLength, random_number: int, f: int) -> bytes:
    """The 6 octets in clear in front of every PDMv2 option (the AAD of the encrypted one)."""
    if not 0 <= random_number < 1 << 15:
        raise EncodeError("random_number", f"{random_number} is not a 15-bit value")
    if f not in (0, 1):
        raise EncodeError("f", f"{f} is not a bit")
    return _V2_HEADER.pack(OPTION_TYPE_PDM, length, PDMV2_VERSION << 12, (random_number << 1) | f)


def encode_option(option: AnyPdmOption) -> bytes:
    """The whole option, Type and Length octets included."""
    if isinstance(option, Pdmv2EncryptedOption):
        if len(option.sealed) != SEALED_LEN:
            raise EncodeError("sealed", f"need {SEALED_LEN} octets, got {len(option.sealed)}")
        return encode_v2_header(OptionLength.PDMV2_ENCRYPTED, option.random_number, option.f) + option.sealed
    if isinstance(option, Pdmv2ClearOption):
        return encode_v2_header(OptionLength.PDMV2_CLEAR, option.random_number, option.f) + encode_fields(option.fields)
    if isinstance(option, PdmOption):
        try:
            return _V1.pack(
                OPTION_TYPE_PDM,
                OptionLength.PDM,
                option.scale_dtlr,
                option.scale_dtls,
                option.psntp,
                option.psnlr,
                option.delta_tlr,
                option.delta_tls,
            )
        except struct.error:
            raise _range_error(option) from None
    raise EncodeError("option", f"not a PDM option: {type(option).__name__}")


def decode_option(data: bytes) -> AnyPdmOption:
    """Decode one whole option (Type octet first) of any of the three formats."""
    data = bytes(data)
    if len(data) < 2:
        raise DecodeError("option_length", len(data), "truncated before the Option Length octet")
    if data[0] != OPTION_TYPE_PDM:
        raise DecodeError("option_type", 0, f"0x{data[0]:02x} is not PDM (0x0f)")
    length = data[1]
    if len(data) - 2 != length:
        raise DecodeError("option_length", 1, f"says {length} octets, {len(data) - 2} present")
    if length == OptionLength.PDM:
        return PdmOption(*_V1.unpack(data)[2:])
    if length not in (OptionLength.PDMV2_CLEAR, OptionLength.PDMV2_ENCRYPTED):
        raise DecodeError("option_length", 1, f"unknown PDM Option Length 0x{length:02x}")
    _, _, vrsn_res, rn_f = _V2_HEADER.unpack_from(data)
    if vrsn_res >> 12 != PDMV2_VERSION:
        raise DecodeError("version", 2, f"version {vrsn_res >> 12} with a PDMv2 length, expected 2")
    if vrsn_res & 0x0FFF:
        raise DecodeError("reserved", 2, f"reserved bits 0x{vrsn_res & 0xFFF:03x} are not zero")
    if length == OptionLength.PDMV2_CLEAR:
        return Pdmv2ClearOption(rn_f >> 1, rn_f & 1, Pdmv2Fields(*_FIELDS.unpack_from(data, V2_HEADER_LEN)))
    return Pdmv2EncryptedOption(rn_f >> 1, rn_f & 1, data[V2_HEADER_LEN:])


def _range_error(obj: object) -> EncodeError:
    limits = {
        "scale_dtlr": 8,
        "scale_dtls": 8,
        "global_pointer": 32,
        "psntp": 16,
        "psnlr": 16,
        "delta_tlr": 16,
        "delta_tls": 16,
    }
    for name, bits in limits.items():
        value = getattr(obj, name, None)
        if value is not None and not (isinstance(value, int) and 0 <= value < 1 << bits):
            return EncodeError(name, f"{value!r} is not a {bits}-bit unsigned value")
    return EncodeError("option", "a field is out of range")
