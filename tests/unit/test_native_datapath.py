"""The native data path's own unit tests (the differential tests compare it with the Python engine)."""

from __future__ import annotations

import itertools
import os
import random

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from pdmv2 import DEFAULT_SUITE
from pdmv2.core.crypto import OptionCipher
from pdmv2.core.doh import parse_packet
from pdmv2.core.errors import AuthenticationError, ConfigError
from pdmv2.core.keys import AeadId, FiveTuple, SessionKey, Suite
from pdmv2.core.policy import parse_policy
from pdmv2.native import (
    AVAILABLE,
    HOOK_EGRESS,
    HOOK_INGRESS,
    OUTCOMES,
    REQ_KEY,
    REQ_RESERVE,
    UNAVAILABLE_REASON,
    NativeCipher,
    apply_policy,
    iter_records,
    new_datapath,
    pack_tuple,
    serve_requests,
    unpack_tuple,
)

pytestmark = pytest.mark.skipif(not AVAILABLE, reason=UNAVAILABLE_REASON)

from tests.differential.harness import C, S, client_keys, server_keys  # noqa: E402

POLICY = parse_policy(
    "rules:\n  - prefix: 2001:db8:2::/64\n    mode: pdmv2-encrypted\n"
    "  - prefix: 2001:db8:1::/64\n    mode: pdmv2-encrypted\n"
)
HEADER = bytes((0x0F, 0x22, 0x20, 0x00, 0x12, 0x35))
T0 = 10**12


def dp_for(keys: object, **kw: int) -> object:
    dp = new_datapath(**kw)
    apply_policy(dp, POLICY, epoch_ns=2_000_000_000)
    dp.set_floors(reserved=1 << 62, rx_recorded=1 << 62)  # type: ignore[attr-defined]
    return dp


def run(dp: object, keys: object, hook: int, pkt: bytes, now: int) -> tuple[str, bytes | None, bool]:
    for _ in range(3):
        out, new, drop = dp.process(hook, pkt, now)  # type: ignore[attr-defined]
        if OUTCOMES[out] not in ("key_pending", "reserve_pending"):
            return OUTCOMES[out], new, drop
        serve_requests(dp, keys, lambda _k: True)  # type: ignore[arg-type]
    raise AssertionError("still pending")


def udp(src: str = C, dst: str = S, sport: int = 4000, dport: int = 53, size: int = 20) -> bytes:
    return bytes(IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(b"q" * size))


@pytest.mark.parametrize("aead", list(AeadId))
def test_cipher_matches_cryptography_and_refuses_forgeries(aead: AeadId) -> None:
    suite = Suite(aead=aead)
    key = SessionKey(suite, 3, os.urandom(suite.nk), os.urandom(suite.nn))
    nat, ref = NativeCipher(key), OptionCipher(key)
    plain = os.urandom(14)
    for rn in (1, 0x1234, 0x7FFF):
        sealed = nat.seal_packed(HEADER, rn, plain)
        assert sealed == ref.seal_packed(HEADER, rn, plain)
        assert nat.open_packed(HEADER, rn, sealed[6:]) == plain
        with pytest.raises(AuthenticationError):
            nat.open_packed(HEADER, rn ^ 1, sealed[6:])  # another nonce
        bad = bytearray(sealed[6:])
        bad[3] ^= 0x40
        with pytest.raises(AuthenticationError):
            nat.open_packed(HEADER, rn, bytes(bad))


def test_cipher_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        NativeCipher(SessionKey(DEFAULT_SUITE, 0, b"short", bytes(12)))
    nat = NativeCipher(SessionKey(DEFAULT_SUITE, 0, bytes(16), bytes(12)))
    with pytest.raises(ValueError):
        nat.seal_packed(HEADER[:5], 1, bytes(14))
    with pytest.raises(ValueError):
        nat.seal_packed(HEADER, 1 << 15, bytes(14))


def test_keys_are_asked_for_then_used_and_a_missing_secret_is_no_key() -> None:
    a = dp_for(client_keys())
    out, new, _ = a.process(HOOK_EGRESS, udp(), T0)  # type: ignore[attr-defined]
    assert OUTCOMES[out] == "key_pending" and new is None  # passes unmeasured meanwhile
    reqs = a.requests()  # type: ignore[attr-defined]
    assert [(k, unpack_tuple(t), seal) for k, t, _, seal in reqs] == [
        (REQ_KEY, FiveTuple.from_text(C, 4000, S, 53, 17), True)
    ]
    assert a.requests() == []  # type: ignore[attr-defined]  # drained
    a.process(HOOK_EGRESS, udp(), T0)  # type: ignore[attr-defined]
    a.process(HOOK_EGRESS, udp(), T0)  # type: ignore[attr-defined]
    assert len(a.requests()) == 1  # type: ignore[attr-defined]  # asked once, however many packets wait
    assert run(a, client_keys(), HOOK_EGRESS, udp(), T0)[0] == "inserted"
    # a destination no key file covers: "no key" is installed, the packet goes out bare
    other = udp(dst="2001:db8:2::99")
    assert run(a, server_keys(), HOOK_EGRESS, other, T0)[0] == "no_key"


def test_round_trip_records_and_counters() -> None:
    a, b = dp_for(client_keys()), dp_for(server_keys())
    out, pkt, _ = run(a, client_keys(), HOOK_EGRESS, udp(), T0)
    assert out == "inserted" and pkt is not None
    info = parse_packet(pkt)
    assert info.pdm_option is not None and len(info.pdm_option) == 36
    assert run(b, server_keys(), HOOK_INGRESS, pkt, T0 + 1000)[0] == "read"
    assert run(b, server_keys(), HOOK_INGRESS, pkt, T0 + 2000)[0] == "replay"
    recs = list(iter_records(b.drain(100)))  # type: ignore[attr-defined]
    assert [r.outcome for r in recs] == ["read", "replay"]
    assert recs[0].flow == FiveTuple.from_text(C, 4000, S, 53, 17) and recs[0].t_ns == T0 + 1000
    sent = list(iter_records(a.drain(100)))  # type: ignore[attr-defined]
    assert sent[0].psntp == recs[0].psntp and sent[0].kri == recs[0].kri and sent[0].global_pointer == 1
    st = b.stats()  # type: ignore[attr-defined]
    assert st["ingress"][OUTCOMES.index("read")] == 1 and st["ingress"][OUTCOMES.index("replay")] == 1


def test_record_ring_drops_and_counts_when_python_falls_behind() -> None:
    a = dp_for(client_keys(), ring=4)
    for i in range(10):
        assert run(a, client_keys(), HOOK_EGRESS, udp(), T0 + i)[0] == "inserted"
    kept = len(a.drain(100)) // 96  # type: ignore[attr-defined]
    st = a.stats()  # type: ignore[attr-defined]
    assert 1 <= kept <= 4 and kept + st["records_sampled_out"] + st["records_dropped"] == 10
    for k in range(1, 4):  # the ring is empty again: the sampling steps back, one step a second
        assert run(a, client_keys(), HOOK_EGRESS, udp(), T0 + k * 2 * 10**9)[0] == "inserted"
        a.drain(100)  # type: ignore[attr-defined]
    assert a.stats()["record_stride"] == 1  # type: ignore[attr-defined]
    assert run(a, client_keys(), HOOK_EGRESS, udp(), T0 + 8 * 10**9)[0] == "inserted"
    assert len(a.drain(100)) == 96  # type: ignore[attr-defined]  # every record kept


def test_records_are_sampled_by_whole_flows_when_python_falls_behind() -> None:
    """Behind, the ring keeps some flows whole (both directions) instead of losing a block of time."""
    a, b = dp_for(client_keys(), ring=256), dp_for(server_keys(), ring=256)
    flows, rounds = 64, 8
    for i in range(rounds):
        for f in range(flows):
            out, pkt, _ = run(a, client_keys(), HOOK_EGRESS, udp(sport=5000 + f), T0 + (i * flows + f) * 1000)
            assert out == "inserted" and pkt is not None
            assert run(b, server_keys(), HOOK_INGRESS, pkt, T0 + (i * flows + f) * 1000 + 10)[0] == "read"
    for dp in (a, b):
        recs = list(iter_records(dp.drain(10_000)))  # type: ignore[attr-defined]
        st = dp.stats()  # type: ignore[attr-defined]
        assert len(recs) + st["records_sampled_out"] + st["records_dropped"] == flows * rounds
        assert st["records_sampled_out"] > 0 and st["record_stride"] > 1
        by_flow: dict[int, list[int]] = {}
        for r in recs:
            by_flow.setdefault(r.flow.src_port if r.flow.src_port != 53 else r.flow.dst_port, []).append(r.psntp)
        whole = [p for p, seq in by_flow.items() if len(seq) == rounds]
        assert len(whole) >= 2  # some flows kept from their first packet to their last
        for seq in by_flow.values():  # a kept flow's records have no holes until the ring sampled it out
            assert all((y - x) & 0xFFFF == 1 for x, y in itertools.pairwise(seq))
        assert len({r.sample_epoch for r in recs}) == 1  # sampling more: the flows kept have no gap
    # Both ends keep the same flows: the hash is the same in both directions.
    assert a.stats()["records_sampled_out"] == b.stats()["records_sampled_out"]  # type: ignore[attr-defined]
    # Drained, a second later: one step back, and the records say that flows may have a gap.
    before = recs[-1].sample_epoch
    stride = a.stats()["record_stride"]  # type: ignore[attr-defined]
    assert run(a, client_keys(), HOOK_EGRESS, udp(sport=whole[0]), T0 + 10 * 10**9)[0] == "inserted"
    assert a.stats()["record_stride"] == stride // 2  # type: ignore[attr-defined]
    later = list(iter_records(a.drain(100)))  # type: ignore[attr-defined]
    assert len(later) == 1 and later[0].sample_epoch != before


def test_flow_table_is_bounded_and_expires() -> None:
    a = dp_for(client_keys(), max_flows=8)
    for port in range(50):
        assert run(a, client_keys(), HOOK_EGRESS, udp(sport=1000 + port), T0 + port)[0] == "inserted"
    flows = a.flows()  # type: ignore[attr-defined]
    assert len(flows) == 8 and unpack_tuple(flows[-1]).src_port == 1049
    assert a.floors()["send_floor"] >= 0  # type: ignore[attr-defined]  # the evicted flows raised it
    assert a.expire(T0 + 400 * 10**9) == 8 and a.flows() == []  # type: ignore[attr-defined]


def test_downgrade_is_refused_where_encryption_is_expected() -> None:
    b = dp_for(server_keys())
    clear = dp_for(client_keys())
    apply_policy(clear, parse_policy("default: pdmv2-clear\n"))
    clear.set_floors(reserved=1 << 62)  # type: ignore[attr-defined]
    out, pkt, _ = run(clear, client_keys(), HOOK_EGRESS, udp(), T0)
    assert out == "inserted" and pkt is not None
    assert run(b, server_keys(), HOOK_INGRESS, pkt, T0 + 1)[0] == "downgrade"
    assert b.flows() == [] and b.drain(10) == b""  # type: ignore[attr-defined]  # no state, no record


def test_reservation_is_asked_for_before_a_kri_is_used() -> None:
    a = new_datapath()
    apply_policy(a, POLICY, epoch_ns=2_000_000_000)
    serve_requests(a, client_keys(), lambda _k: True)
    out, _, _ = a.process(HOOK_EGRESS, udp(), T0)  # type: ignore[attr-defined]
    assert OUTCOMES[out] == "reserve_pending"
    ((kind, _, value, _),) = a.requests()  # type: ignore[attr-defined]
    assert kind == REQ_RESERVE and value == ((T0 // 2_000_000_000) << 16) + 15
    refused: list[int] = []
    a.process(HOOK_EGRESS, udp(), T0)  # type: ignore[attr-defined]
    serve_requests(a, client_keys(), lambda k: refused.append(k) is not None)  # the disk refuses
    assert refused and OUTCOMES[a.process(HOOK_EGRESS, udp(), T0)[0]] == "reserve_pending"  # type: ignore[attr-defined]


def test_malformed_and_random_input_never_crashes() -> None:
    a, b = dp_for(client_keys()), dp_for(server_keys())
    _, good, _ = run(a, client_keys(), HOOK_EGRESS, udp(), T0)
    assert good is not None
    rnd = random.Random(9)
    for i in range(3000):
        if rnd.random() < 0.5:
            p = bytearray(good)
            for _ in range(rnd.randrange(1, 6)):
                p[rnd.randrange(len(p))] = rnd.randrange(256)
            pkt = bytes(p[: rnd.randrange(len(p) + 1)] if rnd.random() < 0.2 else p)
        else:
            pkt = bytes([0x60]) + os.urandom(rnd.randrange(0, 120))
        for hook, dp, keys in ((HOOK_INGRESS, b, server_keys()), (HOOK_EGRESS, a, client_keys())):
            out, new, _ = dp.process(hook, pkt, T0 + i)  # type: ignore[attr-defined]
            assert 0 <= out < len(OUTCOMES)
            if new is not None:
                assert len(new) > len(pkt) and parse_packet(new).pdm_option is not None
            serve_requests(dp, keys, lambda _k: True)


def test_bad_arguments_are_typed_errors() -> None:
    dp = new_datapath(max_flows=4)
    with pytest.raises(ValueError):
        dp.configure(rotate_after=0)  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        dp.set_policy([(b"short", 64, 3)], 0)  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        dp.install_key(b"x" * 36, 0, 1, bytes(16), bytes(12), True)  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        dp.install_key(b"x" * 37, 0, 9, bytes(16), bytes(12), True)  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        new_datapath(max_flows=0)
    assert pack_tuple(unpack_tuple(bytes(range(37)))) == bytes(range(37))


def test_unavailable_extension_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import pdmv2.native as native

    monkeypatch.setattr(native, "_ext", None)
    monkeypatch.setattr(native, "UNAVAILABLE_REASON", "not built (test)")
    with pytest.raises(ConfigError, match="not built"):
        native.new_datapath()


def test_prefetch_asks_for_the_next_epoch_and_rotation_before_they_are_needed() -> None:
    epoch = 2_000_000_000
    a = dp_for(client_keys())
    a.configure(prefetch_ns=500_000_000, rotate_after=10)  # type: ignore[attr-defined]
    a.set_floors(reserved=-1)  # type: ignore[attr-defined]
    start = (T0 // epoch) * epoch + 100  # early in an epoch: nothing of the next one yet
    for i in range(3):
        run(a, client_keys(), HOOK_EGRESS, udp(), start + i)
    e = start // epoch
    assert a.requests() == []  # type: ignore[attr-defined]
    for i in range(4):  # past half of the PRSEQ: the next rotation's key is asked for
        assert a.process(HOOK_EGRESS, udp(), start + 10 + i)[0] == OUTCOMES.index("inserted")  # type: ignore[attr-defined]
    reqs = a.requests()  # type: ignore[attr-defined]
    assert [(k, kri) for k, _, kri, _ in reqs] == [(REQ_KEY, (e << 16) + 1)]
    late = (e + 1) * epoch - 100_000_000  # 0.1 s before the next epoch
    assert a.process(HOOK_EGRESS, udp(), late)[0] == OUTCOMES.index("inserted")  # type: ignore[attr-defined]
    kinds = {(k, kri) for k, _, kri, _ in a.requests()}  # type: ignore[attr-defined]
    assert (REQ_KEY, (e + 1) << 16) in kinds and (REQ_RESERVE, ((e + 1) << 16) | 15) in kinds


def test_a_gap_in_the_records_makes_the_metrics_forget_what_came_before() -> None:
    from pdmv2.agent.native_loop import NativeLoop
    from pdmv2.core.metrics import MetricsTracker, PacketRecord

    tracker = MetricsTracker()
    seen: list[int] = []

    def sink(rec: object) -> None:
        seen.append(rec.psntp)  # type: ignore[attr-defined]
        tracker.feed(PacketRecord.of(rec, rec.t_ns))  # type: ignore[arg-type, attr-defined]

    loop = NativeLoop(
        policy=parse_policy("rules:\n  - prefix: 2001:db8::/32\n    mode: pdmv2-clear\n"),
        keys=None,
        epoch_ns=2_000_000_000,
        floors=(-1, -1, 1 << 62),
        wall_offset_ns=0,
        reserve=lambda _k: True,
        record_sink=sink,
        ring=4,
        on_gap=tracker.forget_all,
    )
    loop.dp.set_floors(reserved=1 << 62, rx_recorded=1 << 62)
    for i in range(12):  # nobody drains: the ring fills and records are lost
        loop.dp.process(HOOK_EGRESS, udp(), T0 + i)
    assert loop.drain() >= 1 and len(tracker) == 1 and loop.record_gaps == 0
    kept = len(seen)
    for k in range(1, 10):  # drained: the sampling steps back, one step a second, to this flow
        loop.dp.process(HOOK_EGRESS, udp(), T0 + k * 2 * 10**9)
        if loop.drain():
            break
    assert len(seen) == kept + 1 and seen[-1] > seen[-2] + 1  # records were skipped before this one
    assert loop.record_gaps == 1
    (memo,) = tracker._flows.values()
    assert len(memo.by_psntp) == 1  # the tracker forgot the packets before the gap
