"""``pdmv2 agent``, ``pdmv2 stats`` and ``pdmv2 decode``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.flow import DEFAULT_EPOCH_NS

DEFAULT_CONFIG = Path("/etc/pdmv2")
DEFAULT_RUN = Path("/run/pdmv2")


def _default_datapath() -> str:
    """native when the C extension is built, else python."""
    from ..native import AVAILABLE

    return "native" if AVAILABLE else "python"


def _run_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run", type=Path, default=DEFAULT_RUN, help=f"the agent's run directory (default {DEFAULT_RUN})"
    )


def register_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add agent, stats and decode."""
    a = sub.add_parser(
        "agent",
        help="run the PDMv2 agent on this host (root)",
        description="Add and read PDMv2 on this host's IPv6 traffic through NFQUEUE. Runs until "
        "SIGTERM/SIGINT; SIGHUP reloads keys and policy without losing flow state.",
    )
    a.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"config directory with policy.yaml and keys/ (default {DEFAULT_CONFIG})",
    )
    a.add_argument(
        "--run",
        type=Path,
        default=DEFAULT_RUN,
        help=f"run directory: control socket, records.jsonl, pid (default {DEFAULT_RUN})",
    )
    a.add_argument("--policy", type=Path, help="policy file (default CONFIG/policy.yaml)")
    a.add_argument("--keys", type=Path, help="key directory (default CONFIG/keys)")
    a.add_argument(
        "--state",
        type=Path,
        help="directory kept across restarts and reboots: the nonce reservation "
        "(default /var/lib/pdmv2/agent with the default --run, else RUN/state)",
    )
    a.add_argument("--queue", type=int, default=7, help="NFQUEUE number (default 7)")
    a.add_argument(
        "--records-max-mb",
        type=_positive_mib,
        default=64,
        help="largest records.jsonl before it is rotated, MiB (default 64; 0.004 is the least)",
    )
    a.add_argument(
        "--records-files",
        type=int,
        choices=range(1, 101),
        default=2,
        metavar="N",
        help="records files kept, the current one included (1..100, default 2)",
    )
    a.add_argument(
        "--datapath",
        choices=("python", "native"),
        default=os.environ.get("PDMV2_DATAPATH") or _default_datapath(),
        help="per-packet path: native (C: NFQUEUE, option and AEAD compiled; the default when it is built) or "
        "python (the reference engine; the default otherwise); $PDMV2_DATAPATH sets the default. native falls "
        "back to python, with a log line, when the extension is not built",
    )
    a.add_argument(
        "--kernel-timestamps",
        choices=("on", "off"),
        default="on",
        help="on (the default): hold kernel receive timestamping on for the whole machine, so arrivals are "
        "timed by the kernel; off: do not ask for it (ingress then uses the agent's clock unless something "
        "else switched it on; `pdmv2 stats` says which) - for measuring the difference",
    )
    a.add_argument(
        "--tx-calibration",
        choices=("on", "off"),
        default="on",
        help="native path: on (the default) measures the time from the clock read to the device on the "
        "host's own packets and adds it to egress times (needs kernel timestamps on); off: egress times "
        "are the clock read before sealing - for measuring the difference",
    )
    a.add_argument("--check", action="store_true", help="validate policy and keys, print a summary, exit")
    a.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    a.set_defaults(func=_agent)

    s = sub.add_parser(
        "stats",
        help="ask the running agent for counters and per-flow delays",
        description="Per-flow round-trip and server delay (count, min, p50, p95, max) and the "
        "agent's counters, from its control socket.",
    )
    _run_dir_argument(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_stats)

    r = sub.add_parser(
        "reload",
        help="make the running agent re-read its keys and policy",
        description="Like SIGHUP: keys and policy are re-read, flow state is kept. A reload that fails "
        "(a bad file, or no usable key file left when the agent has keys) changes nothing and exits 2.",
    )
    _run_dir_argument(r)
    r.set_defaults(func=_reload)

    d = sub.add_parser(
        "decode",
        help="read PDM/PDMv2 options from a capture file",
        description="Print every PDM/PDMv2 option in a pcap/pcapng capture: opened where the key "
        "files cover the flow, 'encrypted' where not; then the metrics per flow. With --write, "
        "write instead a pcapng copy in which every encrypted option that opens is in the clear "
        "layout, with a packet comment (see docs/wireshark.md).",
    )
    d.add_argument("capture", type=Path, help="pcap or pcapng file (tcpdump -w)")
    d.add_argument("--keys", type=Path, help="directory of key files (client and/or server)")
    d.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    d.add_argument(
        "--write",
        type=Path,
        metavar="OUT.pcapng",
        help="write a decrypted copy of the capture (needs --keys) and print a summary",
    )
    d.add_argument(
        "--key-epoch-s",
        type=int,
        default=DEFAULT_EPOCH_NS // 1_000_000_000,
        metavar="S",
        help="the agents' key_epoch_s policy setting (default %(default)s)",
    )
    d.set_defaults(func=_decode)


def _positive_mib(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of MiB") from None
    if not 4096 / 2**20 <= value <= 2**20:
        raise argparse.ArgumentTypeError(f"{text!r}: must be between 0.004 and 1048576 MiB")
    return value


def _use_system_malloc(check: bool) -> None:
    """Run the agent on the C library's allocator with one arena (re-executing itself once, same pid).

    Python's own small-object allocator keeps a 1 MiB arena while one object in it lives, and glibc
    gives each thread an arena of its own, so the memory a flood of flows took stayed with the
    process after those flows expired.  With glibc's allocator and a single arena, the agent's
    housekeeping (malloc_trim after a large expiry) gives it back: after two floods of 100,000
    flows each, RSS came back to +15 to +16 MB of its level before, instead of +32 MB
    (bench/security_bench.py).
    """
    if os.environ.get("PYTHONMALLOC") is None and not check:  # (--check is not long-lived)
        os.environ["PYTHONMALLOC"] = "malloc"
        os.environ.setdefault("MALLOC_ARENA_MAX", "1")
        os.execv(sys.executable, sys.orig_argv)  # noqa: S606 (the same command line, no shell)


def _agent(args: argparse.Namespace) -> int:
    from ..agent.daemon import Agent, AgentPaths, take_netns_lock

    _use_system_malloc(args.check)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if args.datapath not in ("python", "native"):
        raise ConfigError("PDMV2_DATAPATH", "datapath", f"{args.datapath!r} is not python or native")
    paths = AgentPaths(args.config, args.run, args.policy, args.keys, args.state)
    if args.check:
        agent = Agent(paths, queue=args.queue, install_rules=False)
        print(f"policy {paths.policy}: {len(agent.policy.rules)} rule(s), default {agent.policy.default.value}")
        for rule in agent.policy.rules:
            print(f"  {rule.prefix} -> {rule.mode.value}")
        print(f"keys {paths.keys}: {agent.engine.keys!r}")
        return 0
    if os.geteuid() != 0:
        raise ConfigError("pdmv2 agent", "user", "must run as root (ip6tables and NFQUEUE)")
    take_netns_lock()  # before the agent reads or creates any state: a refused start changes nothing
    agent = Agent(
        paths,
        queue=args.queue,
        records_max_bytes=max(4096, int(args.records_max_mb * 2**20)),
        records_files=args.records_files,
        datapath=args.datapath,
        kernel_timestamps=args.kernel_timestamps == "on",
        tx_calibration=args.tx_calibration == "on",
    )
    return agent.run(ready=lambda: print(f"agent ready (queue {args.queue}, run dir {paths.run_dir})", flush=True))


def _ns(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.3f}"


def _stats(args: argparse.Namespace) -> int:
    from ..agent.daemon import query

    reply = query(args.run)
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    print(
        f"agent pid {reply['pid']}, up {reply['uptime_s']:.0f} s, {reply['flows_tracked']} flow(s) tracked, "
        f"global pointer link-local {reply['global_pointer']['link_local']} global {reply['global_pointer']['global']}"
    )
    counters = reply["counters"]
    if counters:
        print("counters: " + ", ".join(f"{k} {v}" for k, v in sorted(counters.items())))
    records = reply.get("records")
    if records:
        print(
            f"records: {records['written']} written, {records['dropped']} dropped, {records['rotations']} rotation(s)"
        )
    header = f"{'flow':<58} {'metric':<13} {'count':>6} {'min ms':>9} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}"
    print(header)
    for f in reply["flows"]:
        name = f"[{f['src']}]:{f['sport']} > [{f['dst']}]:{f['dport']} p{f['proto']}"
        for metric in ("rtt", "server_delay", "client_delay"):
            m: dict[str, Any] | None = f.get(metric)
            if m:
                print(
                    f"{name:<58} {metric:<13} {m['count']:>6} {_ns(m['min_ns']):>9} {_ns(m['p50_ns']):>9} "
                    f"{_ns(m['p95_ns']):>9} {_ns(m['max_ns']):>9}"
                )
                name = ""
    return 0


def _reload(args: argparse.Namespace) -> int:
    from ..agent.daemon import query

    reply = query(args.run, "reload")
    if "error" in reply:
        raise ConfigError(str(args.run), "reload", str(reply["error"]))
    print("reloaded")
    return 0


def _decode(args: argparse.Namespace) -> int:
    from ..capture import decode_capture, render, write_decrypted

    if args.write is not None:
        if args.keys is None:
            raise ConfigError("pdmv2 decode", "--keys", "--write needs the key files that open the options")
        print(write_decrypted(args.capture, args.keys, args.write, epoch_ns=args.key_epoch_s * 1_000_000_000))
        return 0
    result = decode_capture(args.capture, args.keys, epoch_ns=args.key_epoch_s * 1_000_000_000)
    sys.stdout.write(render(result, args.format))
    return 0
