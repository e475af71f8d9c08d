"""Security benchmark (issue 8 items 6 and 8): memory after floods, and a legitimate flow under a forged flood.

    python bench/security_bench.py [--json bench/security.json] [--results bench/results.md]

Namespaces a (SC, 2001:db8:1::10) — m (router, attacker) — b (SS, 2001:db8:2::20); agents on a
and b, encrypted.  b holds keys for all of 2001:db8::/32, so forged options from 2001:db8:66::/64
cost it key derivations (the expensive case).

* flood: a pings b (300 at 100/s) alone, then during a 20,000 packets/s flood of forged encrypted
  options from m, once with the kernel's per-/64 guard (queue_per_prefix_pps 5000, the default)
  and once without it (0: only the agent's crypto budgets).  Reported: ping RTT p50/p95, the share
  of a's echo requests that b measured, and the agent's counters.
* memory: b's agent RSS before, after two floods of 100,000 new 5-tuples each (plain UDP to an
  echo server on b from 2001:db8:66::/64, answered: every one is a new flow on b's egress), and
  after those flows expired (flow_idle_s 5), with crypto budgets high so that state is created.
A benchmark: it reports, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_md import write_section
from lab.netns import ROUTED_A, ROUTED_B, Host, Testbed, require_root, start_agent, write_pair_config
from pdmv2.agent.daemon import query

A, B = ROUTED_A, ROUTED_B
PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
FLOOD = str(ROOT / "lab" / "flood.py")
APPS = str(ROOT / "lab" / "servers.py")


def say(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def policy(extra: str) -> str:
    return (
        "version: 1\ndefault: off\nrecords: false\nrules:\n  - prefix: 2001:db8::/32\n    mode: pdmv2-encrypted\n"
        + extra
    )


def configure(root: Path, extra: str) -> None:
    for name in ("a", "b"):
        write_pair_config(root / name, name, policy(extra), client_prefix="2001:db8::/32", registration_id="bench")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pings(a: Host, count: int) -> list[float]:
    out = a.cmd("ping", "-6", "-c", str(count), "-i", "0.01", B, check=False, timeout=count * 0.1 + 60).stdout
    return [float(line.split("time=")[1].split()[0]) for line in out.splitlines() if "time=" in line]


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[max(0, round(p * len(v)) - 1)] if v else float("nan")


class Lab:
    def __init__(self, tb: Testbed, root: Path) -> None:
        self.tb, self.root = tb, root
        self.a, self.m, self.b = tb.routed_pair()
        self.agents: dict[str, subprocess.Popen[str]] = {}

    def start(self, run: str, extra: str) -> None:
        configure(self.root / run, extra)
        for name, host in (("a", self.a), ("b", self.b)):
            self.agents[name] = start_agent(
                self.tb, host, self.root / run / name, self.root / run / f"{name}-run", "--datapath", "python"
            )

    def stop(self) -> None:
        for proc in self.agents.values():
            proc.terminate()
            proc.wait(15)
        self.agents.clear()

    def counters(self, run: str) -> dict[str, int]:
        return dict(query(self.root / run / "b-run")["counters"])


def flood_scenario(lab: Lab, run: str, extra: str, with_flood: bool) -> dict[str, Any]:
    lab.start(run, extra)
    try:
        lab.a.cmd("ping", "-6", "-c", "3", "-i", "0.05", B)
        before = lab.counters(run)
        proc = None
        if with_flood:
            proc = lab.tb.spawn(lab.m, PY, FLOOD, B, "--pps", "20000", "--seconds", "6", stdout=subprocess.PIPE)
            time.sleep(0.5)
        rtts = pings(lab.a, 300)
        flood_out = ""
        if proc is not None:
            flood_out, _ = proc.communicate(timeout=60)
        after = lab.counters(run)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        measured = delta.get("ingress_read", 0) / 300  # b reads a's echo requests
        return {
            "flood": flood_out.strip(),
            "pings_answered": len(rtts),
            "rtt_p50_ms": statistics.median(rtts) if rtts else None,
            "rtt_p95_ms": pct(rtts, 0.95),
            "measured_share": measured,
            "counters": {k: v for k, v in delta.items() if v},
        }
    finally:
        lab.stop()


def memory_scenario(lab: Lab, run: str) -> dict[str, Any]:
    extra = "flow_idle_s: 5\ncrypto_per_prefix_per_s: 1000000\ncrypto_total_per_s: 1000000\n"
    lab.start(run, extra)
    echo = lab.tb.spawn(lab.b, PY, APPS, "udp-echo", "5001", "0", stdout=subprocess.PIPE)
    try:
        assert echo.stdout is not None
        echo.stdout.readline()
        pid = lab.agents["b"].pid
        lab.a.cmd("ping", "-6", "-c", "3", "-i", "0.05", B)
        time.sleep(1)
        out: dict[str, Any] = {"rss_before_kib": rss_kib(pid)}
        for i in (1, 2):
            say(f"memory: flood {i} of 100,000 new 5-tuples")
            lab.m.cmd(
                PY,
                FLOOD,
                B,
                "--udp",
                "5001",
                "--distinct",
                "100000",
                "--pps",
                "20000",
                "--seconds",
                "5",
                timeout=120,
            )
            time.sleep(0.5)
            out[f"rss_after_flood{i}_kib"] = rss_kib(pid)
            out[f"flows_after_flood{i}"] = len(query(lab.root / run / "b-run").get("flows", []))
        say("memory: waiting for the flows to expire (flow_idle_s 5)")
        time.sleep(9)
        out["rss_after_expiry_kib"] = rss_kib(pid)
        out["counters"] = {k: v for k, v in lab.counters(run).items() if v}
        return out
    finally:
        echo.terminate()
        echo.wait(10)
        lab.stop()


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "## Security (issue 8): a forged flood and memory (`bench/security_bench.py`)",
        "",
        "Agents on the Python data path; a pings b 300 times at 100/s. Flood: 20,000 forged encrypted",
        "options per second from 2001:db8:66::/64 (b holds keys for it, so each costs derivations).",
        "",
        "| scenario | RTT p50 ms | RTT p95 ms | a's requests measured by b | guarded | rate_limited | auth_failed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in res["flood"].items():
        c = r["counters"]
        lines.append(
            f"| {name} | {r['rtt_p50_ms']:.3f} | {r['rtt_p95_ms']:.3f} | {100 * r['measured_share']:.0f}% | "
            f"{c.get('ingress_guarded', 0)} | {c.get('ingress_rate_limited', 0)} | {c.get('ingress_auth_failed', 0)} |"
        )
    m = res["memory"]
    lines += [
        "",
        "Memory of b's agent (VmRSS), two floods of 100,000 new 5-tuples each (answered UDP from",
        "2001:db8:66::/64; budgets raised so that every one becomes a flow), flow_idle_s 5:",
        "",
        "| before | after flood 1 | after flood 2 | after expiry | returned to within |",
        "|---:|---:|---:|---:|---:|",
        f"| {m['rss_before_kib'] / 1024:.1f} MB | {m['rss_after_flood1_kib'] / 1024:.1f} MB | "
        f"{m['rss_after_flood2_kib'] / 1024:.1f} MB | {m['rss_after_expiry_kib'] / 1024:.1f} MB | "
        f"{(m['rss_after_expiry_kib'] - m['rss_before_kib']) / 1024:+.1f} MB |",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "security.json")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results.md")
    args = ap.parse_args()
    require_root()
    res: dict[str, Any] = {"flood": {}, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    with tempfile.TemporaryDirectory() as tmp, Testbed("pdmsec") as tb:
        lab = Lab(tb, Path(tmp))
        for name, extra, flood in (
            ("no flood", "", False),
            ("flood, guard on (5000/s per /64)", "", True),
            ("flood, guard off (budgets only)", "queue_per_prefix_pps: 0\n", True),
        ):
            say(f"flood: {name}")
            res["flood"][name] = flood_scenario(lab, name.replace(" ", "_").replace(",", ""), extra, flood)
        res["memory"] = memory_scenario(lab, "memory")
    args.json.write_text(json.dumps(res, indent=1))
    text = markdown(res)
    write_section("security", text, args.results)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
