"""What the agent does to one packet (pure: bytes and ``now`` in, bytes and an outcome out).

Egress: choose the mode by destination, ask the engine for the option, insert it.  Ingress:
find the PDM option, read it with the engine, feed the metrics.  Nothing here raises on a bad
packet: every failure is an outcome that the agent counts; the packet itself is never lost
(only ``on_auth_failure: drop`` drops, and only packets whose option fails to open).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from enum import StrEnum

from .doh import parse_packet, reserve_option
from .errors import CryptoError, DecodeError, EncodeError, InsertError, ReplayError, UnknownKeyError
from .flow import Mode, PdmEngine, Received, Sent, StaleKeyError
from .keys import FiveTuple
from .metrics import Measurement, Metric, MetricsTracker, PacketRecord, Summary, summarize
from .policy import Policy

__all__ = ["Outcome", "PacketProcessor", "Verdict", "FlowStats"]

ICMPV6_ECHO = (128, 129)


class Outcome(StrEnum):
    """Why a packet left the agent the way it did (the counters' names)."""

    INSERTED = "inserted"
    OFF = "off"
    NOT_MEASURED = "not_measured"  # ICMPv6 other than echo, or another protocol
    TOO_BIG = "too_big"
    REFUSED = "refused"  # fragments, routing header, IPsec, jumbogram, already has PDM
    NO_KEY = "no_key"
    MALFORMED = "malformed"
    READ = "read"
    NO_PDM = "no_pdm"
    AUTH_FAILED = "auth_failed"
    REPLAY = "replay"
    STALE_KEY = "stale_key"
    BAD_OPTION = "bad_option"


_CRYPTO_OUTCOME: dict[type, Outcome] = {ReplayError: Outcome.REPLAY, StaleKeyError: Outcome.STALE_KEY}


@dataclass(slots=True)
class Verdict:
    """The processor's answer for one packet."""

    outcome: Outcome
    """What happened."""
    packet: bytes | None = None
    """Replacement packet (egress with an option), or None to pass the original."""
    drop: bool = False
    """True only for on_auth_failure: drop."""
    sent: Sent | None = None
    """What was inserted (egress)."""
    received: Received | None = None
    """What was read (ingress)."""
    detail: str = ""
    """Short reason for logs (never a secret)."""


class FlowStats:
    """Recent measurements of one flow (bounded)."""

    __slots__ = ("flow", "packets", "values")

    def __init__(self, flow: FiveTuple, keep: int = 10000) -> None:
        self.flow = flow
        self.values: dict[Metric, deque[float]] = {m: deque(maxlen=keep) for m in Metric}
        self.packets = 0

    def summary(self) -> dict[str, Summary | None]:
        """count/min/p50/p95/max per metric."""
        return {m.value: summarize(list(v)) for m, v in list(self.values.items())}


class PacketProcessor:
    """Egress and ingress processing for one host."""

    def __init__(self, engine: PdmEngine, policy: Policy) -> None:
        self.engine = engine
        self.policy = policy
        self.counters: Counter[str] = Counter()
        self.metrics = MetricsTracker()
        self.flow_stats: dict[FiveTuple, FlowStats] = {}

    def set_policy(self, policy: Policy) -> None:
        """Swap the policy (SIGHUP); flow state is kept."""
        self.policy = policy
        self.engine.rotate_after = policy.rotate_after
        self.engine.grace_ns = policy.grace_ms * 1_000_000

    def _count(self, direction: str, outcome: Outcome) -> None:
        self.counters[f"{direction}_{outcome.value}"] += 1

    def egress(self, packet: bytes, now_ns: int) -> Verdict:
        """The packet as it should leave (with the option when the policy says so)."""
        try:
            info = parse_packet(packet)
        except DecodeError as exc:
            return self._v("egress", Verdict(Outcome.MALFORMED, detail=str(exc)))
        if info.refuse is None and (
            info.upper_proto not in (6, 17, 58) or (info.upper_proto == 58 and info.icmp_type not in ICMPV6_ECHO)
        ):
            return self._v("egress", Verdict(Outcome.NOT_MEASURED))  # (packets it cannot carry: REFUSED below)
        mode = self.policy.mode_for(info.flow.dst)
        if mode is Mode.OFF:
            return self._v("egress", Verdict(Outcome.OFF))
        # Make room first, so a packet that has to go out bare consumes no sequence number.
        try:
            new, offset = reserve_option(packet, mode.option_size, mtu=self.policy.mtu, info=info)
        except InsertError as exc:
            outcome = Outcome.TOO_BIG if exc.reason == "no room" else Outcome.REFUSED
            return self._v("egress", Verdict(outcome, detail=str(exc)))
        try:
            sent = self.engine.outgoing(info.flow, mode, now_ns)
        except UnknownKeyError as exc:
            return self._v("egress", Verdict(Outcome.NO_KEY, detail=str(exc)))
        except EncodeError as exc:
            return self._v("egress", Verdict(Outcome.MALFORMED, detail=str(exc)))
        new[offset : offset + len(sent.option)] = sent.option
        self._record(PacketRecord(sent.flow, sent.psntp, sent.psnlr, sent.delta_tlr_as, sent.delta_tls_as))
        return self._v("egress", Verdict(Outcome.INSERTED, bytes(new), sent=sent))

    def ingress(self, packet: bytes, now_ns: int) -> Verdict:
        """Read the option of an arriving packet; the packet is delivered unless policy drops forgeries."""
        try:
            info = parse_packet(packet)
        except DecodeError as exc:
            return self._v("ingress", Verdict(Outcome.MALFORMED, detail=str(exc)))
        if info.pdm_option is None:
            return self._v("ingress", Verdict(Outcome.NO_PDM))
        try:
            got = self.engine.incoming(info.flow, info.pdm_option, now_ns)
        except DecodeError as exc:
            return self._v("ingress", Verdict(Outcome.BAD_OPTION, detail=str(exc)))
        except UnknownKeyError as exc:
            return self._v("ingress", Verdict(Outcome.NO_KEY, detail=str(exc)))
        except CryptoError as exc:  # a forgery, a replay or a stale key: the option is not to be trusted
            outcome = _CRYPTO_OUTCOME.get(type(exc), Outcome.AUTH_FAILED)
            return self._v("ingress", Verdict(outcome, drop=self.policy.on_auth_failure == "drop", detail=str(exc)))
        self._record(PacketRecord(got.flow, got.psntp, got.psnlr, got.delta_tlr_as, got.delta_tls_as))
        return self._v("ingress", Verdict(Outcome.READ, received=got))

    def _v(self, direction: str, verdict: Verdict) -> Verdict:
        self._count(direction, verdict.outcome)
        return verdict

    def _record(self, rec: PacketRecord) -> list[Measurement]:
        found = self.metrics.feed(rec)
        for m in found:
            stats = self.flow_stats.get(m.flow)
            if stats is None:
                if len(self.flow_stats) > 4096:
                    self.flow_stats.pop(next(iter(self.flow_stats)))
                stats = self.flow_stats[m.flow] = FlowStats(m.flow)
            stats.values[m.metric].append(m.value_ns)
        return found
