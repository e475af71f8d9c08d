"""A three-host testbed for the agent: a (secondary client) — m (router, observer) — b (secondary server).

    a eth0 2001:db8:1::10/64 ---- eth0 m eth1 ---- eth0 b 2001:db8:2::20/64
              2001:db8:1::1/64 (m)        2001:db8:2::1/64 (m)

Keys are made directly from a SharedSecret (no registration): b holds SharedSecret + salt for
2001:db8:1::/64, a holds client_secret(2001:db8:1::10).  Everything is removed in close().
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lab import tcpdump
from lab.netns import PAIR_SALT, PAIR_SHARED, ROUTED_A, ROUTED_B, Host, Testbed, start_agent, write_pair_config
from pdmv2.core.prseq import PRSEQ_PERIOD

A, B = ROUTED_A, ROUTED_B
SHARED, SALT = PAIR_SHARED, PAIR_SALT
PY = sys.executable

POLICY = """version: 1
default: off
rotate_after: {rotate}
rules:
  - prefix: fe80::/10
    mode: pdmv2-clear
  - prefix: 2001:db8::/32
    mode: pdmv2-encrypted
"""


class AgentTopo:
    """The testbed plus per-host config/run directories and agent processes."""

    def __init__(self, tmp: Path, rotate: int = PRSEQ_PERIOD) -> None:
        self.tmp = tmp
        self.tb = Testbed("pdme2e")
        try:
            self.a, self.m, self.b = self.tb.routed_pair()
            self.write_config("a", rotate)
            self.write_config("b", rotate)
            self.agents: dict[str, subprocess.Popen[str]] = {}
        except BaseException:
            self.tb.close()
            raise

    def write_config(self, name: str, rotate: int, client_prefix: str = "2001:db8:1::/64") -> None:
        write_pair_config(
            self.tmp / name / "config",
            name,
            POLICY.format(rotate=rotate),
            client_prefix=client_prefix,
            registration_id="e2e",
        )

    def host(self, name: str) -> Host:
        return {"a": self.a, "m": self.m, "b": self.b}[name]

    def run_dir(self, name: str) -> Path:
        return self.tmp / name / "run"

    def start_agent(self, name: str, *extra: str) -> subprocess.Popen[str]:
        log = open(self.tmp / f"agent-{name}.log", "a")
        try:
            proc = start_agent(
                self.tb, self.host(name), self.tmp / name / "config", self.run_dir(name), *extra, log=log
            )
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}: " + (self.tmp / f"agent-{name}.log").read_text()) from None
        self.agents[name] = proc
        return proc

    def stop_agent(self, name: str) -> int:
        proc = self.agents.pop(name)
        proc.terminate()
        return proc.wait(15)

    def stats(self, name: str) -> dict:
        out = subprocess.run(
            [PY, "-m", "pdmv2.cli.main", "stats", "--json", "--run", str(self.run_dir(name))],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return json.loads(out.stdout)

    def capture(
        self, name: str, dev: str, path: Path, snaplen: int | None = tcpdump.HEADERS_SNAPLEN
    ) -> tcpdump.Capture:
        """tcpdump on host/dev to path (headers and option only unless ``snaplen`` is None); returns once capturing."""
        cap = tcpdump.start(self.host(name).popen, name, dev, path, snaplen)
        self.tb.adopt(cap.proc)
        return cap

    def close(self) -> None:
        for proc in self.agents.values():
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.agents.clear()
        self.tb.close()


def env_ok() -> str | None:
    """Why the e2e tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "ip6tables", "tcpdump", "ping"):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode != 0:
            return f"{tool} not installed"
    return None
