"""tcpdump captures that say when they are incomplete (an edge: runs tcpdump).

In ``--immediate-mode`` libpcap uses TPACKET_V2, whose ring holds fixed-size frames sized from the
snapshot length (large with the default snaplen on an interface with offloads), so the ring holds
far fewer packets than its size suggests.  A burst while tcpdump is descheduled on a loaded machine
is then dropped by the kernel, and a test reading sequence numbers from the capture sees a gap that
the network never had (seen once in CI: 36 ACKs in a row, all of them read by the peer's agent).
So captures here use a 32 MiB ring, a snaplen that keeps the
headers (and the PDM option) when the payload is not needed, and ``stop`` reports tcpdump's own
"dropped by kernel" count so a caller can tell a lossy capture from a lossy network.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HEADERS_SNAPLEN", "Capture", "CaptureError", "start"]

HEADERS_SNAPLEN = 512
"""Enough for IPv6, its extension headers (the PDM option) and the transport header."""
RING_KIB = 32768

_DROPPED = re.compile(r"(\d+) packets? dropped by kernel")


class CaptureError(Exception):
    """tcpdump did not start, or a capture that had to be complete dropped packets."""


@dataclass
class Capture:
    """A running tcpdump; ``stop()`` ends it and returns how many packets the kernel dropped."""

    proc: subprocess.Popen[str]
    where: str

    def stop(self, settle_s: float = 0.2, *, complete: bool = False) -> int:
        """End tcpdump; with ``complete``, a capture that dropped packets raises CaptureError
        (a test's truth must be whole: a dropped packet looks like a gap in the network)."""
        time.sleep(settle_s)  # the last packets reach the ring
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
        m = _DROPPED.search(err or "")
        dropped = int(m.group(1)) if m else 0
        if complete and dropped:
            raise CaptureError(f"{self.where}: tcpdump dropped {dropped} packets (the capture, not the network)")
        return dropped

    def terminate(self) -> None:
        """Stop without reading the counts (cleanup paths)."""
        self.stop(settle_s=0)


def argv(dev: str, path: Path, snaplen: int | None = None) -> list[str]:
    """tcpdump's command line: ``snaplen=None`` keeps whole packets."""
    snap = ["-s", str(snaplen)] if snaplen else []
    return ["tcpdump", "-i", dev, "-B", str(RING_KIB), *snap, "-U", "-n", "--immediate-mode", "-w", str(path)]


def start(
    popen: Callable[..., subprocess.Popen[Any]], where: str, dev: str, path: Path, snaplen: int | None = None
) -> Capture:
    """Start tcpdump through ``popen`` (a host's); returns once it is listening."""
    proc = popen(*argv(dev, path, snaplen), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "listening on ..." once the capture is open
    if "listening" not in line:
        proc.kill()
        proc.wait(10)
        raise CaptureError(f"{where}: tcpdump on {dev} did not start: {line.strip()}")
    return Capture(proc, f"{where}/{dev}")
