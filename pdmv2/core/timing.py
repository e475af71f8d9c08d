"""RFC 8250 time deltas: attoseconds sent as 16 significant bits and a scale.

RFC 8250 §3.2 (docs/protocol.md §3): a delta ``d`` in attoseconds (1e-18 s) goes on the wire as
``DELTA = d >> scale`` with ``scale = max(0, d.bit_length() - 16)``; the receiver reads
``DELTA << scale``.  1 ns is 0xEE6B with scale 14; 1 s is 0xDE0B with scale 44.

Error bound: the encoding truncates, so for every d ``0 <= d - decode(encode(d)) < 2**scale``,
and when scale > 0, ``d >= 2**(15 + scale)``; the decoded value is therefore never above the
true one and never below it by more than ``d * 2**-15`` (a relative error under 3.06e-5,
about 30 ppm: 30 ns on 1 ms, 2.6 s on a day).  Deltas below 65 536 as (65.5 fs) are exact.
"""

from __future__ import annotations

from .errors import EncodeError

__all__ = [
    "ATTOSECONDS_PER_NS",
    "MAX_SCALE",
    "RELATIVE_ERROR_BOUND",
    "encode_delta",
    "decode_delta",
    "ns_to_as",
    "as_to_ns",
    "encode_delta_ns",
    "decode_delta_ns",
]

ATTOSECONDS_PER_NS = 10**9
MAX_SCALE = 255  # the scale is one octet (RFC 8250 §3.2)
RELATIVE_ERROR_BOUND = 2.0**-15


def encode_delta(attoseconds: int) -> tuple[int, int]:
    """Return ``(DELTA, SCALE)`` for a non-negative delta in attoseconds."""
    if attoseconds < 0:
        raise EncodeError("delta", f"negative delta {attoseconds} as")
    scale = max(0, attoseconds.bit_length() - 16)
    if scale > MAX_SCALE:
        raise EncodeError("delta", "delta too large for an 8-bit scale")
    return attoseconds >> scale, scale


def decode_delta(delta: int, scale: int) -> int:
    """Return the delta in attoseconds that ``DELTA`` and ``SCALE`` stand for."""
    return delta << scale


def ns_to_as(ns: int) -> int:
    """Nanoseconds to attoseconds."""
    return ns * ATTOSECONDS_PER_NS


def as_to_ns(attoseconds: int) -> float:
    """Attoseconds to (fractional) nanoseconds."""
    return attoseconds / ATTOSECONDS_PER_NS


def encode_delta_ns(ns: int) -> tuple[int, int]:
    """``encode_delta`` for a delta in nanoseconds."""
    return encode_delta(ns_to_as(ns))


def decode_delta_ns(delta: int, scale: int) -> float:
    """``decode_delta`` returning nanoseconds."""
    return as_to_ns(decode_delta(delta, scale))
