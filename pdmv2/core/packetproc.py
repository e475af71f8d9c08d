"""What the agent does to one packet (pure: bytes and ``now`` in, bytes and an outcome out).

Egress: choose the mode by destination, ask the engine for the option, insert it.  Ingress:
find the PDM option, read it with the engine, feed the metrics.  Nothing here raises on a bad
packet: every failure is an outcome that the agent counts; the packet itself is never lost
(only ``on_auth_failure: drop`` drops, and only packets whose option fails to open).
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from enum import StrEnum

from .doh import parse_packet, reserve_option
from .errors import CryptoError, DecodeError, EncodeError, InsertError, KeyWaitError, ReplayError, UnknownKeyError
from .flow import Mode, PdmEngine, Received, Sent, StaleKeyError
from .keys import FiveTuple
from .metrics import Measurement, Metric, MetricsTracker, PacketRecord, Summary, summarize
from .option import OPTION_TYPE_PDM, OptionLength
from .policy import ModeTable, Policy
from .ratelimit import PrefixLimiter

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
    DOWNGRADE = "downgrade"  # a clear or RFC 8250 option where policy expects encryption
    NOT_FOR_US = "not_for_us"  # RFC 8200: meant for another node, repeated per fragment, or discarded
    KEY_WAIT = "key_wait"  # no key may be used yet (docs/protocol.md §8): sent without the option
    RATE_LIMITED = "rate_limited"  # the peer's prefix used up its budget of expensive work


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


_CLEAR_SIZES = (2 + OptionLength.PDM, 2 + OptionLength.PDMV2_CLEAR)
_MAX_FLOW_STATS = 4096  # flows with recent measurements kept for `pdmv2 stats`
_KEEP_PER_METRIC = 1000  # values per metric and flow


class FlowStats:
    """Recent measurements of one flow (bounded)."""

    __slots__ = ("flow", "last_ns", "packets", "values")

    def __init__(self, flow: FiveTuple, keep: int = _KEEP_PER_METRIC) -> None:
        self.flow = flow
        self.values: dict[Metric, deque[float]] = {m: deque(maxlen=keep) for m in Metric}
        self.packets = 0
        self.last_ns = 0

    def summary(self) -> dict[str, Summary | None]:
        """count/min/p50/p95/max per metric."""
        return {m.value: summarize(list(v)) for m, v in list(self.values.items())}


class PacketProcessor:
    """Egress and ingress processing for one host."""

    def __init__(self, engine: PdmEngine, policy: Policy, limiter: PrefixLimiter | None = None) -> None:
        self.engine = engine
        self.policy = policy
        self._modes = ModeTable(policy)
        if limiter is None:
            limiter = PrefixLimiter(policy.crypto_per_prefix_per_s, policy.crypto_total_per_s)
        self.limiter = limiter
        self.counters: Counter[str] = Counter()
        self.metrics = MetricsTracker()
        self.flow_stats: OrderedDict[FiveTuple, FlowStats] = OrderedDict()

    def set_policy(self, policy: Policy) -> None:
        """Swap the policy (SIGHUP); flow state is kept."""
        self.policy = policy
        self._modes = ModeTable(policy)
        self.engine.rotate_after = policy.rotate_after
        self.engine.grace_ns = policy.grace_ms * 1_000_000
        self.engine.idle_ns = policy.flow_idle_s * 1_000_000_000
        self.limiter.per_prefix = float(policy.crypto_per_prefix_per_s)
        self.limiter.total = float(policy.crypto_total_per_s)

    def expire(self, now_ns: int) -> int:
        """Forget flows idle for the engine's ``idle_ns``: flow state, metrics and stats alike."""
        gone = self.engine.expire(now_ns)
        if gone >= 1024:
            self._modes = ModeTable(self.policy)  # a flood's destinations leave the cache too
        horizon = now_ns - self.engine.idle_ns
        self.metrics.expire(horizon)
        for key in [k for k, fs in self.flow_stats.items() if fs.last_ns < horizon]:
            del self.flow_stats[key]
        self.limiter.expire(now_ns)
        return gone

    def _count(self, direction: str, outcome: Outcome) -> None:
        self.counters[f"{direction}_{outcome.value}"] += 1

    def egress(self, packet: bytes, now_ns: int) -> Verdict:
        """The packet as it should leave (with the option when the policy says so).

        Every IPv6 packet that leaves moves its source-address type's Global Pointer, with the
        option or without it (draft §6.2).
        """
        v = self._egress(packet, now_ns)
        if v.sent is None and len(packet) >= 40 and packet[0] >> 4 == 6:
            self.engine.count_sent(packet[8:24])
        return v

    def _egress(self, packet: bytes, now_ns: int) -> Verdict:
        try:
            info = parse_packet(packet)
        except DecodeError as exc:
            return self._v("egress", Verdict(Outcome.MALFORMED, detail=str(exc)))
        if info.refuse is None and (
            info.upper_proto not in (6, 17, 58) or (info.upper_proto == 58 and info.icmp_type not in ICMPV6_ECHO)
        ):
            return self._v("egress", Verdict(Outcome.NOT_MEASURED))  # (packets it cannot carry: REFUSED below)
        mode = self._modes.mode_for(info.flow.dst)
        if mode is Mode.OFF:
            return self._v("egress", Verdict(Outcome.OFF))
        # Make room first, so a packet that has to go out bare consumes no sequence number.
        try:
            new, offset = reserve_option(packet, mode.option_size, mtu=self.policy.mtu, info=info)
        except InsertError as exc:
            outcome = Outcome.TOO_BIG if exc.reason == "no room" else Outcome.REFUSED
            return self._v("egress", Verdict(outcome, detail=str(exc)))
        # A new flow costs a key derivation: limited per peer prefix like the ingress work.
        new_flow = mode is Mode.PDMV2_ENCRYPTED and info.flow not in self.engine.flows
        if new_flow and not self.limiter.allow(info.flow.dst, now_ns):
            return self._v("egress", Verdict(Outcome.RATE_LIMITED, detail="new-flow budget of the prefix used up"))
        try:
            sent = self.engine.outgoing(info.flow, mode, now_ns)
        except UnknownKeyError as exc:
            return self._v("egress", Verdict(Outcome.NO_KEY, detail=str(exc)))
        except KeyWaitError as exc:
            return self._v("egress", Verdict(Outcome.KEY_WAIT, detail=str(exc)))
        except EncodeError as exc:
            return self._v("egress", Verdict(Outcome.MALFORMED, detail=str(exc)))
        if new_flow:
            self.limiter.charge(info.flow.dst, now_ns)
        new[offset : offset + len(sent.option)] = sent.option
        self._record(PacketRecord.of(sent, now_ns))
        return self._v("egress", Verdict(Outcome.INSERTED, bytes(new), sent=sent))

    def ingress(self, packet: bytes, now_ns: int) -> Verdict:
        """Read the option of an arriving packet; the packet is delivered unless policy drops forgeries."""
        try:
            info = parse_packet(packet)
        except DecodeError as exc:
            return self._v("ingress", Verdict(Outcome.MALFORMED, detail=str(exc)))
        option = info.pdm_option
        if option is None:
            return self._v("ingress", Verdict(Outcome.NO_PDM))
        if info.not_for_us is not None:
            return self._v("ingress", Verdict(Outcome.NOT_FOR_US, detail=info.not_for_us))
        drop = self.policy.on_auth_failure == "drop"
        encrypted = len(option) == 2 + OptionLength.PDMV2_ENCRYPTED and option[0] == OPTION_TYPE_PDM
        clear = len(option) in _CLEAR_SIZES  # (any other length is malformed: the engine says why)
        if clear and self._modes.mode_for(info.flow.src) is Mode.PDMV2_ENCRYPTED:
            # Policy expects this peer to encrypt: a clear or v1 option could be anyone's.
            return self._v("ingress", Verdict(Outcome.DOWNGRADE, drop=drop, detail=f"{len(option)}-octet option"))
        # Opening costs key derivations unless the flow is established: limited per source prefix.
        peer = info.flow.src
        costly = encrypted and self._costly(info.flow)
        if costly and not self.limiter.allow(peer, now_ns):
            return self._v("ingress", Verdict(Outcome.RATE_LIMITED, detail="crypto budget of the prefix used up"))
        try:
            got = self.engine.incoming(info.flow, option, now_ns)
        except DecodeError as exc:
            return self._v("ingress", Verdict(Outcome.BAD_OPTION, detail=str(exc)))
        except UnknownKeyError as exc:
            return self._v("ingress", Verdict(Outcome.NO_KEY, detail=str(exc)))
        except CryptoError as exc:  # a forgery, a replay or a stale key: the option is not to be trusted
            if encrypted:
                self.limiter.charge(peer, now_ns)
            outcome = _CRYPTO_OUTCOME.get(type(exc), Outcome.AUTH_FAILED)
            return self._v("ingress", Verdict(outcome, drop=drop, detail=str(exc)))
        if costly:
            self.limiter.charge(peer, now_ns)
        self._record(PacketRecord.of(got, now_ns))
        return self._v("ingress", Verdict(Outcome.READ, received=got))

    def _costly(self, wire: FiveTuple) -> bool:
        """Whether opening an option of this flow may cost key derivations (no established key)."""
        st = self.engine.flows.get(wire.reversed())
        return st is None or st.other_kri is None

    def _v(self, direction: str, verdict: Verdict) -> Verdict:
        self._count(direction, verdict.outcome)
        return verdict

    def _record(self, rec: PacketRecord) -> list[Measurement]:
        found = self.metrics.feed(rec)
        for m in found:
            if m.ambiguous:  # pipelined requests: not a server (or client) delay of one request
                self.counters["metrics_ambiguous"] += 1
                continue
            stats = self.flow_stats.get(m.flow)
            if stats is None:
                while len(self.flow_stats) >= _MAX_FLOW_STATS:
                    self.flow_stats.popitem(last=False)
                stats = self.flow_stats[m.flow] = FlowStats(m.flow)
            else:
                self.flow_stats.move_to_end(m.flow)
            stats.values[m.metric].append(m.value_ns)
            stats.last_ns = rec.t_ns
        return found
