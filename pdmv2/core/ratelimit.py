"""Budgets for the expensive work an unauthenticated packet can cause (pure: ``now`` is an argument).

Opening an option of a flow with no established key costs key derivations (up to ``max_tries``
per packet), and so does a new encrypted flow on egress.  A flood of forged options could spend
the agent's whole CPU on that and starve every legitimate flow.  So that work is metered per peer
/64 (token buckets, refilled at ``per_prefix_per_s`` up to twice that) and in total
(``total_per_s``); above a budget the packet passes unmeasured and is counted (fail-open).
Established flows with a key in use never spend from a budget.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["PrefixLimiter", "DEFAULT_PER_PREFIX_PER_S", "DEFAULT_TOTAL_PER_S"]

DEFAULT_PER_PREFIX_PER_S = 200
DEFAULT_TOTAL_PER_S = 2000
_MAX_PREFIXES = 4096  # buckets kept; a prefix forgotten comes back with a full bucket (the total still holds)
_NS = 1_000_000_000


class _Bucket:
    __slots__ = ("at_ns", "tokens")

    def __init__(self, tokens: float, at_ns: int) -> None:
        self.tokens = tokens
        self.at_ns = at_ns

    def refill(self, rate: float, burst: float, now_ns: int) -> None:
        if now_ns > self.at_ns:
            self.tokens = min(burst, self.tokens + (now_ns - self.at_ns) * rate / _NS)
            self.at_ns = now_ns


class PrefixLimiter:
    """Token buckets per peer /64 and in total."""

    def __init__(
        self, per_prefix_per_s: int = DEFAULT_PER_PREFIX_PER_S, total_per_s: int = DEFAULT_TOTAL_PER_S
    ) -> None:
        self.per_prefix = float(per_prefix_per_s)
        self.total = float(total_per_s)
        self._buckets: OrderedDict[bytes, _Bucket] = OrderedDict()
        self._all = _Bucket(2 * self.total, 0)

    def _bucket(self, addr: bytes, now_ns: int) -> _Bucket:
        key = addr[:8]
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(2 * self.per_prefix, now_ns)
            while len(self._buckets) > _MAX_PREFIXES:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            b.refill(self.per_prefix, 2 * self.per_prefix, now_ns)
        return b

    def allow(self, addr: bytes, now_ns: int) -> bool:
        """Whether the peer ``addr`` (16 octets) may cause expensive work now."""
        self._all.refill(self.total, 2 * self.total, now_ns)
        return self._all.tokens >= 1 and self._bucket(addr, now_ns).tokens >= 1

    def charge(self, addr: bytes, now_ns: int) -> None:
        """Spend one unit of the peer's budget (after the work was done)."""
        self._all.tokens -= 1
        self._bucket(addr, now_ns).tokens -= 1

    def expire(self, now_ns: int) -> None:
        """Drop buckets that have refilled completely (they hold nothing a new one would not)."""
        full_after = 2 * _NS
        for key in [k for k, b in self._buckets.items() if now_ns - b.at_ns > full_after]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
