"""RFC 8250 metrics matched by PSNLR, fed by two engines exchanging packets."""

from __future__ import annotations

import random

import pytest

from pdmv2 import FiveTuple, Mode, PdmEngine, Received, Sent
from pdmv2.core.metrics import Metric, MetricsTracker, PacketRecord, summarize

MS = 1_000_000
FLOW = FiveTuple.from_text("2001:db8:1::10", 40000, "2001:db8:2::20", 80, 17)


def record(x: Sent | Received) -> PacketRecord:
    return PacketRecord.of(x)


def test_server_delay_rtt_and_client_delay() -> None:
    client, server = PdmEngine(rng=random.Random(1)), PdmEngine(rng=random.Random(2))
    observer = MetricsTracker()
    t, found = 0, []
    for _ in range(5):
        p = client.outgoing(FLOW, Mode.PDMV2_CLEAR, t)  # one-way delay 1 ms each way
        found += observer.feed(record(server.incoming(FLOW, p.option, t + 1 * MS)))
        q = server.outgoing(FLOW.reversed(), Mode.PDMV2_CLEAR, t + 6 * MS)  # server delay 5 ms
        found += observer.feed(record(client.incoming(FLOW.reversed(), q.option, t + 7 * MS)))
        t += 10 * MS  # client delay 3 ms
    by = {m: [x.value_ns for x in found if x.metric is m] for m in Metric}
    assert len(by[Metric.SERVER_DELAY]) == 5
    assert all(abs(v - 5 * MS) < 5 * MS * 2**-15 for v in by[Metric.SERVER_DELAY])
    assert len(by[Metric.CLIENT_DELAY]) == 4
    assert all(abs(v - 3 * MS) < 3 * MS * 2**-14 for v in by[Metric.CLIENT_DELAY])
    rtts = by[Metric.RTT]
    assert len(rtts) >= 7  # measured at both ends
    assert all(abs(v - 2 * MS) < 1000 for v in rtts)  # 2 ms of path, within the truncation error
    assert all(x.flow == FLOW for x in found)


def test_only_first_echo_counts() -> None:
    tr = MetricsTracker()
    tr.feed(PacketRecord(FLOW, 10, 0, 0, 0))
    first = tr.feed(PacketRecord(FLOW.reversed(), 500, 10, 5 * MS * 10**9, 0))
    again = tr.feed(PacketRecord(FLOW.reversed(), 501, 10, 9 * MS * 10**9, 0))
    assert [m.metric for m in first] == [Metric.SERVER_DELAY] and again == []


def test_summary() -> None:
    s = summarize([float(v) for v in range(1, 101)])
    assert s is not None and (s.count, s.min, s.p50, s.p95, s.max) == (100, 1, 50, 95, 100)
    assert summarize([]) is None
    one = summarize([7.0])
    assert one is not None and one.p95 == 7.0


@pytest.mark.parametrize("n", [1, 2, 3, 19])
def test_summary_small(n: int) -> None:
    s = summarize([float(i) for i in range(n)])
    assert s is not None and s.min <= s.p50 <= s.p95 <= s.max


def test_pipelined_requests_give_ambiguous_server_delays_left_out_of_the_stats() -> None:
    # A 5 ms server at 500 requests/s on one flow: each reply leaves while two more requests have
    # arrived, so its DELTATLR runs from the newest request (1 ms), not from the one it answers.
    from pdmv2.core.packetproc import PacketProcessor
    from pdmv2.core.policy import parse_policy

    client, server = PdmEngine(rng=random.Random(1)), PdmEngine(rng=random.Random(2))
    proc = PacketProcessor(PdmEngine(rng=random.Random(3)), parse_policy("rules: []\n"))
    found = []
    events: list[tuple[int, str, int]] = []
    for k in range(200):
        events.append((k * 2 * MS, "request", k))  # sent every 2 ms, arrives 0.1 ms later
        events.append((k * 2 * MS + 100_000 + 5 * MS, "reply", k))  # answered 5 ms after arrival
    for t, kind, _ in sorted(events):
        if kind == "request":
            p = client.outgoing(FLOW, Mode.PDMV2_CLEAR, t)
            rec = record(server.incoming(FLOW, p.option, t + 100_000))
        else:
            q = server.outgoing(FLOW.reversed(), Mode.PDMV2_CLEAR, t)
            rec = record(client.incoming(FLOW.reversed(), q.option, t + 100_000))
        found += proc._record(rec)
    delays = [m for m in found if m.metric is Metric.SERVER_DELAY]
    assert delays and all(m.ambiguous for m in delays[1:])  # every reply after the first overlaps
    assert all(m.value_ns < 2 * MS for m in delays[1:])  # what they would have said: not 5 ms
    summary = proc.flow_stats[FLOW].summary() if FLOW in proc.flow_stats else {}
    server_delay = summary.get("server_delay")
    assert server_delay is None or server_delay.count <= 1  # none of the ambiguous ones counted
    assert proc.counters["metrics_ambiguous"] >= len(delays) - 1


def test_one_request_at_a_time_is_never_ambiguous() -> None:
    client, server = PdmEngine(rng=random.Random(1)), PdmEngine(rng=random.Random(2))
    observer = MetricsTracker()
    found = []
    for k in range(50):
        t = k * 10 * MS
        p = client.outgoing(FLOW, Mode.PDMV2_CLEAR, t)
        found += observer.feed(record(server.incoming(FLOW, p.option, t + MS)))
        q = server.outgoing(FLOW.reversed(), Mode.PDMV2_CLEAR, t + 6 * MS)
        found += observer.feed(record(client.incoming(FLOW.reversed(), q.option, t + 7 * MS)))
    assert found and not any(m.ambiguous for m in found)
