"""RFC 8250 metrics from PDM packets matched by PSNLR (pure).

From a client packet P1, the server's reply P2 (PSNLR = PSNTP of P1) and the client's next
packet P3 (PSNLR = PSNTP of P2) (RFC 8250 §3.3; docs/protocol.md §9):

    server delay     = DELTATLR of P2
    round-trip delay = DELTATLS of P3 - DELTATLR of P2
    client delay     = DELTATLR of P3

The same holds with the roles swapped (the server measures a round trip from P4).  Only the
first packet that echoes a given PSNTP is matched: later ones carry a DELTATLR that grows with
the sender's own pacing, not its processing.  The client of a flow is the side that sent the
first packet the tracker saw.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from .keys import FiveTuple

__all__ = ["PacketRecord", "Measurement", "Metric", "MetricsTracker", "Summary", "summarize"]


class Metric(StrEnum):
    """Kinds of measurement."""

    SERVER_DELAY = "server_delay"
    CLIENT_DELAY = "client_delay"
    RTT = "rtt"


class OptionTimes(Protocol):
    """What the metrics need of an option: its flow, sequence numbers and deltas."""

    @property
    def flow(self) -> FiveTuple: ...
    @property
    def psntp(self) -> int: ...
    @property
    def psnlr(self) -> int: ...
    @property
    def delta_tlr_as(self) -> int: ...
    @property
    def delta_tls_as(self) -> int: ...


@dataclass(frozen=True, slots=True)
class PacketRecord:
    """One PDM option seen (sent or received), as the metrics need it."""

    flow: FiveTuple
    """5-tuple of the packet (src = sender)."""
    psntp: int
    """PSNTP."""
    psnlr: int
    """PSNLR."""
    delta_tlr_as: int
    """DELTATLR, attoseconds."""
    delta_tls_as: int
    """DELTATLS, attoseconds."""
    t_ns: int = 0
    """When it was seen (any clock; used only to forget idle flows)."""

    @classmethod
    def of(cls, pdm: OptionTimes, t_ns: int = 0) -> PacketRecord:
        """The record of an option as the engine wrote or read it (Sent, Received, a native record)."""
        return cls(
            flow=pdm.flow,
            psntp=pdm.psntp,
            psnlr=pdm.psnlr,
            delta_tlr_as=pdm.delta_tlr_as,
            delta_tls_as=pdm.delta_tls_as,
            t_ns=t_ns,
        )


@dataclass(frozen=True, slots=True)
class Measurement:
    """One metric value."""

    flow: FiveTuple
    """The flow, oriented client to server."""
    metric: Metric
    """What was measured."""
    value_ns: float
    """Value in nanoseconds."""
    psntp: int
    """PSNTP of the packet that completed the measurement."""
    ambiguous: bool = False
    """The responder had more than one packet of the other side unanswered (pipelined or
    overlapping requests), so the DELTATLR behind this value is not the time it took to answer
    one request: left out of summaries (docs/agent.md, What PDM measures)."""


class _FlowMemo:
    __slots__ = ("by_psntp", "client", "echoed", "last_ns", "unanswered")

    def __init__(self, client: FiveTuple) -> None:
        self.client = client  # oriented client -> server
        # (from client, PSNTP) -> the packet, and whether its DELTATLR is ambiguous
        self.by_psntp: OrderedDict[tuple[bool, int], tuple[PacketRecord, bool]] = OrderedDict()
        self.echoed: set[tuple[bool, int]] = set()
        self.last_ns = 0
        self.unanswered = {True: 0, False: 0}  # per side (from client?): the other's packets not yet answered


class MetricsTracker:
    """Feed it every PDM packet of some flows, in the order seen; it returns measurements.

    Bounded: at most ``max_flows`` flows (least recently seen forgotten first), ``window``
    packets per flow; :meth:`expire` forgets flows not seen since a time.
    """

    def __init__(self, window: int = 256, max_flows: int = 65536) -> None:
        self._flows: OrderedDict[FiveTuple, _FlowMemo] = OrderedDict()
        self._window = window
        self._max_flows = max_flows

    def __len__(self) -> int:
        return len(self._flows)

    def expire(self, older_than_ns: int) -> int:
        """Forget flows last seen before ``older_than_ns``; returns how many."""
        old = [k for k, memo in self._flows.items() if memo.last_ns < older_than_ns]
        for k in old:
            del self._flows[k]
        if len(old) >= 1024:
            self._flows = OrderedDict(self._flows)  # shrink the table a flood grew
        return len(old)

    def forget_all(self) -> None:
        """Forget every flow's packets: records were skipped (sampled out or lost), so later packets
        must not be paired with, or counted as answering, packets from before the gap."""
        self._flows.clear()

    @staticmethod
    def _key(flow: FiveTuple) -> FiveTuple:
        rev = flow.reversed()
        return flow if (flow.src, flow.src_port) <= (rev.src, rev.src_port) else rev

    def feed(self, rec: PacketRecord) -> list[Measurement]:
        """Record one packet; return the measurements it completes."""
        key = self._key(rec.flow)
        memo = self._flows.get(key)
        if memo is None:
            memo = self._flows[key] = _FlowMemo(rec.flow)
            while len(self._flows) > self._max_flows:
                self._flows.popitem(last=False)
        else:
            self._flows.move_to_end(key)
        memo.last_ns = rec.t_ns
        from_client = rec.flow == memo.client
        # Packets of the other side this side has not answered yet: with more than one (pipelined
        # or overlapping requests, TCP's delayed ACKs), its DELTATLR runs from the newest of them,
        # not from the one it answers.  Each packet answers one; each packet of the other side
        # waits for one.  (Alternating exchanges stay at one; a steady pipeline stays above.)
        waiting = memo.unanswered[from_client]
        ambiguous = waiting > 1
        memo.unanswered[from_client] = waiting - 1 if waiting else 0
        memo.unanswered[not from_client] = min(memo.unanswered[not from_client] + 1, self._window)
        out: list[Measurement] = []
        # Q: the other side's packet that this one echoes.
        found = memo.by_psntp.get((not from_client, rec.psnlr))
        if found is not None and (not from_client, rec.psnlr) not in memo.echoed:
            q, q_ambiguous = found
            memo.echoed.add((not from_client, rec.psnlr))
            if len(memo.echoed) > 4 * self._window:
                memo.echoed.clear()
            delay = Metric.CLIENT_DELAY if from_client else Metric.SERVER_DELAY
            out.append(
                Measurement(
                    flow=memo.client,
                    metric=delay,
                    value_ns=rec.delta_tlr_as / 1e9,
                    psntp=rec.psntp,
                    ambiguous=ambiguous,
                )
            )
            # Q itself echoed P (sent by this side): DELTATLS of rec spans P..Q at this side.
            if (from_client, q.psnlr) in memo.by_psntp and rec.delta_tls_as:
                rtt = (rec.delta_tls_as - q.delta_tlr_as) / 1e9
                if rtt >= 0:  # negative when packets did not alternate (DELTATLS spans another exchange)
                    out.append(
                        Measurement(
                            flow=memo.client, metric=Metric.RTT, value_ns=rtt, psntp=rec.psntp, ambiguous=q_ambiguous
                        )
                    )
        memo.by_psntp[(from_client, rec.psntp)] = (rec, ambiguous)
        while len(memo.by_psntp) > self._window:
            memo.by_psntp.popitem(last=False)
        return out


@dataclass(frozen=True, slots=True)
class Summary:
    """count, min, p50, p95, max of a list of values (nanoseconds)."""

    count: int
    """Number of values."""
    min: float
    """Smallest."""
    p50: float
    """Median (nearest rank)."""
    p95: float
    """95th percentile (nearest rank)."""
    max: float
    """Largest."""


def summarize(values: list[float]) -> Summary | None:
    """Nearest-rank percentiles; None for no values."""
    if not values:
        return None
    v = sorted(values)

    def rank(p: float) -> float:
        return v[max(0, math.ceil(p * len(v)) - 1)]

    return Summary(len(v), v[0], rank(0.50), rank(0.95), v[-1])
