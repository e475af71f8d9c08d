"""Bounded floods for tests and benchmarks (run inside a lab namespace; lab addresses only).

    python lab/flood.py DST --prefix 2001:db8:66:: --pps 20000 --seconds 5
    python lab/flood.py DST --udp 5001 --distinct 100000 --pps 20000 --seconds 5

Default: UDP packets to DST:9 from random sources in a /64, each with a Destination Options header
holding a 36-octet "encrypted" PDMv2 option of random bytes: the receiver's agent has to try to
open every one of them (the UDP checksum is 0, so the receiving stack drops them afterwards).
``--udp PORT``: plain UDP datagrams with valid checksums from ``--distinct`` different 5-tuples,
so a server on PORT answers each, and the receiver's agent sees that many new flows.
Raw IPv6 socket, prebuilt packets, paced in 1 ms slices; it stops by itself after ``--seconds``
(at most 60) and prints how many packets it sent.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import socket
import struct
import sys
import time

MAX_SECONDS = 60
MAX_PPS = 200_000


def forged_packet(src: bytes, dst: bytes, sport: int, rng: random.Random) -> bytes:
    """IPv6 + DOH(PDMv2 encrypted, random) + UDP(sport -> 9, 16 octets of payload)."""
    option = bytes((0x0F, 0x22, 0x20, 0x00)) + rng.randbytes(32)
    doh = bytes((17, 4)) + option + bytes((1, 0))  # 2 + 36 + PadN(0) = 40 octets
    payload = b"pdmv2-flood-test"
    udp = struct.pack(">HHHH", sport, 9, 8 + len(payload), 0) + payload  # checksum 0: dropped by UDP, fine
    body = doh + udp
    header = struct.pack(">IHBB", 6 << 28, len(body), 60, 64) + src + dst
    return header + body


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF or 0xFFFF


def plain_udp(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    """IPv6 + UDP(sport -> dport) with a valid checksum (RFC 8200 §8.1 pseudo-header)."""
    payload = b"pdmv2-flood-test"
    length = 8 + len(payload)
    pseudo = src + dst + struct.pack(">IxxxB", length, 17)
    udp = struct.pack(">HHHH", sport, dport, length, 0) + payload
    udp = udp[:6] + struct.pack(">H", _checksum(pseudo + udp)) + udp[8:]
    return struct.pack(">IHBB", 6 << 28, length, 17, 64) + src + dst + udp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="A bounded flood of forged PDMv2 packets from a /64 (lab use only).")
    ap.add_argument("dst", help="destination IPv6 address (a lab host)")
    ap.add_argument("--prefix", default="2001:db8:66::", help="source /64 (default 2001:db8:66::)")
    ap.add_argument("--pps", type=int, default=20_000, help=f"packets per second (1..{MAX_PPS})")
    ap.add_argument("--seconds", type=float, default=5.0, help=f"duration (at most {MAX_SECONDS})")
    ap.add_argument("--distinct", type=int, default=4096, help="distinct packets (5-tuples) to cycle through")
    ap.add_argument("--udp", type=int, metavar="PORT", help="plain UDP to PORT (answered), no option")
    args = ap.parse_args(argv)
    if not 1 <= args.pps <= MAX_PPS or not 0 < args.seconds <= MAX_SECONDS or not 1 <= args.distinct <= 1_000_000:
        ap.error(f"--pps must be 1..{MAX_PPS} and --seconds 0..{MAX_SECONDS}")
    dst = ipaddress.IPv6Address(args.dst)
    net = ipaddress.IPv6Network(f"{args.prefix}/64", strict=False)
    if not dst.packed.startswith(bytes.fromhex("20010db8")) or not net.subnet_of(
        ipaddress.IPv6Network("2001:db8::/32")
    ):
        ap.error("lab addresses only: 2001:db8::/32")
    if os.geteuid() != 0:
        print("flood: needs root (raw socket)", file=sys.stderr)
        return 2
    rng = random.Random(8)
    packets = []
    for _ in range(args.distinct):
        src = int(net.network_address) | rng.getrandbits(64)
        sport = rng.randrange(1024, 65536)
        if args.udp:
            packets.append(plain_udp(src.to_bytes(16, "big"), dst.packed, sport, args.udp))
        else:
            packets.append(forged_packet(src.to_bytes(16, "big"), dst.packed, sport, rng))
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    target = (str(dst), 0)
    sent = errors = 0
    start = time.monotonic()
    end = start + args.seconds
    per_ms = args.pps / 1000
    try:
        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = int((now - start) * 1000 * per_ms)
            while sent + errors < due:
                try:
                    sock.sendto(packets[(sent + errors) % len(packets)], target)
                    sent += 1
                except OSError:  # ENOBUFS under load: counted, not retried
                    errors += 1
            time.sleep(0.0005)
    finally:
        sock.close()
    print(f"sent {sent} errors {errors} seconds {time.monotonic() - start:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
