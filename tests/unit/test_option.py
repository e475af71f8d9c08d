"""Option codec: the three formats, by Option Length, and their typed errors."""

from __future__ import annotations

import pytest

from pdmv2 import (
    DecodeError,
    EncodeError,
    PdmOption,
    Pdmv2ClearOption,
    Pdmv2EncryptedOption,
    Pdmv2Fields,
    decode_option,
    encode_option,
)

FIELDS = Pdmv2Fields(14, 44, 1, 0x1234, 0x1233, 0xEE6B, 0xDE0B)


def test_rfc8250_layout_byte_for_byte() -> None:
    opt = PdmOption(scale_dtlr=14, scale_dtls=44, psntp=0x1234, psnlr=0x0102, delta_tlr=0xEE6B, delta_tls=0xDE0B)
    raw = encode_option(opt)
    assert raw == bytes.fromhex("0f0a0e2c12340102ee6bde0b")
    assert decode_option(raw) == opt


def test_pdmv2_clear_layout_byte_for_byte() -> None:
    opt = Pdmv2ClearOption(random_number=0x5555, f=1, fields=FIELDS)
    raw = encode_option(opt)
    assert len(raw) == 20 and raw[:2] == b"\x0f\x12"
    assert raw[2:4] == b"\x20\x00"  # Vrsn 2, Reserved 0
    assert raw[4:6] == ((0x5555 << 1) | 1).to_bytes(2, "big")
    assert raw[6:] == bytes.fromhex("0e2c0000000112341233ee6bde0b")
    assert decode_option(raw) == opt


def test_pdmv2_encrypted_layout() -> None:
    opt = Pdmv2EncryptedOption(random_number=1, f=0, sealed=bytes(range(30)))
    raw = encode_option(opt)
    assert raw == bytes.fromhex("0f2220000002") + bytes(range(30))
    assert decode_option(raw) == opt


@pytest.mark.parametrize(
    ("raw", "field", "offset"),
    [
        (b"", "option_length", 0),
        (b"\x0f", "option_length", 1),
        (b"\x1e\x0a" + bytes(10), "option_type", 0),
        (b"\x0f\x0a" + bytes(9), "option_length", 1),
        (b"\x0f\x0a" + bytes(11), "option_length", 1),
        (b"\x0f\x10" + bytes(16), "option_length", 1),
        (b"\x0f\x12\x10\x00" + bytes(16), "version", 2),
        (b"\x0f\x22\x30\x00" + bytes(32), "version", 2),
        (b"\x0f\x12\x20\x01" + bytes(16), "reserved", 2),
    ],
)
def test_malformed_options_raise_typed_errors(raw: bytes, field: str, offset: int) -> None:
    with pytest.raises(DecodeError) as exc:
        decode_option(raw)
    assert (exc.value.field, exc.value.offset) == (field, offset)
    assert isinstance(exc.value, ValueError)
    assert field in str(exc.value) and f"offset {offset}" in str(exc.value)


@pytest.mark.parametrize(
    ("opt", "field"),
    [
        (PdmOption(0, 0, 1 << 16, 0, 0, 0), "psntp"),
        (PdmOption(256, 0, 0, 0, 0, 0), "scale_dtlr"),
        (Pdmv2ClearOption(1, 0, Pdmv2Fields(0, 0, 1 << 32, 0, 0, 0, 0)), "global_pointer"),
        (Pdmv2ClearOption(1, 0, Pdmv2Fields(0, 0, 1, 0, -1, 0, 0)), "psnlr"),
        (Pdmv2ClearOption(1 << 15, 0, FIELDS), "random_number"),
        (Pdmv2ClearOption(1, 2, FIELDS), "f"),
        (Pdmv2EncryptedOption(1, 0, b"short"), "sealed"),
    ],
)
def test_out_of_range_fields_raise_encode_error(opt: object, field: str) -> None:
    with pytest.raises(EncodeError) as exc:
        encode_option(opt)  # type: ignore[arg-type]
    assert exc.value.field == field


def test_encode_rejects_non_options() -> None:
    with pytest.raises(EncodeError):
        encode_option("nope")  # type: ignore[arg-type]
