"""Issue 8 items 4, 5, 6 and 8 at the packet processor: downgrade, RFC 8200 placement, bounds, budgets."""

from __future__ import annotations

import ipaddress
import random

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrRouting
from scapy.packet import Raw

from pdmv2 import DEFAULT_SUITE, PdmEngine, client_secret, parse_packet
from pdmv2.core.doh import insert_option, kernel_discards
from pdmv2.core.keyring import ClientKeyring, ServerKeyring
from pdmv2.core.option import PdmOption, Pdmv2ClearOption, Pdmv2Fields, encode_option
from pdmv2.core.packetproc import Outcome, PacketProcessor
from pdmv2.core.policy import parse_policy

C, S = "2001:db8:1::10", "2001:db8:2::20"
SHARED, SALT = bytes(range(32)), bytes(32)
POLICY = "rules:\n  - prefix: 2001:db8::/32\n    mode: pdmv2-encrypted\n"
MS = 1_000_000


def procs(policy: str = POLICY) -> tuple[PacketProcessor, PacketProcessor]:
    cs = client_secret(DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_addr=C)
    sc = PdmEngine(keys=ClientKeyring(DEFAULT_SUITE, ipaddress.IPv6Address(C).packed, cs), rng=random.Random(1))
    ss = PdmEngine(
        keys=ServerKeyring(
            DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_prefixes=(ipaddress.IPv6Network("2001:db8::/32"),)
        ),
        rng=random.Random(2),
    )
    return PacketProcessor(sc, parse_policy(policy)), PacketProcessor(ss, parse_policy(policy))


def udp(src: str = C, dst: str = S, sport: int = 1000) -> bytes:
    return bytes(IPv6(src=src, dst=dst) / UDP(sport=sport, dport=2000) / Raw(b"x" * 20))


def clear_v2() -> bytes:
    fields = Pdmv2Fields(scale_dtlr=0, scale_dtls=0, global_pointer=1, psntp=7, psnlr=0, delta_tlr=0, delta_tls=0)
    return encode_option(Pdmv2ClearOption(random_number=5, f=0, fields=fields))


def v1() -> bytes:
    return encode_option(PdmOption(44, 0, 9, 0, 0xFFFF, 0))


# -- item 4: downgrade -----------------------------------------------------------------------


@pytest.mark.parametrize("option", [clear_v2(), v1()], ids=["pdmv2-clear", "rfc8250"])
def test_clear_or_v1_where_encryption_is_expected_never_touches_state(option: bytes) -> None:
    a, b = procs()
    first = a.egress(udp(), 1)  # the genuine flow is established at b
    assert first.packet is not None and b.ingress(first.packet, 2).outcome is Outcome.READ
    state = b.engine.flows[first.sent.flow.reversed()]  # type: ignore[union-attr]
    before = (state.psnlr, state.last_recv_ns, state.received, len(b.metrics))
    spoofed = insert_option(udp(), option)
    v = b.ingress(spoofed, 3)
    assert v.outcome is Outcome.DOWNGRADE and not v.drop and v.received is None
    assert (state.psnlr, state.last_recv_ns, state.received, len(b.metrics)) == before
    assert b.counters["ingress_downgrade"] == 1
    _, strict = procs(POLICY + "on_auth_failure: drop\n")
    assert strict.ingress(spoofed, 3).drop
    # Where policy says clear (link-local, or another prefix), clear options are read as before.
    _, lax = procs("rules:\n  - prefix: 2001:db8::/32\n    mode: pdmv2-clear\n")
    assert lax.ingress(spoofed, 3).outcome is Outcome.READ


# -- item 5: where RFC 8200 gives the option to this node ---------------------------------------


def sealed_packet() -> bytes:
    a, _ = procs()
    v = a.egress(udp(), 1)
    assert v.packet is not None
    return v.packet


def option_of(pkt: bytes) -> bytes:
    opt = parse_packet(pkt).pdm_option
    assert opt is not None
    return opt


def test_a_header_before_a_routing_header_is_not_read() -> None:
    opt = option_of(sealed_packet())
    # A Destination Options header holding the option, then a Routing header: that header is
    # for every destination the Routing header lists, not only for the final one.
    doh = bytes((43, 0)) + b"\x01\x00" + opt  # PadN(0) puts the option at offset 4 (2n)
    pad = -len(doh) % 8
    doh += bytes((1, pad - 2)) + bytes(pad - 2) if pad >= 2 else bytes(pad)
    doh = doh[:1] + bytes((len(doh) // 8 - 1,)) + doh[2:]
    assert len(doh) % 8 == 0
    rh = bytes(IPv6ExtHdrRouting(nh=17, addresses=["2001:db8:2::21"], segleft=1))
    base = bytearray(udp())
    raw = base[:6] + b"\x3c" + base[7:40] + doh + rh + base[40:]
    raw[4:6] = (len(raw) - 40).to_bytes(2, "big")
    info = parse_packet(bytes(raw))
    assert info.pdm_option == opt and info.not_for_us == "before routing header"
    _, b = procs()
    assert b.ingress(bytes(raw), 2).outcome is Outcome.NOT_FOR_US
    assert not b.engine.flows


def test_a_header_before_a_fragment_header_is_read_once_per_datagram() -> None:
    pkt = sealed_packet()
    info = parse_packet(pkt)
    assert info.dest_opts_offset is not None
    doh_end = info.upper_offset
    upper = pkt[doh_end:]
    reads = 0
    _, b = procs()
    # 20 datagrams of 2 fragments each: the DOH (in the unfragmentable part) is in both fragments.
    for ident in range(20):
        v = None
        for offset, more, chunk in ((0, 1, upper[:16]), (2, 0, upper[16:])):
            frag = bytes(IPv6ExtHdrFragment(nh=17, offset=offset, m=more, id=ident))
            raw = bytearray(pkt[:doh_end]) + frag + chunk
            raw[info.dest_opts_offset] = 44  # the DOH's Next Header now points at the Fragment header
            raw[4:6] = (len(raw) - 40).to_bytes(2, "big")
            v = b.ingress(bytes(raw), 10 + ident)
            reads += v.outcome in (Outcome.READ, Outcome.REPLAY, Outcome.AUTH_FAILED)
            if offset:
                assert v.outcome is Outcome.NOT_FOR_US
    assert reads == 20  # first fragments only (the same option each time: 1 read, then replays)
    assert b.counters["ingress_read"] == 1 and b.counters["ingress_replay"] == 19


@pytest.mark.parametrize(
    ("options", "why"),
    [
        (b"\x01\x06" + bytes(6), "8 octets of padding"),  # PadN longer than 7 octets
        (b"\x01\x02\x00\x07" + bytes(4), "non-zero"),
        (b"\x4a\x02ab" + bytes(4), "unknown option 0x4a"),  # action 01: discard
        (b"\xca\x02ab" + bytes(4), "unknown option 0xca"),  # action 11: discard and ICMP
    ],
)
def test_options_in_packets_the_kernel_discards_are_not_read(options: bytes, why: str) -> None:
    opt = option_of(sealed_packet())
    doh = bytes((17, 0)) + options + opt  # options are 8 octets: the PDM option stays 2n-aligned
    pad = -len(doh) % 8
    doh += bytes((1, pad - 2)) + bytes(pad - 2) if pad >= 2 else bytes(pad)
    doh = doh[:1] + bytes((len(doh) // 8 - 1,)) + doh[2:]
    base = bytearray(udp())
    raw = base[:6] + b"\x3c" + base[7:40] + doh + base[40:]
    raw[4:6] = (len(raw) - 40).to_bytes(2, "big")
    info = parse_packet(bytes(raw))
    assert info.pdm_option == opt
    assert info.not_for_us is not None and why in info.not_for_us
    _, b = procs()
    assert b.ingress(bytes(raw), 2).outcome is Outcome.NOT_FOR_US


def test_the_kernel_rules_accept_ordinary_headers() -> None:
    ok = bytes((17, 0)) + b"\x01\x04" + bytes(4)  # PadN of 6: allowed
    assert kernel_discards(ok, 8) is None
    assert kernel_discards(bytes((17, 0)) + b"\x0f\x02ab\x01\x00", 8) is None  # PDM (action 00)


# -- item 6: memory is given back ---------------------------------------------------------------


def test_every_per_flow_structure_is_bounded_and_expires() -> None:
    a, b = procs(POLICY + "crypto_per_prefix_per_s: 100000\ncrypto_total_per_s: 100000\n")
    t = 1_000 * MS
    for k in range(3000):  # legitimate one-exchange flows
        v = a.egress(udp(sport=10_000 + k), t + k)
        assert v.packet is not None and b.ingress(v.packet, t + k + 1).outcome is Outcome.READ
    assert len(b.engine.flows) >= 3000 and len(b.metrics) >= 3000
    b.engine.max_flows = 500
    for k in range(2000):  # a flood of new 5-tuples (answers to spoofed clients)
        b.egress(udp(src=S, dst=f"2001:db8:1::{k + 0x1000:x}", sport=53), t + 5000 + k)
    assert len(b.engine.flows) <= 500
    gone = b.expire(t + 5000 + 2000 + b.engine.idle_ns + 1)
    assert gone > 0
    assert len(b.engine.flows) == 0 and len(b.metrics) == 0 and len(b.flow_stats) == 0 and len(b.limiter) == 0


# -- item 8: the expensive work is metered per source prefix ------------------------------------


def test_a_flood_of_forged_options_from_one_prefix_leaves_others_measured() -> None:
    a, b = procs("rules:\n  - prefix: 2001:db8::/32\n    mode: pdmv2-encrypted\ncrypto_per_prefix_per_s: 100\n")
    t = 1_000 * MS
    genuine = a.egress(udp(), t)
    assert genuine.packet is not None and b.ingress(genuine.packet, t + 1).outcome is Outcome.READ
    attacker = bytearray(insert_option(udp(src="2001:db8:66::6", sport=4444), option_of(sealed_packet())))
    outcomes = []
    for k in range(2000):  # 2,000 forged options within 100 ms
        attacker[80:82] = (5000 + k).to_bytes(2, "big")  # UDP source port: a new flow each time
        outcomes.append(b.ingress(bytes(attacker), t + 2 + k * 50_000).outcome)
    limited = outcomes.count(Outcome.RATE_LIMITED)
    assert limited >= 1700  # the burst (200) and the refill (about 10) did the work, the rest passed
    assert b.counters["ingress_rate_limited"] == limited
    # The genuine flow, established, spends nothing and is read throughout.
    for k in range(50):
        v = a.egress(udp(), t + 200 * MS + k)
        assert v.packet is not None and b.ingress(v.packet, t + 200 * MS + k + 1).outcome is Outcome.READ


def test_budgets_refill() -> None:
    _, b = procs("rules:\n  - prefix: 2001:db8::/32\n    mode: pdmv2-encrypted\ncrypto_per_prefix_per_s: 10\n")
    addr = ipaddress.IPv6Address("2001:db8:66::6").packed
    for _ in range(20):
        assert b.limiter.allow(addr, 0)
        b.limiter.charge(addr, 0)
    assert not b.limiter.allow(addr, 0)
    assert b.limiter.allow(addr, 200 * MS)  # 10/s: two tokens back after 200 ms
