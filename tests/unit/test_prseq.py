"""PRSEQ: a full period over 1..2^15-1 without repeats, from any seed."""

from __future__ import annotations

import pytest

from pdmv2 import EncodeError, Prseq
from pdmv2.core.prseq import PRSEQ_PERIOD


@pytest.mark.parametrize("seed", [1, 2, 12345, PRSEQ_PERIOD])
def test_full_period_visits_every_value_once(seed: int) -> None:
    seq = Prseq(seed)
    values = [seq.next() for _ in range(PRSEQ_PERIOD)]
    assert values[0] == seed
    assert sorted(values) == list(range(1, PRSEQ_PERIOD + 1))
    assert seq.exhausted
    with pytest.raises(EncodeError):
        seq.next()


def test_limit_ends_early() -> None:
    seq = Prseq(77, limit=3)
    assert len({seq.next() for _ in range(3)}) == 3
    assert seq.exhausted and seq.used == 3


@pytest.mark.parametrize(("seed", "limit"), [(0, 10), (1 << 15, 10), (5, 0), (5, 1 << 15)])
def test_bad_parameters(seed: int, limit: int) -> None:
    with pytest.raises(EncodeError):
        Prseq(seed, limit)
