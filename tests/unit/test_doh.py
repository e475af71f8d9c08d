"""Destination Options header on raw packets, with scapy as the independent reader."""

from __future__ import annotations

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    HBHOptUnknown,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    RouterAlert,
)
from scapy.packet import Raw

import pdmv2.scapy_ext  # noqa: F401  (registers the PDM option class)
from pdmv2 import (
    DecodeError,
    InsertError,
    PdmOption,
    Pdmv2ClearOption,
    Pdmv2Fields,
    build_dest_opts,
    decode_option,
    encode_option,
    insert_option,
    parse_dest_opts,
    parse_packet,
    remove_option,
)
from pdmv2.core.doh import padding
from pdmv2.scapy_ext import PDMOption

SRC, DST = "2001:db8:1::10", "2001:db8:2::20"
CLEAR = encode_option(Pdmv2ClearOption(0x1234, 1, Pdmv2Fields(14, 0, 7, 100, 99, 0xEE6B, 0)))
V1 = encode_option(PdmOption(0, 0, 5, 4, 3, 2))
ENCRYPTED = bytes.fromhex("0f2220000002") + bytes(range(30))


def udp(payload: bytes = b"hello pdm") -> bytes:
    return bytes(IPv6(src=SRC, dst=DST) / UDP(sport=4000, dport=5000) / Raw(payload))


def assert_checksum_valid(raw: bytes, layer: type) -> None:
    name = "cksum" if layer is ICMPv6EchoRequest else "chksum"
    pkt = IPv6(raw)
    sent = getattr(pkt[layer], name)
    delattr(pkt[layer], name)
    assert getattr(IPv6(bytes(pkt))[layer], name) == sent


@pytest.mark.parametrize("option", [CLEAR, V1, ENCRYPTED], ids=["clear", "v1", "encrypted"])
@pytest.mark.parametrize(
    ("packet", "layer"),
    [
        (udp(), UDP),
        (bytes(IPv6(src=SRC, dst=DST) / TCP(sport=4000, dport=80, flags="S")), TCP),
        (bytes(IPv6(src=SRC, dst=DST) / ICMPv6EchoRequest(id=7, seq=1, data=b"x" * 56)), ICMPv6EchoRequest),
    ],
    ids=["udp", "tcp", "icmpv6"],
)
def test_insert_is_read_by_scapy_and_keeps_checksums(option: bytes, packet: bytes, layer: type) -> None:
    out = insert_option(packet, option)
    pkt = IPv6(out)
    doh = pkt[IPv6ExtHdrDestOpt]
    assert pkt.nh == 60 and pkt.plen == len(out) - 40
    assert (doh.len + 1) * 8 == len(bytes(doh)) - len(bytes(doh.payload))
    assert ((doh.len + 1) * 8) % 8 == 0
    pdm = [o for o in doh.options if isinstance(o, PDMOption)]
    assert len(pdm) == 1 and bytes(pdm[0]) == option
    info = parse_packet(out)
    assert info.pdm_option == option and info.pdm_offset is not None
    assert (info.pdm_offset - 40) % 2 == 0
    assert_checksum_valid(out, layer)
    assert remove_option(out) == (packet, option)


def test_scapy_fields_of_clear_option() -> None:
    pkt = IPv6(insert_option(udp(), CLEAR))
    opt = next(o for o in pkt[IPv6ExtHdrDestOpt].options if isinstance(o, PDMOption))
    assert (opt.version, opt.random_number, opt.f, opt.global_pointer, opt.psntp, opt.psnlr) == (
        2,
        0x1234,
        1,
        7,
        100,
        99,
    )


def test_scapy_built_option_decodes_with_pdmv2() -> None:
    built = PDMOption(optlen=0x12, random_number=9, f=1, scale_dtlr=3, global_pointer=2, psntp=11, psnlr=10)
    decoded = decode_option(bytes(built))
    assert isinstance(decoded, Pdmv2ClearOption)
    assert (decoded.random_number, decoded.f, decoded.fields.global_pointer, decoded.fields.psntp) == (9, 1, 2, 11)
    raw = bytes(IPv6(src=SRC, dst=DST) / IPv6ExtHdrDestOpt(options=[built]) / UDP(sport=1, dport=2))
    assert parse_packet(raw).pdm_option == bytes(built)


def test_insert_after_hop_by_hop() -> None:
    packet = bytes(IPv6(src=SRC, dst=DST) / IPv6ExtHdrHopByHop(options=[RouterAlert()]) / UDP(sport=1, dport=2))
    out = insert_option(packet, CLEAR)
    pkt = IPv6(out)
    assert pkt.nh == 0 and pkt[IPv6ExtHdrHopByHop].nh == 60 and pkt[IPv6ExtHdrDestOpt].nh == 17
    assert_checksum_valid(out, UDP)
    assert remove_option(out)[0] == packet


def test_merge_into_existing_destination_options() -> None:
    other = HBHOptUnknown(otype=0x1E, optdata=b"abc")
    packet = bytes(IPv6(src=SRC, dst=DST) / IPv6ExtHdrDestOpt(options=[other]) / UDP(sport=1, dport=2) / Raw(b"z"))
    out = insert_option(packet, ENCRYPTED)
    pkt = IPv6(out)
    assert pkt.nh == 60 and not isinstance(pkt[IPv6ExtHdrDestOpt].payload, IPv6ExtHdrDestOpt)
    types = [o.otype for o in pkt[IPv6ExtHdrDestOpt].options if o.otype not in (0, 1)]
    assert types == [0x1E, 0x0F]
    _, length, options = parse_dest_opts(out[40:])
    assert length % 8 == 0 and [o.type for o in options] == [0x1E, 0x0F]
    assert_checksum_valid(out, UDP)
    stripped, opt = remove_option(out)
    assert opt == ENCRYPTED
    assert [o.type for o in parse_dest_opts(stripped[40:])[2]] == [0x1E]
    assert_checksum_valid(stripped, UDP)


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (bytes(IPv6(src=SRC, dst=DST) / IPv6ExtHdrFragment(offset=0, m=1, id=5) / UDP(sport=1, dport=2)), "fragment"),
        (bytes(IPv6(src=SRC, dst=DST) / IPv6ExtHdrRouting(addresses=[DST]) / UDP(sport=1, dport=2)), "routing header"),
        (bytes(IPv6(src=SRC, dst=DST, nh=50) / Raw(b"\x00" * 24)), "ipsec"),
    ],
)
def test_refused_packets_say_why(packet: bytes, reason: str) -> None:
    with pytest.raises(InsertError) as exc:
        insert_option(packet, CLEAR)
    assert exc.value.reason == reason


def test_jumbogram_refused() -> None:
    raw = bytearray(udp())
    raw[4:6] = b"\x00\x00"
    with pytest.raises(InsertError) as exc:
        insert_option(bytes(raw), CLEAR)
    assert exc.value.reason == "jumbogram"


def test_no_room_for_the_option() -> None:
    packet = udp(b"x" * 1452)  # 1500 octets
    with pytest.raises(InsertError) as exc:
        insert_option(packet, ENCRYPTED, mtu=1500)
    assert exc.value.reason == "no room"
    assert len(insert_option(udp(b"x" * 1412), ENCRYPTED, mtu=1500)) == 1500
    with pytest.raises(InsertError):
        insert_option(udp(b"x" * 65500), ENCRYPTED)


def test_second_pdm_refused() -> None:
    with pytest.raises(InsertError) as exc:
        insert_option(insert_option(udp(), CLEAR), CLEAR)
    assert exc.value.reason == "already has PDM"


def test_padding_helper_and_builder() -> None:
    assert padding(0) == b"" and padding(1) == b"\x00" and padding(4) == b"\x01\x02\x00\x00"
    for size in range(2, 60):
        opt = bytes([0x1E, size - 2]) + bytes(size - 2)
        hdr = build_dest_opts(17, [opt])
        assert len(hdr) % 8 == 0 and (hdr[1] + 1) * 8 == len(hdr)
        assert parse_dest_opts(hdr)[2][0].offset % 2 == 0


def test_parse_packet_five_tuple() -> None:
    info = parse_packet(insert_option(udp(), CLEAR))
    assert (info.flow.src_text, info.flow.src_port, info.flow.dst_text, info.flow.dst_port, info.flow.proto) == (
        SRC,
        4000,
        DST,
        5000,
        17,
    )
    icmp = parse_packet(bytes(IPv6(src=SRC, dst=DST) / ICMPv6EchoRequest()))
    assert icmp.icmp_type == 128 and (icmp.flow.src_port, icmp.flow.dst_port) == (0, 0)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"\x60" + bytes(10), "ipv6_header"),
        (b"\x40" + bytes(39), "version"),
        (bytes(IPv6(src=SRC, dst=DST) / UDP())[:-2], "payload_length"),
        (bytes(IPv6(src=SRC, dst=DST, nh=17, plen=2) / Raw(b"ab")), "ports"),
        (bytes(IPv6(src=SRC, dst=DST, nh=60, plen=8) / Raw(b"\x11\x01" + bytes(6))), "hdr_ext_len"),
        (bytes(IPv6(src=SRC, dst=DST, nh=60, plen=8) / Raw(b"\x11\x00\x1e\x09" + bytes(4))), "option_length"),
        (bytes(IPv6(src=SRC, dst=DST, nh=60, plen=8) / Raw(b"\x00\x00\x00\x00\x00\x00\x00\x00")), "next_header"),
    ],
)
def test_malformed_packets(raw: bytes, field: str) -> None:
    with pytest.raises(DecodeError) as exc:
        parse_packet(raw)
    assert exc.value.field == field
