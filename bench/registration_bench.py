"""Registration benchmark on loopback: time of one registration, and registrations per second.

    python bench/registration_bench.py [--count N] [--concurrency C] [--json FILE]

The PS runs in this process (asyncio, state files fsynced as in production), the PCs too; one
registration is SETUP + KEM over a fresh TCP connection to [::1].  A benchmark: it reports only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_md import write_section
from pdmv2.core.keys import KemId
from pdmv2.core.registration import AllowEntry, AllowList, ClientHandshake, Identity
from pdmv2.regnet import PrimaryServer, ServerConfig, register


async def bench(count: int, concurrency: int) -> dict[str, float]:
    kem = KemId.DHKEM_X25519_HKDF_SHA256
    ps = Identity.generate(kem, ikm=os.urandom(64))
    pcs = [Identity.generate(kem, ikm=os.urandom(64)) for _ in range(concurrency)]
    import ipaddress

    prefix = (ipaddress.IPv6Network("2001:db8:1::/64"),)
    with tempfile.TemporaryDirectory() as tmp:
        allow = AllowList(tuple(AllowEntry(f"pc{i}", p.fingerprint) for i, p in enumerate(pcs)))
        # Every PC here comes from ::1: the per-source limit (half of max_clients by default) would
        # answer the benchmark's own PCs BUSY.
        server = PrimaryServer(
            ServerConfig({kem: ps}, allow, Path(tmp), max_clients=concurrency + 8, max_per_source=concurrency + 8)
        )
        _, port = await server.start("::1", 0)
        task = asyncio.create_task(server.serve_forever())

        def hs(pc: Identity) -> ClientHandshake:
            return ClientHandshake(identities={kem: pc}, pin=ps.fingerprint, prefixes=prefix, random_bytes=os.urandom)

        try:
            single = []
            for _ in range(min(count, 100)):
                t0 = time.perf_counter()
                await register("::1", port, hs(pcs[0]))
                single.append((time.perf_counter() - t0) * 1000)
            done = 0
            t0 = time.perf_counter()

            async def worker(pc: Identity, n: int) -> None:
                nonlocal done
                for _ in range(n):
                    await register("::1", port, hs(pc))
                    done += 1

            per = max(1, count // concurrency)
            await asyncio.gather(*(worker(pc, per) for pc in pcs))
            elapsed = time.perf_counter() - t0
        finally:
            task.cancel()
            await server.close()
    return {
        "one_registration_ms_p50": statistics.median(single),
        "one_registration_ms_min": min(single),
        "registrations_per_s": done / elapsed,
        "concurrency": float(concurrency),
        "registrations": float(done),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Registration benchmark on loopback ([::1]).")
    parser.add_argument("--count", type=int, default=400, help="registrations in the throughput run (default 400)")
    parser.add_argument("--concurrency", type=int, default=16, help="PCs registering at once (default 16)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    print(f"registration benchmark: {args.count} registrations, {args.concurrency} at once, on [::1]", file=sys.stderr)
    res = asyncio.run(bench(args.count, args.concurrency))
    print(f"one registration: p50 {res['one_registration_ms_p50']:.2f} ms, min {res['one_registration_ms_min']:.2f} ms")
    print(f"throughput: {res['registrations_per_s']:.0f} registrations/s ({int(res['registrations'])} done)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"registration": res}, indent=2) + "\n")
    write_section(
        "registration",
        "## Registration on loopback (`bench/registration_bench.py`)\n\n"
        f"One registration: p50 {res['one_registration_ms_p50']:.2f} ms, min {res['one_registration_ms_min']:.2f} ms. "
        f"Throughput: {res['registrations_per_s']:.0f} registrations/s ({int(res['registrations'])} done, "
        f"{args.concurrency} at once).",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
