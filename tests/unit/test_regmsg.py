"""Registration message codec: round trips, framing limits, typed errors naming the field."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pdmv2 import DecodeError, EncodeError
from pdmv2.core.regmsg import (
    HEADER_LEN,
    MAX_BODY,
    ErrorMessage,
    KemRequest,
    KemResponse,
    MsgType,
    SetupRequest,
    SetupResponse,
    decode_body,
    decode_header,
    encode_header,
    encode_message,
)

P = (ipaddress.IPv6Network("2001:db8:1::/64"), ipaddress.IPv6Network("2001:db8:1:100::/56"))
MESSAGES = [
    SetupRequest(b"n" * 16, (0x20, 0x10), (1, 3), (1, 2, 3), P, ((0x20, b"k" * 32), (0x10, b"q" * 65))),
    SetupResponse(b"m" * 16, 0x20, 1, 3, b"p" * 32),
    KemRequest(b"e" * 32, b"s" * 32, b"c" * 33),
    KemResponse(0, b"r" * 16, 86400, b"x" * 32),
    ErrorMessage(4, "PC key is not on the allow-list"),
]


def roundtrip(msg: object) -> object:
    frame = encode_message(msg)  # type: ignore[arg-type]
    header = decode_header(frame[:HEADER_LEN])
    assert header.length == len(frame) - HEADER_LEN
    return decode_body(header.type, frame[HEADER_LEN:])


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_roundtrip(msg: object) -> None:
    assert roundtrip(msg) == msg


def test_frame_layout() -> None:
    frame = encode_message(ErrorMessage(7, "big"))
    assert frame == b"PR\x01\x7f\x00\x06" + b"\x00\x07\x03big"


@pytest.mark.parametrize(
    ("header", "field"),
    [
        (b"XX\x01\x01\x00\x00", "magic"),
        (b"PR\x02\x01\x00\x00", "version"),
        (b"PR\x01\x01\xff\xff", "length"),
        (b"PR\x01", "header"),
    ],
)
def test_bad_headers(header: bytes, field: str) -> None:
    with pytest.raises(DecodeError) as exc:
        decode_header(header)
    assert exc.value.field == field


def test_oversize_refused_on_both_sides() -> None:
    with pytest.raises(EncodeError):
        encode_header(MsgType.KEM_REQUEST, MAX_BODY + 1)
    with pytest.raises(DecodeError):
        decode_header(b"PR\x01\x03" + (MAX_BODY + 1).to_bytes(2, "big"))


@pytest.mark.parametrize(
    ("msg_type", "body", "field"),
    [
        (MsgType.SETUP_REQUEST, b"short", "nonce"),
        (MsgType.SETUP_REQUEST, b"n" * 16 + b"\x00", "kems"),
        (MsgType.SETUP_RESPONSE, b"m" * 16 + b"\x00\x20\x00\x01\x00\x01\x00\x20" + b"p", "ps_key"),
        (MsgType.KEM_REQUEST, b"\x00\x02ee" + b"s" * 10, "salt"),
        (MsgType.KEM_RESPONSE, b"\x00" + b"r" * 16 + b"\x00\x00\x00\x01\x00\x00" + b"extra", "body"),
        (MsgType.ERROR, b"\x00\x01\x02\xff\xfe", "reason"),
        (99, b"", "type"),
    ],
)
def test_bad_bodies(msg_type: int, body: bytes, field: str) -> None:
    with pytest.raises(DecodeError) as exc:
        decode_body(msg_type, body)
    assert exc.value.field == field


def test_setup_request_bad_prefix() -> None:
    good = encode_message(MESSAGES[0])[HEADER_LEN:]
    i = 16 + 5 + 5 + 7 + 1  # nonce, kems, kdfs, aeads, prefix count
    bad = good[:i] + bytes(15) + b"\x01" + b"\x40" + good[i + 17 :]  # ::1/64 has host bits
    with pytest.raises(DecodeError) as exc:
        decode_body(MsgType.SETUP_REQUEST, bad)
    assert exc.value.field == "prefix"


def test_secrets_not_in_repr() -> None:
    text = repr(KemRequest(b"e", b"S" * 32, b"C" * 16)) + repr(KemResponse(0, b"r" * 16, 1, b"X" * 32))
    assert "SSSS" not in text and "CCCC" not in text and "XXXX" not in text


@given(st.integers(0, 255), st.binary(max_size=300))
def test_random_bodies_raise_only_decode_error(msg_type: int, body: bytes) -> None:
    try:
        decode_body(msg_type, body)
    except DecodeError:
        pass


def test_mutated_frames_raise_only_decode_error() -> None:
    rng = random.Random(4)
    frames = [encode_message(m) for m in MESSAGES]
    for _ in range(20000):
        f = bytearray(rng.choice(frames))
        for _ in range(rng.randrange(1, 4)):
            f[rng.randrange(len(f))] = rng.randrange(256)
        try:
            h = decode_header(bytes(f[:HEADER_LEN]))
            decode_body(h.type, bytes(f[HEADER_LEN : HEADER_LEN + h.length]))
        except DecodeError:
            pass
