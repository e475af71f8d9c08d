"""PRSEQ: the non-repeating pseudo-random sequence over 1..2^15-1 (draft -03 §4.4).

Implementation choice: a maximal-length 15-bit Fibonacci LFSR, polynomial x^15 + x^14 + 1,
started from a random non-zero seed.  It visits each of the 32 767 non-zero 15-bit values
exactly once before repeating.  Entropy: 15 bits (the seed); the values are nonces for the
AEAD, so what matters is that they never repeat within one key, not that they are unpredictable.
"""

from __future__ import annotations

from .errors import EncodeError

__all__ = ["Prseq", "PRSEQ_PERIOD"]

PRSEQ_PERIOD = (1 << 15) - 1


class Prseq:
    """Yields the Random Number of each packet; ``exhausted`` after ``limit`` values."""

    __slots__ = ("_state", "_used", "limit")

    def __init__(self, seed: int, limit: int = PRSEQ_PERIOD) -> None:
        if not 1 <= seed <= PRSEQ_PERIOD:
            raise EncodeError("prseq_seed", f"{seed} is not in 1..{PRSEQ_PERIOD}")
        if not 1 <= limit <= PRSEQ_PERIOD:
            raise EncodeError("prseq_limit", f"{limit} is not in 1..{PRSEQ_PERIOD}")
        self._state = seed
        self._used = 0
        self.limit = limit

    @property
    def used(self) -> int:
        """How many values have been taken."""
        return self._used

    @property
    def exhausted(self) -> bool:
        """True once ``limit`` values have been taken: time to rotate the key."""
        return self._used >= self.limit

    def next(self) -> int:
        """The next value; raises EncodeError when exhausted (the caller must rotate first)."""
        if self._used >= self.limit:
            raise EncodeError("prseq", "sequence used up: rotate the key")
        value = self._state
        bit = (value ^ (value >> 1)) & 1  # taps 15 and 14
        self._state = (value >> 1) | (bit << 14)
        self._used += 1
        return value
