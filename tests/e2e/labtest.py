"""What the Mininet lab's e2e tests share: the `lab` command, bringing a lab up and down around a
module, and reading a host's agent, keys and traffic (test_lab, test_two_orgs, test_web,
test_wireshark)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lab import control, tcpdump
from lab import state as labstate
from pdmv2.regstore import write_secret_file

PY = sys.executable
PDMV2 = control.PDMV2
REPO = Path(__file__).resolve().parent.parent.parent


def lab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m lab ARGS` from the repository, output captured."""
    return subprocess.run(
        [PY, "-m", "lab", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )


def skip_unless_a_lab_can_start() -> None:
    """Skip (not fail) without root or Mininet, or when a lab of someone else's is up."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    try:
        import mininet.net  # noqa: F401
    except ImportError:
        pytest.skip("mininet not installed (make deps)")
    if labstate.load() is not None:
        pytest.skip("a lab is already up on this machine; not touching it")


@contextmanager
def lab_up(*up_args: str, timeout: float = 300) -> Iterator[dict]:
    """`lab up UP_ARGS`, the lab's state while it is up, then `lab down` (also after a failure)."""
    try:
        run = lab("up", *up_args, timeout=timeout)
        assert run.returncode == 0, run.stdout + run.stderr
        yield labstate.load() or {}
    finally:
        down = lab("down")
        assert down.returncode == 0, down.stderr


def in_host(host: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return control.host(host).run(*argv, timeout=timeout)


def stats(host: str) -> dict:
    """The host's agent, through the `pdmv2 stats` command (the CLI is under test too)."""
    return json.loads(in_host(host, PDMV2, "stats", "--json", "--run", "/run/pdmv2").stdout)


def keys_of(host: str, tmp: Path) -> Path:
    """A copy (0600) of the key files the roles pushed to ``host``."""
    d = tmp / f"keys-{host}"
    d.mkdir(mode=0o700)
    for name in in_host(host, "ls", "/etc/pdmv2/keys").stdout.split():
        write_secret_file(d / name, in_host(host, "cat", f"/etc/pdmv2/keys/{name}").stdout)
    return d


def capture(host: str, path: Path, dev: str = "eth0") -> tcpdump.Capture:
    """tcpdump in ``host`` (headers and option only), listening when it returns."""
    return control.host(host).capture(path, dev, snaplen=tcpdump.HEADERS_SNAPLEN)
