"""The wall-minus-monotonic offset the agent converts kernel timestamps with."""

from __future__ import annotations

import time

import pytest

from pdmv2.agent import daemon


def test_the_tightest_bracket_wins_over_a_preempted_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # True offset 1_000_000_000.  Try 1: preempted 3 ms between the monotonic and the wall read.
    mono = iter(
        [100, 3_000_200, 5_000_000, 5_000_100, 6_000_000, 6_000_400, 7_000_000, 7_000_300, 8_000_000, 8_000_200]
    )
    wall = iter([1_003_000_100, 1_005_000_050, 1_006_000_200, 1_007_000_150, 1_008_000_100])
    monkeypatch.setattr(time, "monotonic_ns", lambda: next(mono))
    monkeypatch.setattr(time, "time_ns", lambda: next(wall))
    assert daemon.wall_offset_ns() == 1_000_000_000  # from try 2 (100 ns bracket), not try 1


def test_it_matches_the_clocks_to_a_few_microseconds() -> None:
    off = daemon.wall_offset_ns()
    assert abs((time.time_ns() - time.monotonic_ns()) - off) < 1_000_000
