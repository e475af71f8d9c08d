"""``python -m pdmv2.demo``: the protocol walked through on this machine, step by step.

It runs a real registration over TCP on [::1] (a Primary Server in this process), derives the
secondaries' key files, then lets a secondary client and a secondary server exchange real IPv6
packets (built as bytes, as the kernel would send them) carrying PDMv2, on a simulated clock so
the numbers are exact.  The Mininet lab (`make lab-up`) runs the same on real kernel traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import sys
import tempfile
from pathlib import Path

from .core.doh import insert_option, parse_packet
from .core.errors import AuthenticationError
from .core.flow import AddrType, Mode, PdmEngine
from .core.keyring import dump_client_key_file, dump_server_key_file, parse_key_file
from .core.keys import FiveTuple, KemId, client_secret
from .core.metrics import MetricsTracker, PacketRecord
from .core.option import decode_option
from .core.registration import AllowEntry, AllowList, ClientHandshake, Identity
from .regnet import PrimaryServer, ServerConfig, register

SC, SS = "2001:db8:1::10", "2001:db8:2::20"
MS = 1_000_000


def step(n: int, title: str, why: str) -> None:
    print(f"\n[{n}] {title}\n    {why}")


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv6/UDP packet as bytes (checksum left 0: nothing here delivers it)."""
    length = 8 + len(payload)
    udp = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + length.to_bytes(2, "big") + b"\0\0" + payload
    hdr = bytes([0x60, 0, 0, 0]) + length.to_bytes(2, "big") + bytes([17, 64])
    return hdr + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + udp


async def registration(tmp: Path) -> tuple[str, str]:
    kem = KemId.DHKEM_X25519_HKDF_SHA256
    ps, pc = Identity.generate(kem, ikm=os.urandom(64)), Identity.generate(kem, ikm=os.urandom(64))
    print(f"    PS key {ps.fingerprint}\n    PC key {pc.fingerprint}")
    prefixes = (ipaddress.IPv6Network("2001:db8:1::/64"),)
    server = PrimaryServer(ServerConfig({kem: ps}, AllowList((AllowEntry("pc1", pc.fingerprint),)), tmp / "ps"))
    _, port = await server.start("::1", 0)
    task = asyncio.create_task(server.serve_forever())
    try:
        hs = ClientHandshake(identities={kem: pc}, pin=ps.fingerprint, prefixes=prefixes, random_bytes=os.urandom)
        reg = await register("::1", port, hs, progress=lambda m: print(f"    {m}"))
    finally:
        task.cancel()
        await server.close()
    print(f"    registration {reg.registration_id}: {reg.suite}; SharedSecret never printed")
    cs = client_secret(reg.suite, shared_secret=reg.shared_secret, salt=reg.salt, client_addr=SC)
    sc_file = dump_client_key_file(
        reg.suite,
        client_addr=SC,
        client_secret=cs,
        server_prefixes=[],
        registration_id=reg.registration_id,
        expires=reg.expires,
    )
    ss_file = dump_server_key_file(
        reg.suite,
        shared_secret=reg.shared_secret,
        salt=reg.salt,
        client_prefixes=[str(p) for p in prefixes],
        registration_id=reg.registration_id,
        expires=reg.expires,
    )
    return sc_file, ss_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pdmv2.demo", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    parser.add_argument("--packets", type=int, default=4, help="request/response pairs to exchange (default 4)")
    args = parser.parse_args(argv)
    print("PDMv2 walkthrough (draft-ietf-ippm-encrypted-pdmv2-03)")
    with tempfile.TemporaryDirectory() as tmp:
        step(
            1,
            "Registration: Primary Client <-> Primary Server over TCP on [::1]",
            "HPKE Auth mode: the PC pins the PS key, the PS allows the PC key; both export one SharedSecret.",
        )
        sc_text, ss_text = asyncio.run(registration(Path(tmp)))

    step(
        2,
        "Key files for the secondaries",
        "The PC gives SC its client_secret(SC address); the PS gives SS SharedSecret + salt + client prefixes.",
    )
    sc_keys, ss_keys = parse_key_file(sc_text, "sc key file"), parse_key_file(ss_text, "ss key file")
    print(f"    SC holds {sc_keys!r}\n    SS holds {ss_keys!r}")
    sc, ss = PdmEngine(keys=sc_keys), PdmEngine(keys=ss_keys)
    flow = FiveTuple.from_text(SC, 40000, SS, 5001, 17)

    step(
        3,
        f"SC -> SS: {args.packets} UDP requests, SS answers each after 5 ms (simulated clock, 1 ms each way)",
        "Each packet carries a 36-octet encrypted PDMv2 option in a Destination Options header.",
    )
    tracker = MetricsTracker()
    t = 0
    last_wire = b""
    for i in range(args.packets):
        sent = sc.outgoing(flow, Mode.PDMV2_ENCRYPTED, t)
        wire = insert_option(udp_packet(SC, SS, 40000, 5001, b"request %d" % i), sent.option)
        last_wire = wire
        info = parse_packet(wire)
        got = ss.incoming(info.flow, info.pdm_option or b"", t + 1 * MS)
        tracker.feed(PacketRecord.of(got))
        reply = ss.outgoing(flow.reversed(), Mode.PDMV2_ENCRYPTED, t + 6 * MS)
        wire2 = insert_option(udp_packet(SS, SC, 5001, 40000, b"reply %d" % i), reply.option)
        info2 = parse_packet(wire2)
        back = sc.incoming(info2.flow, info2.pdm_option or b"", t + 7 * MS)
        found = tracker.feed(PacketRecord.of(back))
        print(
            f"    #{i}: SC PSNTP {sent.psntp} GP {sent.global_pointer} -> SS read PSNTP {got.psntp}; "
            f"SS PSNTP {reply.psntp} PSNLR {reply.psnlr}; "
            + ", ".join(f"{m.metric.value} {m.value_ns / 1e6:.3f} ms" for m in found)
        )
        t += 10 * MS

    step(
        4,
        "What an observer on the path sees",
        "Type, Length, version and Random Number/F in clear; the 30 octets of metrics are ciphertext.",
    )
    print(f"    option on the wire: {parse_packet(last_wire).pdm_option.hex()}")  # type: ignore[union-attr]
    print(f"    decoded without keys: {decode_option(parse_packet(last_wire).pdm_option or b'')}")

    step(
        5,
        "A forged option: one octet changed by the observer",
        "The AEAD tag fails; the SS drops the option (draft §7), counts it, and still delivers the packet.",
    )
    bad = bytearray(sc.outgoing(flow, Mode.PDMV2_ENCRYPTED, t).option)
    bad[10] ^= 0xFF
    try:
        ss.incoming(flow, bytes(bad), t + MS)
        print("    accepted (this must not happen)")
        return 1
    except AuthenticationError as exc:
        print(f"    SS: {type(exc).__name__}: {exc}")

    step(
        6,
        "Link-local traffic may use clear PDMv2 (draft §5), with its own Global Pointer",
        "Global Pointers are per source-address type; the link-local one starts at 1.",
    )
    ll = FiveTuple.from_text("fe80::10", 0, "fe80::20", 0, 58)
    s1 = sc.outgoing(ll, Mode.PDMV2_CLEAR, t)
    gp_global = sc.global_pointer(AddrType.GLOBAL)
    print(f"    link-local GP {s1.global_pointer}, global GP so far {gp_global}: {decode_option(s1.option)}")
    print("\ndone.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
