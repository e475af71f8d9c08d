"""The agent's per-packet decisions, without NFQUEUE: bytes in, verdict out."""

from __future__ import annotations

import ipaddress
import random

from scapy.layers.inet import UDP
from scapy.layers.inet6 import ICMPv6ND_NS, IPv6, IPv6ExtHdrFragment
from scapy.packet import Raw

from pdmv2 import DEFAULT_SUITE, client_secret, decode_option, parse_packet
from pdmv2.core.flow import PdmEngine
from pdmv2.core.keyring import ClientKeyring, ServerKeyring
from pdmv2.core.packetproc import Outcome, PacketProcessor
from pdmv2.core.policy import parse_policy

C, S = "2001:db8:1::10", "2001:db8:2::20"
SHARED, SALT = bytes(range(32)), bytes(32)
POLICY = "rules:\n  - prefix: 2001:db8:2::/64\n    mode: pdmv2-encrypted\n"


def procs(policy: str = POLICY) -> tuple[PacketProcessor, PacketProcessor]:
    cs = client_secret(DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_addr=C)
    sc = PdmEngine(keys=ClientKeyring(DEFAULT_SUITE, ipaddress.IPv6Address(C).packed, cs), rng=random.Random(1))
    ss = PdmEngine(
        keys=ServerKeyring(
            DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_prefixes=(ipaddress.IPv6Network("2001:db8:1::/64"),)
        )
    )
    return PacketProcessor(sc, parse_policy(policy)), PacketProcessor(ss, parse_policy(policy))


def udp(dst: str = S, size: int = 20) -> bytes:
    return bytes(IPv6(src=C, dst=dst) / UDP(sport=1000, dport=2000) / Raw(b"x" * size))


def test_egress_inserts_and_ingress_reads() -> None:
    a, b = procs()
    v = a.egress(udp(), 1)
    assert v.outcome is Outcome.INSERTED and v.packet is not None and v.sent is not None
    opt = parse_packet(v.packet).pdm_option
    assert opt is not None and opt == v.sent.option and len(decode_option(opt).sealed) == 30  # type: ignore[union-attr]
    r = b.ingress(v.packet, 2)
    assert r.outcome is Outcome.READ and r.received is not None and r.received.psntp == v.sent.psntp
    assert a.counters == {"egress_inserted": 1} and b.counters == {"ingress_read": 1}


def test_egress_leaves_alone_what_it_should() -> None:
    a, _ = procs()
    assert a.egress(udp(dst="2001:db8:9::1"), 1).outcome is Outcome.OFF
    ns = bytes(IPv6(src=C, dst="ff02::1:ff00:20") / ICMPv6ND_NS(tgt=S))
    assert a.egress(ns, 1).outcome is Outcome.NOT_MEASURED
    frag = bytes(IPv6(src=C, dst=S) / IPv6ExtHdrFragment(m=1, id=3) / UDP(sport=1, dport=2))
    v = a.egress(frag, 1)
    assert v.outcome is Outcome.REFUSED and v.packet is None and "fragment" in v.detail
    assert a.egress(b"\x60garbage", 1).outcome is Outcome.MALFORMED
    assert a.engine.flows == {}  # none of these touched flow state


def test_too_big_goes_out_bare_without_consuming_a_sequence_number() -> None:
    a, _ = procs()
    first = a.egress(udp(), 1).sent
    big = a.egress(udp(size=1500 - 48 - 30), 2)  # 1470 octets: 36 more do not fit in 1500
    assert big.outcome is Outcome.TOO_BIG and big.packet is None
    exact = a.egress(udp(size=1500 - 48 - 40), 3)  # 1460 + 40 (header with option, padded) = 1500
    assert exact.outcome is Outcome.INSERTED and exact.packet is not None and len(exact.packet) == 1500
    assert first is not None and exact.sent is not None and exact.sent.psntp == first.psntp + 1


def test_forged_option_counted_and_dropped_only_when_policy_says() -> None:
    a, b = procs()
    v = a.egress(udp(), 1)
    assert v.packet is not None
    bad = bytearray(v.packet)
    bad[-40] ^= 1  # inside the ciphertext
    r = b.ingress(bytes(bad), 2)
    assert r.outcome is Outcome.AUTH_FAILED and not r.drop
    assert b.ingress(v.packet, 3).outcome is Outcome.READ
    assert b.ingress(v.packet, 4).outcome is Outcome.REPLAY
    _, strict = procs(POLICY + "on_auth_failure: drop\n")
    assert strict.ingress(bytes(bad), 2).drop


def test_every_packet_sent_moves_the_global_pointer_of_its_source_type() -> None:
    """Draft §6.2: the Global Pointer counts all IPv6 packets sent from a source-address type."""
    a, _ = procs()
    bare = [
        udp(dst="2001:db8:9::1"),  # policy off
        bytes(IPv6(src=C, dst="ff02::1:ff00:20") / ICMPv6ND_NS(tgt=S)),  # not measured
        bytes(IPv6(src=C, dst=S) / IPv6ExtHdrFragment(m=1, id=3) / UDP(sport=1, dport=2)),  # refused
        udp(size=1500),  # too big for the option
    ]
    for p in bare:
        assert a.egress(p, 1).sent is None
    link_local = bytes(IPv6(src="fe80::1", dst="ff02::2") / ICMPv6ND_NS(tgt="fe80::2"))
    assert a.egress(link_local, 1).outcome is Outcome.NOT_MEASURED
    assert a.egress(b"\x60garbage", 1).outcome is Outcome.MALFORMED  # not a whole IPv6 header: not counted
    v = a.egress(udp(), 2)
    assert v.sent is not None and v.sent.global_pointer == len(bare) + 1
    assert (a.engine.global_pointer(0), a.engine.global_pointer(1)) == (1, len(bare) + 1)  # type: ignore[arg-type]
