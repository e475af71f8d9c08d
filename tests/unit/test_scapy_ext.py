"""pdmv2.scapy_ext: one scapy class per PDM layout, chosen by Option Length, checked against the codec."""

from __future__ import annotations

import importlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import UDP
from scapy.layers.inet6 import HBHOptUnknown, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, PadN, RouterAlert
from scapy.packet import Packet

import pdmv2.scapy_ext as scapy_ext
from pdmv2 import (
    DecodeError,
    PdmOption,
    Pdmv2ClearOption,
    Pdmv2EncryptedOption,
    Pdmv2Fields,
    decode_option,
    encode_option,
)
from pdmv2.scapy_ext import PDM8250, PDMBadLength, PDMOption, PDMv2Clear, PDMv2Encrypted

V1 = PdmOption(scale_dtlr=1, scale_dtls=2, psntp=5, psnlr=4, delta_tlr=3, delta_tls=0xBEEF)
CLEAR = Pdmv2ClearOption(
    random_number=0x1234,
    f=1,
    fields=Pdmv2Fields(
        scale_dtlr=14, scale_dtls=0, global_pointer=7, psntp=100, psnlr=99, delta_tlr=0xEE6B, delta_tls=0
    ),
)
ENCRYPTED = Pdmv2EncryptedOption(random_number=0x7FFF, f=0, sealed=bytes(range(30)))
OTHER = HBHOptUnknown(otype=0x1E, optdata=b"xyz")  # an option after ours, to see where ours ends


def options_of(option: bytes) -> list[Packet]:
    """The options scapy finds in a Destination Options header holding ``option`` then OTHER."""
    raw = bytes(
        IPv6(src="2001:db8:1::10", dst="2001:db8:2::20")
        / IPv6ExtHdrDestOpt(options=[HBHOptUnknown(option), OTHER])
        / UDP(sport=1, dport=2)
    )
    return [o for o in IPv6(raw)[IPv6ExtHdrDestOpt].options if not isinstance(o, PadN)]


@pytest.mark.parametrize(
    ("option", "cls"),
    [(V1, PDM8250), (CLEAR, PDMv2Clear), (ENCRYPTED, PDMv2Encrypted)],
    ids=["rfc8250", "clear", "encrypted"],
)
def test_each_layout_is_dissected_by_its_class(option: object, cls: type[PDMOption]) -> None:
    wire = encode_option(option)  # type: ignore[arg-type]
    found = options_of(wire)
    assert [type(o) for o in found] == [cls, HBHOptUnknown]
    assert bytes(found[0]) == wire
    assert found[1].otype == 0x1E and found[1].optdata == b"xyz"
    assert isinstance(PDMOption(wire), cls) and isinstance(HBHOptUnknown(wire), cls)


def test_the_rfc8250_fields_are_the_codec_fields() -> None:
    opt = PDMOption(encode_option(V1))
    got = (opt.scale_dtlr, opt.scale_dtls, opt.psntp, opt.psnlr, opt.delta_tlr, opt.delta_tls)
    assert got == (1, 2, 5, 4, 3, 0xBEEF)
    assert not hasattr(opt, "random_number") and not hasattr(opt, "global_pointer")


def test_the_clear_fields_are_the_codec_fields() -> None:
    opt = PDMOption(encode_option(CLEAR))
    assert (opt.version, opt.reserved, opt.random_number, opt.f) == (2, 0, 0x1234, 1)
    f = CLEAR.fields
    assert (opt.scale_dtlr, opt.scale_dtls, opt.global_pointer, opt.psntp, opt.psnlr, opt.delta_tlr, opt.delta_tls) == (
        f.scale_dtlr,
        f.scale_dtls,
        f.global_pointer,
        f.psntp,
        f.psnlr,
        f.delta_tlr,
        f.delta_tls,
    )


def test_the_encrypted_fields_are_the_codec_fields() -> None:
    opt = PDMOption(encode_option(ENCRYPTED))
    assert (opt.version, opt.random_number, opt.f, opt.sealed) == (2, 0x7FFF, 0, bytes(range(30)))
    assert not hasattr(opt, "psntp")


def test_built_options_decode_with_the_codec() -> None:
    v1 = PDM8250(scale_dtlr=1, scale_dtls=2, psntp=5, psnlr=4, delta_tlr=3, delta_tls=0xBEEF)
    assert decode_option(bytes(v1)) == V1
    clear = PDMOption(
        optlen=0x12, random_number=0x1234, f=1, scale_dtlr=14, global_pointer=7, psntp=100, psnlr=99, delta_tlr=0xEE6B
    )
    assert isinstance(clear, PDMv2Clear) and decode_option(bytes(clear)) == CLEAR
    enc = PDMOption(optlen=0x22, random_number=0x7FFF, sealed=bytes(range(30)))
    assert isinstance(enc, PDMv2Encrypted) and decode_option(bytes(enc)) == ENCRYPTED


def test_building_picks_the_class_from_optlen() -> None:
    assert isinstance(PDMOption(), PDMv2Clear)  # the default layout, as before the split
    assert bytes(PDMOption())[:2] == b"\x0f\x12" and len(bytes(PDMOption())) == 2 + 0x12
    assert isinstance(PDMOption(optlen=10), PDM8250) and len(bytes(PDMOption(optlen=10))) == 12
    assert isinstance(PDMOption(optlen=0x22), PDMv2Encrypted) and len(bytes(PDMOption(optlen=0x22))) == 2 + 0x22
    assert isinstance(PDMOption(optlen=5), PDMBadLength)


def test_a_field_of_another_layout_is_refused() -> None:
    with pytest.raises(AttributeError):
        PDM8250(random_number=3)
    with pytest.raises(AttributeError):
        PDMOption(optlen=0x22, psntp=1)


@pytest.mark.parametrize("length", [0, 5, 0x11, 0x13, 0x21, 0x23, 0xFF])
def test_an_unknown_length_is_kept_as_raw_octets(length: int) -> None:
    wire = bytes([0x0F, length]) + bytes(range(length))
    found = options_of(wire)
    assert [type(o) for o in found] == [PDMBadLength, HBHOptUnknown]  # the next option is still found
    assert found[0].optlen == length and found[0].optdata == bytes(range(length))
    assert bytes(found[0]) == wire
    with pytest.raises(DecodeError):
        decode_option(wire)


def test_a_cut_short_option_is_kept_as_raw_octets() -> None:
    wire = encode_option(ENCRYPTED)[:20]
    opt = PDMOption(wire)
    assert isinstance(opt, PDMBadLength) and opt.optlen == 0x22 and opt.optdata == wire[2:]


def test_a_malformed_option_can_be_built() -> None:
    opt = PDMBadLength(optdata=b"abc")
    assert bytes(opt) == b"\x0f\x03abc"
    assert isinstance(options_of(bytes(opt))[0], PDMBadLength)


def test_scapy_options_are_dissected_as_before() -> None:
    raw = bytes(IPv6() / IPv6ExtHdrHopByHop(options=[RouterAlert(value=1)]) / UDP())
    assert isinstance(IPv6(raw)[IPv6ExtHdrHopByHop].options[0], RouterAlert)
    assert type(HBHOptUnknown(b"\x1e\x01a")) is HBHOptUnknown
    # Without raw octets scapy's generic class is built as asked, even with otype 0x0F.
    hand = HBHOptUnknown(otype=0x0F, optlen=2, optdata=b"ab")
    assert type(hand) is HBHOptUnknown and bytes(hand) == b"\x0f\x02ab"


def test_register_is_idempotent_and_survives_a_reload() -> None:
    hook = HBHOptUnknown.__dict__["dispatch_hook"]
    scapy_ext.register()
    scapy_ext.register()
    assert HBHOptUnknown.__dict__["dispatch_hook"] is hook  # not wrapped twice
    saved = dict(vars(scapy_ext))
    module = importlib.reload(scapy_ext)
    try:
        assert module.PDMv2Clear is not PDMv2Clear
        assert isinstance(HBHOptUnknown(encode_option(CLEAR)), module.PDMv2Clear)
        assert isinstance(HBHOptUnknown(bytes(RouterAlert(value=1))), RouterAlert)
    finally:  # the classes other tests imported are the ones scapy picks again
        vars(scapy_ext).update(saved)
        scapy_ext.register()
    assert isinstance(HBHOptUnknown(encode_option(CLEAR)), PDMv2Clear)


@given(length=st.integers(0, 255), data=st.binary(min_size=0, max_size=300))
def test_any_option_of_type_0x0f_round_trips(length: int, data: bytes) -> None:
    wire = bytes([0x0F, length]) + data
    opt = HBHOptUnknown(wire)
    assert isinstance(opt, PDMOption)
    layouts = {10: PDM8250, 0x12: PDMv2Clear, 0x22: PDMv2Encrypted}
    expected = layouts.get(length, PDMBadLength) if len(data) >= length else PDMBadLength
    assert type(opt) is expected
    assert opt.self_build() == wire[: 2 + length]  # this layer only; the rest is padding
