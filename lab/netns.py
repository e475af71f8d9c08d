"""Network namespaces and veth pairs for tests and benchmarks (an edge: runs `ip`).

Everything made here is named with one unique prefix and removed by ``Testbed.close`` — also
after a failure (use it as a context manager).  Nothing is touched that this object did not
create; nothing is ever routed through the root namespace.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Testbed",
    "Host",
    "require_root",
    "ROUTED_A",
    "ROUTED_B",
    "ROUTER_A",
    "ROUTER_B",
    "PAIR_SHARED",
    "PAIR_SALT",
    "write_agent_config",
    "write_pair_config",
    "start_agent",
]

ROUTED_A, ROUTED_B = "2001:db8:1::10", "2001:db8:2::20"
"""The end hosts of Testbed.routed_pair."""
ROUTER_A, ROUTER_B = "2001:db8:1::1", "2001:db8:2::1"
"""Its router's addresses on each side."""
PAIR_SHARED, PAIR_SALT = bytes(range(1, 33)), bytes(range(64, 96))
"""The one SharedSecret and salt the pair's keys come from (no registration: tests and benchmarks)."""


def require_root() -> None:
    """Raise PermissionError with a clear message when not root."""
    if os.geteuid() != 0:
        raise PermissionError("network namespaces need root: run as root (sudo)")


def _run(args: Sequence[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=check)


@dataclass
class Host:
    """One namespace."""

    name: str
    """Namespace name (unique per testbed)."""
    addrs: list[str] = field(default_factory=list)
    """Global addresses configured (without prefix length)."""

    def cmd(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command in the namespace and wait."""
        return _run(["ip", "netns", "exec", self.name, *args], check=check, timeout=timeout)

    def popen(self, *args: str, **kw: object) -> subprocess.Popen[str]:
        """Start a command in the namespace."""
        kw.setdefault("text", True)
        return subprocess.Popen(["ip", "netns", "exec", self.name, *args], **kw)  # type: ignore[call-overload]

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a shell snippet in the namespace (tests only; never from YAML)."""
        return self.cmd("sh", "-c", script, check=check)

    def link_local(self, dev: str) -> str:
        """The fe80:: address of ``dev``."""
        out = self.cmd("ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link").stdout
        return out.split()[3].split("/")[0]


class Testbed:
    """Namespaces joined by veth pairs, all removed on close."""

    def __init__(self, tag: str = "pdm") -> None:
        require_root()
        self.prefix = f"{tag}{uuid.uuid4().hex[:6]}"
        self.hosts: dict[str, Host] = {}
        self._procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_host(self, name: str) -> Host:
        """A namespace with loopback up, IPv6 forwarding off, DAD off, no IPv4 address anywhere."""
        ns = f"{self.prefix}-{name}"
        _run(["ip", "netns", "add", ns])
        host = Host(ns)
        self.hosts[name] = host
        host.cmd("ip", "link", "set", "lo", "up")
        for key in (
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.default.accept_ra=0",
            "net.ipv6.conf.all.accept_ra=0",
        ):
            host.cmd("sysctl", "-qw", key)
        return host

    def link(self, a: Host, a_dev: str, b: Host, b_dev: str, *, mtu: int = 1500) -> None:
        """A veth pair between two namespaces, both ends up."""
        tmp_a, tmp_b = f"{self.prefix}a{len(self._procs)}{a_dev}"[:15], f"{self.prefix}b{b_dev}"[:15]
        _run(["ip", "link", "add", tmp_a, "mtu", str(mtu), "type", "veth", "peer", "name", tmp_b, "mtu", str(mtu)])
        _run(["ip", "link", "set", tmp_a, "netns", a.name, "name", a_dev])
        _run(["ip", "link", "set", tmp_b, "netns", b.name, "name", b_dev])
        a.cmd("ip", "link", "set", a_dev, "up")
        b.cmd("ip", "link", "set", b_dev, "up")

    @staticmethod
    def address(host: Host, dev: str, cidr: str) -> None:
        """A global address (nodad) on ``dev``."""
        host.cmd("ip", "-6", "addr", "add", cidr, "dev", dev, "nodad")
        host.addrs.append(cidr.split("/")[0])

    @staticmethod
    def wait_link_local(host: Host, dev: str, timeout: float = 5.0) -> str:
        """Poll until ``dev`` has a usable (non-tentative) link-local address."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = host.cmd("ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link").stdout
            if out and "tentative" not in out:
                return out.split()[3].split("/")[0]
            time.sleep(0.05)
        raise TimeoutError(f"{host.name}/{dev}: no link-local address")

    def routed_pair(self) -> tuple[Host, Host, Host]:
        """(a, m, b): a (ROUTED_A in 2001:db8:1::/64) — m (router, eth0 toward a, eth1 toward b)
        — b (ROUTED_B in 2001:db8:2::/64); b reaches all of 2001:db8::/32 through m.  The agent
        tests, the accuracy and the security benchmarks all measure on this one."""
        a, m, b = (self.add_host(n) for n in ("a", "m", "b"))
        self.link(a, "eth0", m, "eth0")
        self.link(m, "eth1", b, "eth0")
        self.address(a, "eth0", f"{ROUTED_A}/64")
        self.address(m, "eth0", f"{ROUTER_A}/64")
        self.address(m, "eth1", f"{ROUTER_B}/64")
        self.address(b, "eth0", f"{ROUTED_B}/64")
        m.cmd("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        a.cmd("ip", "-6", "route", "add", "2001:db8:2::/64", "via", ROUTER_A)
        b.cmd("ip", "-6", "route", "add", "2001:db8::/32", "via", ROUTER_B)
        for host, dev in ((a, "eth0"), (m, "eth0"), (m, "eth1"), (b, "eth0")):
            self.wait_link_local(host, dev)
        return a, m, b

    def spawn(self, host: Host, *args: str, **kw: object) -> subprocess.Popen[str]:
        """Start a process in ``host``; it is killed on close."""
        proc = host.popen(*args, **kw)
        self._procs.append(proc)
        return proc

    def adopt(self, proc: subprocess.Popen[Any]) -> None:
        """Kill ``proc`` on close too (started in one of our hosts another way)."""
        self._procs.append(proc)

    def close(self) -> None:
        """Kill our processes, delete our namespaces (their veths go with them)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for host in self.hosts.values():
            # Processes started another way inside the namespace: by pid, found through the namespace.
            pids = _run(["ip", "netns", "pids", host.name], check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            _run(["ip", "netns", "delete", host.name], check=False)
        self.hosts.clear()


def write_agent_config(
    conf: Path,
    *,
    side: str,
    policy: str,
    client_addr: str,
    client_prefix: str,
    shared_secret: bytes,
    salt: bytes,
    registration_id: str,
) -> Path:
    """An agent's config directory for a test or benchmark: policy.yaml and one key file (0600).

    ``side`` is "client" (client_secret for ``client_addr``) or "server" (SharedSecret + salt for
    ``client_prefix``); keys made directly from a SharedSecret, without a registration.
    """
    from pdmv2 import DEFAULT_SUITE, client_secret
    from pdmv2.core.keyring import dump_client_key_file, dump_server_key_file
    from pdmv2.regstore import write_secret_file

    (conf / "keys").mkdir(parents=True, exist_ok=True)
    (conf / "policy.yaml").write_text(policy)
    if side == "client":
        cs = client_secret(DEFAULT_SUITE, shared_secret=shared_secret, salt=salt, client_addr=client_addr)
        text = dump_client_key_file(
            DEFAULT_SUITE,
            client_addr=client_addr,
            client_secret=cs,
            server_prefixes=[],
            registration_id=registration_id,
            expires=0,
        )
    else:
        text = dump_server_key_file(
            DEFAULT_SUITE,
            shared_secret=shared_secret,
            salt=salt,
            client_prefixes=[client_prefix],
            registration_id=registration_id,
            expires=0,
        )
    write_secret_file(conf / "keys" / f"{side}.json", text)
    return conf


def start_agent(tb: Testbed, host: Host, conf: Path, run: Path, *extra: str, log: Any = None) -> subprocess.Popen[str]:
    """Start `pdmv2 agent` in a namespace; returns once *this* process answers on its control socket.

    (A crashed agent may have left its socket file and chains behind, so the pid is checked.)
    """
    import sys

    from pdmv2.agent.daemon import query
    from pdmv2.core.errors import ConfigError

    out = log if log is not None else subprocess.DEVNULL
    proc = tb.spawn(
        host,
        sys.executable,
        "-m",
        "pdmv2.cli.main",
        "agent",
        "--config",
        str(conf),
        "--run",
        str(run),
        *extra,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if query(run, timeout=0.5).get("pid") == proc.pid:
                return proc
        except ConfigError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"agent in {host.name} exited with {proc.returncode}")
        time.sleep(0.05)
    raise TimeoutError(f"agent in {host.name} not ready within 15 s")


def write_pair_config(
    conf: Path, host: str, policy: str, *, client_prefix: str = "2001:db8:1::/64", registration_id: str = "pair"
) -> Path:
    """write_agent_config for host "a" (the client, ROUTED_A) or "b" (the server, keys for
    ``client_prefix``) of a routed pair, from PAIR_SHARED and PAIR_SALT."""
    return write_agent_config(
        conf,
        side="client" if host == "a" else "server",
        policy=policy,
        client_addr=ROUTED_A,
        client_prefix=client_prefix,
        shared_secret=PAIR_SHARED,
        salt=PAIR_SALT,
        registration_id=registration_id,
    )
