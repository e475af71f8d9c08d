"""Micro-benchmark of the native data path's AEAD: seal and open of an established flow's option.

Target (issue 9): <= 1 us each.  Measured inside C (``Cipher.bench``: no Python in the loop) and
through one Python call per option, for the three AEADs, next to the Python engine's
OptionCipher (the `cryptography` package).  Run: .venv/bin/python bench/native_bench.py [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_md import write_section
from pdmv2.core.crypto import OptionCipher
from pdmv2.core.keys import AeadId, SessionKey, Suite
from pdmv2.native import AVAILABLE, UNAVAILABLE_REASON, NativeCipher

HEADER = bytes((0x0F, 0x22, 0x20, 0x00, 0x12, 0x35))


def per_call_ns(fn: object, n: int) -> float:
    """Best of three: mean ns of one Python-level call."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter_ns()
        for i in range(n):
            fn(i & 0x7FFF)  # type: ignore[operator]
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def seal_one(cipher: NativeCipher | OptionCipher, plain: bytes, rn: int) -> bytes:
    return cipher.seal_packed(HEADER, rn, plain)


def open_one(cipher: NativeCipher, sealed: bytes, _rn: int) -> bytes:
    return cipher.open_packed(HEADER, 0x91A, sealed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=300_000, help="operations per measurement (default 300000)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    if not AVAILABLE:
        print(f"native data path not built: {UNAVAILABLE_REASON}", file=sys.stderr)
        return 2
    out = {}
    plain = bytes(range(14))
    print(f"{'AEAD':<20} {'C seal':>8} {'C open':>8} {'py->C seal':>11} {'py->C open':>11} {'cryptography':>13}  (ns)")
    for aead in AeadId:
        suite = Suite(aead=aead)
        key = SessionKey(suite, 7, os.urandom(suite.nk), os.urandom(suite.nn))
        nat, ref = NativeCipher(key), OptionCipher(key)
        sealed = nat.seal_packed(HEADER, 0x91A, plain)[6:]
        assert ref.open_packed(HEADER, 0x91A, sealed) == plain  # same bytes as the reference
        seal_c, open_c = min(nat.bench(args.n) for _ in range(3))
        seal_py = per_call_ns(partial(seal_one, nat, plain), args.n // 3)
        open_py = per_call_ns(partial(open_one, nat, sealed), args.n // 3)
        ref_seal = per_call_ns(partial(seal_one, ref, plain), args.n // 3)
        out[aead.name] = {
            "seal_ns_c": seal_c,
            "open_ns_c": open_c,
            "seal_ns_python_call": seal_py,
            "open_ns_python_call": open_py,
            "seal_ns_cryptography": ref_seal,
        }
        print(f"{aead.name:<20} {seal_c:>8.0f} {open_c:>8.0f} {seal_py:>11.0f} {open_py:>11.0f} {ref_seal:>13.0f}")
    ok = all(v["seal_ns_c"] <= 1000 and v["open_ns_c"] <= 1000 for v in out.values())
    print(f"target seal/open <= 1 us in C: {'met' if ok else 'missed'}")
    rows = [
        f"| {name} | {v['seal_ns_c']:.0f} | {v['open_ns_c']:.0f} | {v['seal_ns_python_call']:.0f} | "
        f"{v['open_ns_python_call']:.0f} | {v['seal_ns_cryptography']:.0f} |"
        for name, v in out.items()
    ]
    write_section(
        "native",
        "## Native AEAD (issue 9): seal and open of an established flow's option (`bench/native_bench.py`)\n\n"
        "| AEAD | C seal ns | C open ns | seal via one Python call | open via one Python call "
        "| seal, `cryptography` |\n|---|---:|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n\n"
        f"Target seal/open <= 1 µs in C: {'met' if ok else 'missed'}.",
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
