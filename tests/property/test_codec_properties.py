"""Properties: decode(encode(x)) == x, headers a multiple of 8, random bytes raise only typed errors."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6

from pdmv2 import (
    DecodeError,
    InsertError,
    PdmOption,
    Pdmv2ClearOption,
    Pdmv2EncryptedOption,
    Pdmv2Fields,
    decode_option,
    encode_option,
    insert_option,
    parse_packet,
    remove_option,
)
from pdmv2.core.doh import build_dest_opts, parse_dest_opts

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
rn = st.integers(0, 0x7FFF)
bit = st.integers(0, 1)
fields = st.builds(Pdmv2Fields, u8, u8, u32, u16, u16, u16, u16)
options = st.one_of(
    st.builds(PdmOption, u8, u8, u16, u16, u16, u16),
    st.builds(Pdmv2ClearOption, rn, bit, fields),
    st.builds(Pdmv2EncryptedOption, rn, bit, st.binary(min_size=30, max_size=30)),
)


@given(options)
def test_option_roundtrip(opt: object) -> None:
    raw = encode_option(opt)  # type: ignore[arg-type]
    assert len(raw) in (12, 20, 36)
    assert decode_option(raw) == opt


@given(options, st.binary(max_size=300), st.lists(st.binary(min_size=0, max_size=13), max_size=3))
@settings(max_examples=300)
def test_insert_remove_roundtrip_and_alignment(opt: object, payload: bytes, others: list[bytes]) -> None:
    raw_opt = encode_option(opt)  # type: ignore[arg-type]
    pkt = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1, dport=2) / payload)
    if others:
        hdr = build_dest_opts(17, [bytes([0x1E, len(o)]) + o for o in others])
        pkt = pkt[:6] + b"\x3c" + pkt[7:40] + hdr + pkt[40:]
        pkt = pkt[:4] + (len(pkt) - 40).to_bytes(2, "big") + pkt[6:]
    out = insert_option(pkt, raw_opt)
    _, length, opts = parse_dest_opts(out[40:])
    assert length % 8 == 0
    info = parse_packet(out)
    assert info.pdm_option == raw_opt and (info.pdm_offset - 40) % 2 == 0  # type: ignore[operator]
    assert [o.type for o in opts][-1] == 0x0F
    stripped, got = remove_option(out)
    assert got == raw_opt
    if not others:
        assert stripped == pkt


def test_100k_random_options_raise_only_decode_error() -> None:
    rng = random.Random(8250)
    lengths = [10, 0x12, 0x22]
    ok = 0
    for i in range(100_000):
        if i % 2:
            n = rng.choice(lengths)
            blob = bytearray(rng.randbytes(n + 2))
            blob[0] = 0x0F if rng.random() < 0.9 else blob[0]
            blob[1] = n if rng.random() < 0.9 else blob[1]
            if rng.random() < 0.5:
                blob[2] = 0x20 | (blob[2] & 0x0F)
        else:
            blob = bytearray(rng.randbytes(rng.randrange(0, 48)))
        try:
            decode_option(bytes(blob))
            ok += 1
        except DecodeError:
            pass
    assert ok > 1000  # the generator does reach the valid formats too


def test_100k_random_packets_raise_only_typed_errors() -> None:
    rng = random.Random(8200)
    base = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1, dport=2) / b"payload!")
    seeds = [base, insert_option(base, encode_option(PdmOption(1, 2, 3, 4, 5, 6)))]
    parsed = 0
    for i in range(100_000):
        if i % 2:
            blob = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 4)):
                blob[rng.randrange(len(blob))] = rng.randrange(256)
            if rng.random() < 0.3:
                del blob[rng.randrange(len(blob)) :]
        else:
            blob = bytearray(b"\x60" + rng.randbytes(rng.randrange(0, 120)))
        try:
            info = parse_packet(bytes(blob))
            parsed += 1
            if info.pdm_option is not None:
                remove_option(bytes(blob), info)
            else:
                insert_option(bytes(blob), b"\x0f\x0a" + bytes(10), info=info)
        except (DecodeError, InsertError):
            pass
    assert parsed > 1000
