"""Differential tests: the native path and the Python engine, same packets, seeds and clocks.

Every step asserts the same outcome, byte-identical packets (so byte-identical options) and the
same random draws; after each scenario (and often in between) the flow tables, per-flow state,
replay bitmaps, floors and Global Pointers must be identical.
"""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    PadN,
)
from scapy.packet import Raw

from pdmv2.native import AVAILABLE, UNAVAILABLE_REASON

pytestmark = pytest.mark.skipif(not AVAILABLE, reason=UNAVAILABLE_REASON)

from tests.differential.harness import MS, SEC, C, S, Side, client_keys, server_keys  # noqa: E402

POLICY = """rules:
  - prefix: 2001:db8:2::/64
    mode: pdmv2-encrypted
  - prefix: 2001:db8:1::/64
    mode: pdmv2-encrypted
  - prefix: 2001:db8:3::/64
    mode: pdmv2-clear
  - prefix: 2001:db8:4::/64
    mode: pdm
rotate_after: {rotate}
grace_ms: 500
"""
EPOCH = 2 * SEC
T0 = 1_000 * SEC


def pair(rotate: int = 32767, seed: int = 1, **kw: int) -> tuple[Side, Side]:
    a = Side(client_keys(), POLICY.format(rotate=rotate), seed=seed, epoch_ns=EPOCH, **kw)
    b = Side(server_keys(), POLICY.format(rotate=rotate), seed=seed + 100, epoch_ns=EPOCH, **kw)
    return a, b


def udp(src: str = C, dst: str = S, sport: int = 4000, dport: int = 53, size: int = 20) -> bytes:
    return bytes(IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(b"q" * size))


def exchange(a: Side, b: Side, now: int, *, src: str = C, dst: str = S, sport: int = 4000) -> int:
    """a -> b then b -> a; returns the time after it."""
    _, pkt, _ = a.egress(udp(src, dst, sport), now)
    if pkt is not None:
        b.ingress(pkt, now + 50_000)
    _, pkt, _ = b.egress(udp(dst, src, 53, sport), now + 5 * MS)
    if pkt is not None:
        a.ingress(pkt, now + 5 * MS + 50_000)
    return now + 10 * MS


def test_established_flow_is_byte_identical_in_both_directions() -> None:
    a, b = pair()
    t = T0
    for _ in range(50):
        t = exchange(a, b, t)
    a.check_state()
    b.check_state()
    assert a.engine.flows and b.engine.flows


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rotation_epochs_reordering_loss_replay_and_tampering(seed: int) -> None:
    rnd = random.Random(seed)
    a, b = pair(rotate=3, seed=seed)
    t = T0 + rnd.randrange(EPOCH)
    sent: list[bytes] = []
    for step in range(400):
        t += rnd.choice((10_000, 300_000, 2 * MS, 40 * MS, 700 * MS))
        sport = rnd.choice((4000, 4001, 4002))
        kind = rnd.random()
        if kind < 0.45:
            _, pkt, _ = a.egress(udp(sport=sport, size=rnd.randrange(0, 200)), t)
            if pkt is not None:
                sent.append(pkt)
                if rnd.random() < 0.8:  # the rest is lost (or delivered later, below)
                    b.ingress(pkt, t + 30_000)
        elif kind < 0.85:
            _, pkt, _ = b.egress(udp(S, C, 53, sport, size=rnd.randrange(0, 200)), t)
            if pkt is not None and rnd.random() < 0.9:
                a.ingress(pkt, t + 30_000)
        elif kind < 0.93 and sent:
            b.ingress(rnd.choice(sent[-12:]), t)  # late delivery or replay
        elif sent:
            bad = bytearray(rnd.choice(sent[-5:]))
            bad[rnd.randrange(48, 48 + 36)] ^= 1 << rnd.randrange(8)  # tamper inside the option
            b.ingress(bytes(bad), t)
        if step % 50 == 0:
            a.check_state()
            b.check_state()
    a.check_state()
    b.check_state()


def test_receiver_restart_floors_and_resync() -> None:
    a, b = pair(rotate=5)
    t = T0
    for _ in range(30):
        t = exchange(a, b, t)
    old = [a.egress(udp(), t + i)[1] for i in range(3)]
    # b restarts: all state lost, floors from the restart rule, the sender goes on.
    b2 = Side(server_keys(), POLICY.format(rotate=5), seed=77, epoch_ns=EPOCH)
    b2.engine.restarted(t, None)
    b2.sync_floors()
    for pkt in old:
        assert pkt is not None
        assert b2.ingress(pkt, t + 10)[0] in ("stale_key", "auth_failed")  # replayed after the restart
    for _ in range(3 * 4):  # the sender moves to new epochs; the receiver finds it
        t = exchange(a, b2, t + EPOCH // 3)
    b2.check_state()
    a.check_state()
    assert any(st.other_kri is not None for st in b2.engine.flows.values())


def test_sender_restart_waits_for_the_next_epoch_without_a_reservation() -> None:
    a, b = pair()
    a.engine.restarted(T0, None)
    a.sync_floors()
    assert a.egress(udp(), T0 + 1)[0] == "key_wait"
    t = exchange(a, b, T0 + EPOCH)
    t = exchange(a, b, t)
    a.check_state()
    b.check_state()


def test_eviction_and_idle_expiry_raise_the_floors_identically() -> None:
    a, b = pair(max_flows=4)
    t = T0
    for port in range(20):
        t = exchange(a, b, t, sport=5000 + port)
    a.check_state()
    b.check_state()
    t = exchange(a, b, t, sport=5000)  # evicted earlier: comes back above the floor
    a.expire(t + 301 * SEC)
    b.expire(t + 301 * SEC)
    a.check_state()
    b.check_state()
    t = exchange(a, b, t + 302 * SEC, sport=5000)
    a.check_state()
    b.check_state()


def test_clear_pdm_icmp_tcp_and_header_merging() -> None:
    a, b = pair()
    t = T0
    pkts = [
        bytes(IPv6(src=C, dst="2001:db8:3::1") / UDP(sport=1, dport=2)),
        bytes(IPv6(src=C, dst="2001:db8:4::1") / UDP(sport=1, dport=2) / Raw(b"x")),
        bytes(IPv6(src=C, dst=S) / ICMPv6EchoRequest(id=7, seq=1)),
        bytes(IPv6(src=C, dst=S) / ICMPv6EchoReply(id=7, seq=1)),
        bytes(IPv6(src=C, dst=S) / TCP(sport=3000, dport=80, flags="S")),
        bytes(IPv6(src=C, dst=S) / IPv6ExtHdrHopByHop() / UDP(sport=9, dport=9)),
        bytes(IPv6(src=C, dst=S) / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00\x00")]) / UDP(sport=9, dport=10)),
        bytes(IPv6(src=C, dst=S) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP(sport=9, dport=11)),
        bytes(IPv6(src=C, dst=S) / IPv6ExtHdrFragment(m=1, id=3) / UDP(sport=1, dport=2)),
        bytes(IPv6(src=C, dst="2001:db8:9::1") / UDP(sport=1, dport=2)),
        udp(size=1500 - 48 - 30),  # too big for the option
        udp(size=1500 - 48 - 40),  # exactly fits
        # never measured, but sent: both move the Global Pointer of their source type
        bytes(IPv6(src="fe80::1", dst="ff02::1:ff00:2") / ICMPv6ND_NS(tgt="fe80::2")),
        bytes(IPv6(src=C, dst="ff02::16") / ICMPv6ND_NS(tgt=S)),
    ]
    for p in pkts:
        t += MS
        _, new, _ = a.egress(p, t)
        if new is not None:
            b.ingress(new, t + 10)
            t += MS
            # answers in the same formats
            back = bytes(IPv6(new)[IPv6].__class__(new))  # parse and rebuild: same bytes
            assert back == new
    a.check_state()
    b.check_state()


def test_malformed_input_is_handled_identically() -> None:
    a, b = pair()
    t = exchange(a, b, T0)
    _, good, _ = a.egress(udp(), t)
    assert good is not None
    rnd = random.Random(5)
    cases = [b"", b"\x60", b"\x40" + bytes(60), good[:39], good[:-1], good + b"\x00"]
    for _ in range(300):
        bad = bytearray(good)
        for _ in range(rnd.randrange(1, 4)):
            i = rnd.randrange(len(bad) if rnd.random() < 0.3 else min(len(bad), 90))
            bad[i] = rnd.randrange(256)
        cases.append(bytes(bad))
    for i, p in enumerate(cases):
        b.ingress(p, t + 1000 + i)
        a.egress(p, t + 1000 + i)
    a.check_state()
    b.check_state()


def test_rfc8200_placement_and_downgrade_are_handled_identically() -> None:
    from scapy.layers.inet6 import HBHOptUnknown, IPv6ExtHdrRouting, Pad1

    a, b = pair()
    t = exchange(a, b, T0)
    _, good, _ = a.egress(udp(), t)
    assert good is not None
    g = IPv6(good)
    pdm_hdr = g[IPv6ExtHdrDestOpt]
    opts = list(pdm_hdr.options)
    payload = g[UDP]
    base = IPv6(src=C, dst=S)
    clear = bytes(IPv6(src=C, dst="2001:db8:3::1") / UDP(sport=1, dport=2))
    _, clear_pkt, _ = a.egress(clear, t + 1)
    assert clear_pkt is not None
    clear_opt = IPv6(clear_pkt)[IPv6ExtHdrDestOpt].options
    cases = [
        base / IPv6ExtHdrDestOpt(options=opts) / IPv6ExtHdrRouting(addresses=[S]) / payload,  # before routing
        base / IPv6ExtHdrDestOpt(options=opts) / IPv6ExtHdrFragment(offset=5, m=1, id=9) / Raw(b"x" * 8),
        base / IPv6ExtHdrDestOpt(options=opts) / IPv6ExtHdrFragment(offset=0, m=1, id=9) / payload,
        base / IPv6ExtHdrDestOpt(options=[*opts, PadN(optdata=b"\x01\x00")]) / payload,  # non-zero PadN
        base / IPv6ExtHdrDestOpt(options=[*opts, PadN(optdata=b"\x00" * 8)]) / payload,  # long padding
        base / IPv6ExtHdrDestOpt(options=[*opts, HBHOptUnknown(otype=0x87, optdata=b"ab")]) / payload,
        base / IPv6ExtHdrDestOpt(options=[*opts, HBHOptUnknown(otype=0x07, optdata=b"ab")]) / payload,
        base / IPv6ExtHdrHopByHop(options=[Pad1()] * 2 + opts) / payload,  # PDM in the Hop-by-Hop header
        base / IPv6ExtHdrDestOpt(options=clear_opt) / payload,  # downgrade: clear where encryption is expected
    ]
    for ln in (0, 5, 10, 0x12, 0x22, 0x30):  # PDM options of every length, garbage inside
        o = HBHOptUnknown(otype=0x0F, optlen=ln, optdata=bytes([0x20, 0]) + bytes(max(0, ln - 2)))
        cases.append(base / IPv6ExtHdrDestOpt(options=[o]) / UDP(sport=1, dport=9))
    outcomes = []
    for i, p in enumerate(cases):
        outcomes.append(b.ingress(bytes(p), t + 10 + i)[0])
    # read: the first fragment, and an unknown option whose action is "skip" (then a replay)
    assert outcomes[:9] == [*["not_for_us"] * 2, "read", *["not_for_us"] * 3, "replay", "not_for_us", "downgrade"]
    assert outcomes[9:] == ["bad_option", "bad_option", "downgrade", "downgrade", "auth_failed", "bad_option"]
    a.check_state()
    b.check_state()
