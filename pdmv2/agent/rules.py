"""The agent's ip6tables chains: created at start, removed at exit, cleaned up after a crash.

Everything lives in chains of our own (PDMV2_OUT, PDMV2_IN in filter; PDMV2_MSS in mangle) with
one jump each from the built-in chains; removal deletes exactly those jumps and chains.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from ..core.errors import ConfigError

__all__ = ["rule_specs", "guard_spec", "guarded_packets", "install", "remove", "OUT", "IN", "MSS", "mss_for"]

OUT, IN, MSS = "PDMV2_OUT", "PDMV2_IN", "PDMV2_MSS"
_JUMPS = [("filter", "OUTPUT", OUT), ("filter", "INPUT", IN), ("mangle", "OUTPUT", MSS), ("mangle", "INPUT", MSS)]


def mss_for(mtu: int, option_size: int) -> int:
    """TCP MSS that leaves room for the Destination Options header (padded to 8) in ``mtu``."""
    doh = -(-(2 + option_size) // 8) * 8 if option_size else 0
    return mtu - 40 - 20 - doh


def guard_spec(per_prefix_pps: int) -> list[str]:
    """The PDMV2_IN rule that lets packets beyond ``per_prefix_pps`` from one /64 pass unqueued.

    A flood from one prefix then costs the agent nothing beyond that rate: those packets are
    delivered unmeasured, counted by the rule (docs/agent.md, Floods).
    """
    return [
        "-m",
        "hashlimit",
        "--hashlimit-above",
        f"{per_prefix_pps}/sec",
        "--hashlimit-burst",
        str(min(2 * per_prefix_pps, 10_000)),
        "--hashlimit-mode",
        "srcip",
        "--hashlimit-srcmask",
        "64",
        "--hashlimit-name",
        "pdmv2_in",
        "-j",
        "RETURN",
    ]


def rule_specs(queue: int, mss: int, per_prefix_pps: int = 0, *, all_egress: bool = True) -> list[list[str]]:
    """The ip6tables argument lists that build our chains (without the leading 'ip6tables').

    ``all_egress``: every packet the host sends (but loopback) passes the agent, which lets the
    ones it does not measure out at once and counts them in the Global Pointer (draft §6.2);
    otherwise only TCP, UDP and ICMPv6 echo do (policy ``global_pointer: measured-packets``).
    """
    q = ["-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]
    opts = ["-m", "ipv6header", "--header", "ipv6-opts", "--soft"]
    guard = [["-t", "filter", "-A", IN, *opts, *guard_spec(per_prefix_pps)]] if per_prefix_pps else []
    out = (
        [["-t", "filter", "-A", OUT, *q]]
        if all_egress
        else [
            ["-t", "filter", "-A", OUT, "-p", "tcp", *q],
            ["-t", "filter", "-A", OUT, "-p", "udp", *q],
            # ICMPv6: echo only; neighbour discovery, MLD and errors are not queued.
            ["-t", "filter", "-A", OUT, "-p", "ipv6-icmp", "--icmpv6-type", "echo-request", *q],
            ["-t", "filter", "-A", OUT, "-p", "ipv6-icmp", "--icmpv6-type", "echo-reply", *q],
        ]
    )
    specs = [
        ["-t", "filter", "-N", OUT],
        ["-t", "filter", "-A", OUT, "-o", "lo", "-j", "RETURN"],
        *out,
        ["-t", "filter", "-N", IN],
        ["-t", "filter", "-A", IN, "-i", "lo", "-j", "RETURN"],
        *guard,
        ["-t", "filter", "-A", IN, *opts, *q],
        ["-t", "mangle", "-N", MSS],
        [
            "-t",
            "mangle",
            "-A",
            MSS,
            "-p",
            "tcp",
            "--tcp-flags",
            "SYN,RST",
            "SYN",
            "-j",
            "TCPMSS",
            "--set-mss",
            str(mss),
        ],
    ]
    specs += [["-t", table, "-I", chain, "1", "-j", target] for table, chain, target in _JUMPS]
    return specs


def _ip6tables(args: Sequence[str], check: bool) -> subprocess.CompletedProcess[str]:
    try:
        run = subprocess.run(["ip6tables", "-w", "5", *args], capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        raise ConfigError("ip6tables", "command", "not installed (apt-get install iptables)") from None
    if check and run.returncode != 0:
        raise ConfigError("ip6tables", " ".join(args), run.stderr.strip() or f"exit {run.returncode}")
    return run


def remove() -> int:
    """Delete our jumps and chains if present (also those a crashed agent left); returns how many items."""
    removed = 0
    for table, chain, target in _JUMPS:
        while _ip6tables(["-t", table, "-D", chain, "-j", target], check=False).returncode == 0:
            removed += 1
    for table, chain in (("filter", OUT), ("filter", IN), ("mangle", MSS)):
        if _ip6tables(["-t", table, "-F", chain], check=False).returncode == 0:
            _ip6tables(["-t", table, "-X", chain], check=False)
            removed += 1
    return removed


def guarded_packets() -> int:
    """Packets the per-/64 guard let pass unqueued so far (0 without the guard)."""
    run = _ip6tables(["-t", "filter", "-L", IN, "-n", "-v", "-x"], check=False)
    for line in run.stdout.splitlines():
        if "limit: above" in line and "RETURN" in line:
            return int(line.split()[0])
    return 0


def install(queue: int, mss: int, per_prefix_pps: int = 0, *, all_egress: bool = True) -> None:
    """Remove leftovers, then build our chains; on failure nothing of ours stays behind."""
    remove()
    try:
        for spec in rule_specs(queue, mss, per_prefix_pps, all_egress=all_egress):
            _ip6tables(spec, check=True)
    except ConfigError:
        remove()
        raise
