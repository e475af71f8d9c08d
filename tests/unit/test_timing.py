"""RFC 8250 delta encoding: known values and the stated error bound."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pdmv2 import EncodeError
from pdmv2.core.timing import RELATIVE_ERROR_BOUND, decode_delta, encode_delta, encode_delta_ns, ns_to_as


def test_known_values_in_docs_protocol_md() -> None:
    assert encode_delta_ns(1) == (0xEE6B, 14)
    assert encode_delta_ns(1_000_000_000) == (0xDE0B, 44)
    assert encode_delta(0) == (0, 0)
    assert encode_delta(0xFFFF) == (0xFFFF, 0)
    assert encode_delta(0x10000) == (0x8000, 1)


def test_negative_and_huge_deltas_are_refused() -> None:
    with pytest.raises(EncodeError):
        encode_delta(-1)
    with pytest.raises(EncodeError):
        encode_delta(1 << 272)


DAY_NS = 86_400 * 10**9


@given(st.integers(min_value=1, max_value=30 * DAY_NS))
def test_roundtrip_within_bound_from_1ns_to_days(ns: int) -> None:
    d = ns_to_as(ns)
    delta, scale = encode_delta(d)
    assert 0 <= delta < 1 << 16 and 0 <= scale < 256
    back = decode_delta(delta, scale)
    assert back <= d
    assert d - back < 1 << scale if scale else back == d
    assert (d - back) / d < RELATIVE_ERROR_BOUND


@given(st.integers(min_value=0, max_value=1 << 200))
def test_roundtrip_any_attoseconds(d: int) -> None:
    back = decode_delta(*encode_delta(d))
    assert 0 <= d - back <= d * RELATIVE_ERROR_BOUND
