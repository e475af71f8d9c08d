"""The kernel's count of IPv6 packets a host sent, per source-address type: the truth for the Global Pointer.

Counting rules in the raw table's OUTPUT chain (which runs before the agent's filter chain) count
the packets by source type; /proc/net/snmp6's Ip6OutRequests is the kernel's own total.  ``run``
runs a command in the host and returns its stdout.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Run = Callable[..., str]

_MATCH = {
    "link_local": ["-s", "fe80::/10", "!", "-o", "lo"],
    "global": ["!", "-s", "fe80::/10", "!", "-o", "lo"],
    "loopback": ["-o", "lo"],
}


def install(run: Run) -> None:
    """Add the counting chains (they go with the namespace)."""
    for tag, match in _MATCH.items():
        chain = "PDMV2_TEST_" + tag.upper()
        run("ip6tables", "-t", "raw", "-N", chain)
        run("ip6tables", "-t", "raw", "-A", chain, "-j", "RETURN")
        run("ip6tables", "-t", "raw", "-A", "OUTPUT", *match, "-j", chain)


def counts(run: Run) -> tuple[int, dict[str, int]]:
    """(Ip6OutRequests, packets sent per source type)."""
    snmp = dict(line.split() for line in run("cat", "/proc/net/snmp6").splitlines() if line.strip())
    by_type = {}
    for tag in _MATCH:
        out = run("ip6tables", "-t", "raw", "-L", "PDMV2_TEST_" + tag.upper(), "-n", "-v", "-x")
        by_type[tag] = int(out.splitlines()[2].split()[0])
    return int(snmp["Ip6OutRequests"]), by_type


def snapshot(run: Run, global_pointer: Callable[[], dict[str, int]]) -> tuple[int, dict[str, int], dict[str, int]]:
    """The counts and the agent's Global Pointers, read with no packet sent in between."""
    for _ in range(20):
        before = counts(run)
        gp = global_pointer()
        if counts(run) == before:
            return before[0], before[1], gp
        time.sleep(0.2)
    raise AssertionError("the host kept sending while the counters were read")


def check(
    before: tuple[int, dict[str, int], dict[str, int]], after: tuple[int, dict[str, int], dict[str, int]]
) -> dict[str, int]:
    """Assert the pointers moved exactly as the kernel counted; returns the packets sent per type."""
    sent = {k: after[1][k] - before[1][k] for k in after[1]}
    moved = {k: after[2][k] - before[2][k] for k in after[2]}
    assert moved == {"link_local": sent["link_local"], "global": sent["global"]}, (moved, sent)
    assert after[0] - before[0] == sum(sent.values())  # the kernel's own total agrees
    return sent
