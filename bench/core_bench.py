"""Micro-benchmark of the protocol core: µs per encode+seal, open+decode, new-flow key derivation.

    python bench/core_bench.py [--json bench/core.json] [--packets N]

Each figure is the median of 7 rounds; one round times N operations with perf_counter_ns.
A benchmark, not a test: it reports, it asserts nothing.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_md import write_section
from pdmv2 import DEFAULT_SUITE, FiveTuple, Mode, PdmEngine, Suite, client_secret, session_key
from pdmv2.core.crypto import OptionCipher
from pdmv2.core.keyring import ClientKeyring, ServerKeyring

TARGETS_US = {"encode_seal_us": 4.0, "open_decode_us": 4.0, "new_flow_keys_us": 30.0}
ROUNDS = 7


def _median_us(fn: Callable[[int], None], n: int) -> float:
    rounds = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter_ns()
        fn(n)
        rounds.append((time.perf_counter_ns() - t0) / n / 1000)
    return statistics.median(rounds)


def run(n: int, suite: Suite = DEFAULT_SUITE) -> dict[str, float]:
    shared, salt = bytes(range(suite.nh)), bytes(32)
    c = "2001:db8:1::10"
    cs = client_secret(suite, shared_secret=shared, salt=salt, client_addr=c)
    ck = ClientKeyring(suite, ipaddress.IPv6Address(c).packed, cs)
    sk = ServerKeyring(
        suite, shared_secret=shared, salt=salt, client_prefixes=(ipaddress.IPv6Network("2001:db8:1::/64"),)
    )
    flow = FiveTuple.from_text(c, 40000, "2001:db8:2::20", 443, 6)
    out: dict[str, float] = {}

    sender = PdmEngine(keys=ck, rng=random.Random(1))
    sender.outgoing(flow, Mode.PDMV2_ENCRYPTED, 0)  # flow exists, cipher cached: the per-packet path

    def encode(k: int) -> None:
        for i in range(k):
            sender.outgoing(flow, Mode.PDMV2_ENCRYPTED, i)

    out["encode_seal_us"] = _median_us(encode, n)

    # Distinct options (no replays) from a fresh sender for each round of the receiver.
    def opener(k: int) -> Callable[[int], None]:
        src = PdmEngine(keys=ck, rng=random.Random(2))
        options = [src.outgoing(flow, Mode.PDMV2_ENCRYPTED, i).option for i in range(k)]
        receiver = PdmEngine(keys=sk, rng=random.Random(3))
        receiver.incoming(flow, options[0], 0)

        def run_open(m: int) -> None:
            for i in range(1, m):
                receiver.incoming(flow, options[i], i)

        return run_open

    rounds = []
    for _ in range(ROUNDS):
        fn = opener(n + 1)
        t0 = time.perf_counter_ns()
        fn(n + 1)
        rounds.append((time.perf_counter_ns() - t0) / n / 1000)
    out["open_decode_us"] = statistics.median(rounds)

    def new_flow(k: int) -> None:
        for i in range(k):
            f = FiveTuple(flow.src, 1024 + i, flow.dst, 443, 6)
            OptionCipher(session_key(suite, client_secret=cs, flow=f, kri=0))

    out["new_flow_keys_us"] = _median_us(new_flow, max(1, n // 4))

    def new_client(k: int) -> None:
        for i in range(k):
            addr = flow.src[:14] + i.to_bytes(2, "big")
            sec = client_secret(suite, shared_secret=shared, salt=salt, client_addr=addr)
            OptionCipher(session_key(suite, client_secret=sec, flow=flow, kri=0))

    out["new_client_server_side_us"] = _median_us(new_client, max(1, n // 4))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--packets", type=int, default=20000, help="operations per round (default 20000)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    print(f"core micro-benchmark: {args.packets} operations x {ROUNDS} rounds, median", file=sys.stderr)
    results = run(args.packets)
    print(f"{'figure':<28} {'µs':>8} {'target':>8}")
    for name, value in results.items():
        target = TARGETS_US.get(name)
        mark = "" if target is None else f"≤ {target:g}" + ("" if value <= target else "  MISSED")
        print(f"{name:<28} {value:8.2f} {mark:>8}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"core_us": results, "targets_us": TARGETS_US}, indent=2) + "\n")
    rows = []
    for name, value in results.items():
        target = TARGETS_US.get(name)
        verdict = "-" if target is None else f"≤ {target:g}: " + ("met" if value <= target else "missed")
        rows.append(f"| {name} | {value:.2f} | {verdict} |")
    write_section(
        "core",
        "## Core (pure Python engine): µs per operation, median of rounds (`bench/core_bench.py`)\n\n"
        "| figure | µs | target |\n|---|---:|---|\n" + "\n".join(rows),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
