"""Destination Options header on raw IPv6 packets: build, parse, insert, remove (RFC 8200 §4.6).

The PDM option goes into the Destination Options header that precedes the upper-layer header,
placed right after the IPv6 header (after a Hop-by-Hop header if there is one).  If such a
header exists already, the option is merged into it instead of adding a second one.  The
option sits at an even offset (RFC 8250 §3.1 alignment 2n) and the header is padded with
Pad1/PadN to a multiple of 8 octets.  Upper-layer checksums do not cover extension headers:
only the Payload Length and the Next Header chain change.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from .errors import DecodeError, InsertError
from .keys import FiveTuple
from .option import OPTION_TYPE_PDM

__all__ = [
    "NextHeader",
    "OptType",
    "TlvOption",
    "PacketInfo",
    "padding",
    "build_dest_opts",
    "parse_dest_opts",
    "parse_packet",
    "insert_option",
    "reserve_option",
    "remove_option",
    "kernel_discards",
    "IPV6_HEADER_LEN",
]

IPV6_HEADER_LEN = 40
_MAX_PAYLOAD = 0xFFFF


class NextHeader(IntEnum):
    """Next Header values the chain walk knows (IANA protocol numbers)."""

    HOPOPTS = 0
    TCP = 6
    UDP = 17
    ROUTING = 43
    FRAGMENT = 44
    ESP = 50
    AH = 51
    ICMPV6 = 58
    NONE = 59
    DSTOPTS = 60


class OptType(IntEnum):
    """Option types used here (RFC 8200 §4.2, RFC 8250 §3.1)."""

    PAD1 = 0x00
    PADN = 0x01
    PDM = OPTION_TYPE_PDM


_EXT = {NextHeader.HOPOPTS, NextHeader.ROUTING, NextHeader.DSTOPTS}  # (len + 1) * 8 octets
_REFUSED = {
    NextHeader.FRAGMENT: "fragment",
    NextHeader.ROUTING: "routing header",
    NextHeader.ESP: "ipsec",
    NextHeader.AH: "ipsec",
}


@dataclass(frozen=True, slots=True)
class TlvOption:
    """One option of an options header."""

    type: int
    """Option Type octet."""
    data: bytes
    """Option Data (without Type and Length)."""
    offset: int
    """Offset of the Type octet from the start of the options header."""


@dataclass(frozen=True, slots=True)
class PacketInfo:
    """What the chain walk found in an IPv6 packet."""

    flow: FiveTuple
    """5-tuple (ports 0 for ICMPv6 and protocols without ports)."""
    upper_proto: int
    """Upper-layer protocol number."""
    upper_offset: int
    """Offset of the upper-layer header."""
    icmp_type: int | None
    """ICMPv6 type, when the upper layer is ICMPv6."""
    dest_opts_offset: int | None
    """Offset of the Destination Options header before the upper layer, if any."""
    pdm_offset: int | None
    """Offset of the PDM option (its Type octet) within the packet, if any."""
    pdm_option: bytes | None
    """The whole PDM option (Type and Length included), if any."""
    refuse: str | None
    """Why an option cannot be inserted (fragment, jumbogram, ipsec...), or None."""
    not_for_us: str | None = None
    """Why a PDM option present must not be read here (RFC 8200), or None: ``before routing
    header`` (meant for the listed intermediate destinations), ``not first fragment`` (a header
    repeated in every fragment is read once per datagram), or why the kernel will discard the
    packet (``kernel discards: ...``)."""


def padding(n: int) -> bytes:
    """``n`` octets of padding: nothing, Pad1, or one PadN (RFC 8200 §4.2)."""
    if n == 0:
        return b""
    if n == 1:
        return b"\x00"
    return bytes((OptType.PADN, n - 2)) + bytes(n - 2)


def _pad_to(pos: int, multiple: int) -> bytes:
    return padding(-pos % multiple)


def build_dest_opts(next_header: int, options: list[bytes]) -> bytes:
    """A Destination Options header holding ``options`` (whole TLVs), each at an even offset."""
    body = bytearray()
    for opt in options:
        body += _pad_to(2 + len(body), 2)
        body += opt
    body += _pad_to(2 + len(body), 8)
    return bytes((next_header, (2 + len(body)) // 8 - 1)) + body


def parse_dest_opts(data: bytes | memoryview, base: int = 0) -> tuple[int, int, list[TlvOption]]:
    """(Next Header, header length in octets, options) of the options header at ``data[0]``.

    ``base`` is added to offsets in errors; padding is not returned.
    """
    if len(data) < 2:
        raise DecodeError("dest_opts", base, "truncated header")
    length = (data[1] + 1) * 8
    if len(data) < length:
        raise DecodeError("hdr_ext_len", base + 1, f"header of {length} octets, {len(data)} present")
    options = []
    pos = 2
    while pos < length:
        otype = data[pos]
        if otype == OptType.PAD1:
            pos += 1
            continue
        if pos + 2 > length:
            raise DecodeError("option_length", base + pos + 1, "option truncated by the header end")
        end = pos + 2 + data[pos + 1]
        if end > length:
            raise DecodeError("option_length", base + pos + 1, "option runs past the header end")
        if otype != OptType.PADN:
            options.append(TlvOption(otype, bytes(data[pos + 2 : end]), pos))
        pos = end
    return data[0], length, options


_MAX_PADDING = 7  # Linux drops an options header with more than 7 consecutive padding octets
_MAX_OPTIONS = 8  # and with more options than net.ipv6.conf.*.max_dst_opts_number (default 8)


def kernel_discards(data: bytes | memoryview, length: int) -> str | None:
    """Why a receiving Linux kernel drops a packet with this (well-formed) options header, or None.

    RFC 8200 §4.2: an unknown option whose action bits are not 00 discards the packet; Linux
    also refuses padding longer than 7 octets, non-zero PadN data and more than 8 options.
    An option read from such a packet would measure a packet nobody received.
    """
    pos, padding_run, count = 2, 0, 0
    while pos < length:
        otype = data[pos]
        if otype == OptType.PAD1:
            padding_run += 1
            pos += 1
        else:
            end = pos + 2 + data[pos + 1]
            if otype == OptType.PADN:
                padding_run += end - pos
                if any(data[pos + 2 : end]):
                    return "PadN with non-zero data"
            else:
                padding_run = 0
                count += 1
                if otype != OptType.PDM and otype >> 6:
                    return f"unknown option 0x{otype:02x} whose action is to discard"
            pos = end
        if padding_run > _MAX_PADDING:
            return f"{padding_run} octets of padding in a row"
    if count > _MAX_OPTIONS:
        return f"{count} options"
    return None


def parse_packet(packet: bytes, *, wire_len: int | None = None) -> PacketInfo:
    """Walk the Next Header chain of a raw IPv6 packet; DecodeError on anything malformed.

    ``wire_len``: the packet's length on the wire when ``packet`` is a capture cut short by its
    snapshot length; Payload Length is checked against it, and the headers must still be all there.
    """
    n = len(packet)
    if n < IPV6_HEADER_LEN:
        raise DecodeError("ipv6_header", n, f"packet of {n} octets is shorter than an IPv6 header")
    if packet[0] >> 4 != 6:
        raise DecodeError("version", 0, f"IP version {packet[0] >> 4}, not 6")
    payload_len = (packet[4] << 8) | packet[5]
    total = wire_len if wire_len is not None and wire_len > n else n
    refuse: str | None = None
    if payload_len == 0 and total > IPV6_HEADER_LEN:
        refuse = "jumbogram"
    elif IPV6_HEADER_LEN + payload_len != total:
        raise DecodeError("payload_length", 4, f"says {payload_len}, {total - IPV6_HEADER_LEN} octets follow")
    nh = packet[6]
    pos = IPV6_HEADER_LEN
    dest_opts: int | None = None
    pdm_off: int | None = None
    pdm: bytes | None = None
    not_for_us: str | None = None
    first = True
    while True:
        if nh in _EXT:
            if nh == NextHeader.HOPOPTS and not first:
                raise DecodeError("next_header", pos, "Hop-by-Hop header not first")
            if nh == NextHeader.ROUTING:
                refuse = refuse or "routing header"
                if pos + 2 > n:
                    raise DecodeError("routing", pos, "truncated header")
                length = (packet[pos + 1] + 1) * 8
                if pos + length > n:
                    raise DecodeError("hdr_ext_len", pos + 1, "routing header runs past the packet")
                nh, pos = packet[pos], pos + length
                dest_opts = None
                if pdm is not None and not_for_us is None:
                    not_for_us = "before routing header"
            else:
                view = memoryview(packet)[pos:]
                next_nh, length, options = parse_dest_opts(view, pos)
                if nh == NextHeader.DSTOPTS:
                    dest_opts = pos
                discard = kernel_discards(view, length)
                if discard is not None:
                    not_for_us = f"kernel discards: {discard}"
                for o in options:
                    if o.type == OptType.PDM and pdm is None:
                        pdm_off = pos + o.offset
                        pdm = bytes(packet[pdm_off : pdm_off + 2 + len(o.data)])
                nh, pos = next_nh, pos + length
            first = False
            continue
        if nh == NextHeader.FRAGMENT:
            refuse = refuse or "fragment"
            if pos + 8 > n:
                raise DecodeError("fragment", pos, "truncated header")
            if (packet[pos + 2] << 8 | packet[pos + 3]) >> 3 == 0:
                # The first fragment: the upper-layer header (and its ports) follows.
                nh, pos = packet[pos], pos + 8
                upper = True
                break
            if pdm is not None and not_for_us is None:
                not_for_us = "not first fragment"
            upper = False
            break
        if nh in (NextHeader.ESP, NextHeader.AH):
            refuse = refuse or _REFUSED[NextHeader(nh)]
            upper = False
            break
        upper = True
        break
    sport = dport = 0
    icmp_type: int | None = None
    if nh in (NextHeader.TCP, NextHeader.UDP) and upper and refuse in (None, "fragment"):
        if pos + 4 > n:
            raise DecodeError("ports", pos, "upper-layer header truncated before its ports")
        sport, dport = struct.unpack_from(">HH", packet, pos)
    elif nh == NextHeader.ICMPV6 and upper and refuse in (None, "fragment"):
        if pos + 1 > n:
            raise DecodeError("icmpv6_type", pos, "ICMPv6 header truncated")
        icmp_type = packet[pos]
    flow = FiveTuple(bytes(packet[8:24]), sport, bytes(packet[24:40]), dport, nh)
    return PacketInfo(
        flow=flow,
        upper_proto=nh,
        upper_offset=pos,
        icmp_type=icmp_type,
        dest_opts_offset=dest_opts,
        pdm_offset=pdm_off,
        pdm_option=pdm,
        refuse=refuse,
        not_for_us=not_for_us,
    )


def reserve_option(
    packet: bytes, size: int, *, mtu: int | None = None, info: PacketInfo | None = None
) -> tuple[bytearray, int]:
    """The packet grown by an option of ``size`` octets (Type/Length set, data zero) and its offset.

    The caller writes the option in place once it knows it fits; InsertError says why it does not.
    """
    if info is None:
        info = parse_packet(packet)
    if info.refuse is not None:
        raise InsertError(info.refuse)
    if info.pdm_offset is not None:
        raise InsertError("already has PDM")
    placeholder = bytes((OptType.PDM, size - 2)) + bytes(size - 2)
    nh_off, pos = 6, IPV6_HEADER_LEN
    if packet[6] == NextHeader.HOPOPTS:
        nh_off, pos = pos, pos + (packet[pos + 1] + 1) * 8
    if packet[nh_off] == NextHeader.DSTOPTS and info.dest_opts_offset == pos:
        # Merge: keep the existing options where they are (their alignment holds), drop trailing padding.
        _, length, options = parse_dest_opts(memoryview(packet)[pos:], pos)
        end = max((o.offset + 2 + len(o.data) for o in options), default=2)
        body = bytearray(packet[pos + 2 : pos + end])
        body += _pad_to(end, 2)
        offset = pos + 2 + len(body)
        body += placeholder
        body += _pad_to(2 + len(body), 8)
        header = bytes((packet[pos], (2 + len(body)) // 8 - 1)) + body
        new = bytearray(packet[:pos]) + header + packet[pos + length :]
        added = len(header) - length
    else:
        header = build_dest_opts(packet[nh_off], [placeholder])
        offset = pos + 2  # the first option of a new header: offset 2, already even
        new = bytearray(packet[:nh_off]) + bytes((NextHeader.DSTOPTS,)) + packet[nh_off + 1 : pos] + header
        new += packet[pos:]
        added = len(header)
    payload = len(packet) - IPV6_HEADER_LEN + added
    if payload > _MAX_PAYLOAD:
        raise InsertError("no room", f"payload would be {payload} octets")
    if mtu is not None and len(new) > mtu:
        raise InsertError("no room", f"{len(new)} octets would exceed the MTU of {mtu}")
    new[4:6] = struct.pack(">H", payload)
    return new, offset


def insert_option(packet: bytes, option: bytes, *, mtu: int | None = None, info: PacketInfo | None = None) -> bytes:
    """The packet with ``option`` in its Destination Options header; InsertError says why not."""
    new, offset = reserve_option(packet, len(option), mtu=mtu, info=info)
    new[offset : offset + len(option)] = option
    return bytes(new)


def remove_option(packet: bytes, info: PacketInfo | None = None) -> tuple[bytes, bytes | None]:
    """(packet without its PDM option, the option); a header left with padding only is removed."""
    if info is None:
        info = parse_packet(packet)
    if info.pdm_offset is None or info.pdm_option is None:
        return bytes(packet), None
    # Find the options header holding the option, and the Next Header octet that points at it.
    nh_off, pos = 6, IPV6_HEADER_LEN
    while True:  # parse_packet walked this chain already: only HBH, Routing and DOH come before
        length = (packet[pos + 1] + 1) * 8
        if pos <= info.pdm_offset < pos + length:
            break
        nh_off, pos = pos, pos + length
    start = info.pdm_offset
    end = start + len(info.pdm_option)
    _, _, options = parse_dest_opts(memoryview(packet)[pos:], pos)
    if len(options) == 1:  # only PDM: drop the whole header
        new = packet[:nh_off] + bytes((packet[pos],)) + packet[nh_off + 1 : pos] + packet[pos + length :]
    else:  # keep the others where they are: the option becomes padding
        new = packet[:start] + padding(end - start) + packet[end:]
    payload = len(new) - IPV6_HEADER_LEN
    return new[:4] + struct.pack(">H", payload) + new[6:], info.pdm_option
