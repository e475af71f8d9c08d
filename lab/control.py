"""The one way into a running lab (an edge): find it, run a command in one of its hosts, bring it up, take it down.

A lab host is a Mininet host: a shell process whose network and mount namespaces are the host's.
``LabHost(name, pid).run(...)`` runs a command in those namespaces (``mnexec -a PID``); nothing else
in the project enters a lab host another way.  The CLI (``python -m lab``), the demo, the lab
daemon and the e2e tests all come through here.

    from lab import control
    control.up("enterprise")                      # returns the state once every agent has its keys
    control.host("sc1").run("ping", "-6", "-c", "1", "2001:db8:2::21")
    control.down()
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from lab import state as labstate
from lab import tcpdump
from lab.topology import Topology, check_root_routes, parse_topology, scaled
from pdmv2.agent.daemon import query
from pdmv2.core.errors import ConfigError
from pdmv2.core.prseq import PRSEQ_PERIOD

__all__ = [
    "ControlError",
    "AlreadyUp",
    "LabHost",
    "load_topology",
    "running_lab",
    "host",
    "up",
    "down",
    "teardown",
    "status_table",
    "progress_lines",
    "kill_namespace_processes",
    "need_root",
    "PDMV2",
]

REPO = Path(__file__).resolve().parent.parent
TOPO_DIR = REPO / "topologies"
PDMV2 = str(Path(sys.executable).parent / "pdmv2")


class ControlError(Exception):
    """A clear, one-line reason for the user."""


class AlreadyUp(ControlError):
    """A ready lab is already running (``up`` does not start a second one)."""


@dataclass(frozen=True)
class LabHost:
    """One host of a running lab: its name and the pid whose namespaces it is."""

    name: str
    """Host name in the topology."""
    pid: int
    """The Mininet host's shell pid (holds its network and mount namespaces)."""

    def argv(self, *argv: str) -> list[str]:
        """The command line that runs ``argv`` inside this host."""
        return ["mnexec", "-a", str(self.pid), *argv]

    def run(
        self, *argv: str, input_text: str | None = None, timeout: float = 60, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the host, wait, capture its output; with check, a failure raises ControlError."""
        proc = subprocess.run(
            self.argv(*argv), input=input_text, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()[-500:]
            raise ControlError(f"{self.name}: {shlex.join(argv)} failed ({proc.returncode}): {detail}")
        return proc

    def popen(self, *argv: str, **kw: Any) -> subprocess.Popen[Any]:
        """Start a command in the host (subprocess.Popen keywords pass through)."""
        return subprocess.Popen(self.argv(*argv), **kw)

    def capture(self, path: Path, dev: str = "eth0", snaplen: int | None = None) -> tcpdump.Capture:
        """tcpdump on ``dev`` into ``path``; returns once it is listening (``stop()`` ends it)."""
        try:
            return tcpdump.start(self.popen, self.name, dev, path, snaplen)
        except tcpdump.CaptureError as exc:
            raise ControlError(str(exc)) from None

    def write(self, path: str, text: str, mode: str = "0600") -> None:
        """Write a file in the host's private directories (made with umask 077, then chmod ``mode``)."""
        self.run(
            "sh",
            "-c",
            'umask 077 && mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
            "write",
            path,
            mode,
            input_text=text,
            check=True,
        )

    def exec(self, *argv: str) -> NoReturn:
        """Replace this process with ``argv`` running in the host (an interactive shell)."""
        os.execvp("mnexec", self.argv(*argv))  # noqa: S606


def need_root() -> None:
    """ControlError unless root."""
    if os.geteuid() != 0:
        raise ControlError("the lab needs root (network namespaces, bridges, ip6tables): run it with sudo")


def _need_mininet() -> None:
    try:
        import mininet.net  # noqa: F401
    except ImportError:
        raise ControlError(
            "mininet is not installed for this Python: run `make deps` "
            "(apt-get install mininet, and the .venv made from /usr/bin/python3)"
        ) from None
    if shutil.which("mnexec") is None:
        raise ControlError("mnexec not found: apt-get install mininet")


def load_topology(name: str, secondaries: int | None = None) -> tuple[Topology, Path]:
    """A topology by name (topologies/NAME.yaml) or path, validated; scaled if asked."""
    path = Path(name)
    if not path.suffix:
        path = TOPO_DIR / f"{name}.yaml"
    try:
        text = path.read_text()
    except OSError:
        known = ", ".join(p.stem for p in sorted(TOPO_DIR.glob("*.yaml")))
        raise ControlError(f"no topology {name!r} (known: {known})") from None
    topo = parse_topology(text, str(path))
    if secondaries:
        topo = scaled(topo, secondaries)
    return topo, path


def root_routes() -> list[str]:
    """``ip -6 route show`` of the root network namespace, one route a line."""
    out = subprocess.run(["ip", "-6", "route", "show"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()


def running_lab() -> dict[str, Any] | None:
    """The state of a lab whose daemon is alive (ready or not), or None."""
    st = labstate.load()
    if st and not st.get("broken") and labstate.alive(st.get("daemon_pid")) and not st.get("stopped"):
        return st
    return None


def host(name: str) -> LabHost:
    """A host of the running lab, by name."""
    st = running_lab()
    if st is None:
        raise ControlError("no lab is up: make lab-up")
    h = st["hosts"].get(name)
    if h is None:
        raise ControlError(f"no host {name!r} in the lab (hosts: {', '.join(st['hosts'])})")
    return LabHost(name, int(h["pid"]))


def up(
    topology: str = "enterprise",
    *,
    secondaries: int | None = None,
    rotate: int = PRSEQ_PERIOD,
    timeout: float | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Start the lab daemon for a topology and wait until it is ready; returns the lab's state.

    Raises AlreadyUp when a ready lab is running, ControlError for anything else that stops it.
    """
    need_root()
    _need_mininet()
    topo, path = load_topology(topology, secondaries)  # validated before anything starts
    current = running_lab()
    if current is not None:
        if not current.get("ready"):
            raise ControlError("a lab is starting, or stuck while starting: `make lab-down`, then try again")
        raise AlreadyUp(f"a lab is already up (topology {current['topology']}); `make lab-down` first")
    check_root_routes(topo, root_routes(), str(path))
    leftovers = labstate.load()
    if leftovers is not None:
        progress("cleaning up what an earlier lab left behind ...")
        teardown(leftovers)
    labstate.LAB_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    argv = [sys.executable, "-m", "lab", "serve", "--topo", str(path), "--rotate", str(rotate)]
    if secondaries:
        argv += ["--secondaries", str(secondaries)]
    with open(labstate.LAB_DIR / "daemon.log", "ab") as log:
        daemon = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO
        )
    shown, pushed = 0, ""
    limit = timeout or 120 + 8 * len(topo.hosts)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        st = labstate.load() or {}
        steps = st.get("steps", [])
        for line in steps[shown:]:
            progress(line)
        shown = len(steps)
        now = "; ".join(progress_lines(st))
        if now != pushed and "running" in now:
            progress(f"          {now}")
        pushed = now
        if st.get("daemon_pid") == daemon.pid and st.get("ready"):
            return st
        if daemon.poll() is not None:
            tail = (labstate.LAB_DIR / "daemon.log").read_text()[-1500:]
            teardown(labstate.load() or {})
            raise ControlError(f"the lab failed to come up: {st.get('error', 'daemon exited')}\n{tail}")
        time.sleep(0.1)
    daemon.send_signal(signal.SIGTERM)
    raise ControlError(f"the lab was not ready within {limit:.0f} s; see {labstate.LAB_DIR}/daemon.log")


def down() -> str:
    """Remove the lab (also what a crashed one left behind); returns a one-line summary."""
    need_root()
    st = labstate.load()
    if st is None:
        return "no lab is up: nothing to do"
    t0 = time.time()
    removed = teardown(st)
    extra = f"; also removed {len(removed) - 1} leftovers" if len(removed) > 1 else ""
    return f"lab {st.get('topology', '?')} down in {time.time() - t0:.1f} s{extra}"


def teardown(st: dict[str, Any]) -> list[str]:
    """Remove everything a (possibly crashed) lab recorded: processes, namespaces' processes, bridges."""
    removed: list[str] = []
    pid = st.get("daemon_pid")
    if labstate.alive(pid) and not st.get("stopped"):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while labstate.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        removed.append(f"daemon {pid}")
        if labstate.alive(pid):
            os.kill(pid, signal.SIGKILL)
    removed += kill_namespace_processes({h.get("netns_inode") for h in st.get("hosts", {}).values()} - {None})
    for br in st.get("bridges", []):
        if subprocess.run(["ip", "link", "del", br], capture_output=True, check=False).returncode == 0:
            removed.append(f"bridge {br}")
        # switch-side veth ends, named after the bridge
        out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name.startswith(f"{br}-"):
                subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
                removed.append(f"link {name}")
    if labstate.LAB_DIR.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(labstate.LAB_DIR)], check=False)
    return removed


def kill_namespace_processes(inodes: set[int]) -> list[str]:
    """SIGKILL every process whose network namespace is one of the lab's (by inode); what was killed."""
    killed: list[str] = []
    if not inodes:
        return killed
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino in inodes:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(f"process {entry.name}")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return killed


def progress_lines(st: dict[str, Any]) -> list[str]:
    """How far the Ansible push of each primary is, from the state file."""
    return [
        f"{name}: ansible {p['status']}, agents and keys on {p['done']}/{p['hosts']} secondaries"
        for name, p in st.get("push", {}).items()
    ]


def agent_stats(h: LabHost) -> dict[str, Any] | None:
    """The agent's stats in a host, or None when it does not answer.

    Asked on its control socket through the host's own mount namespace (/proc/PID/root, where the
    host's private /run/pdmv2 is): what `pdmv2 stats --json` answers, without a process per host.
    """
    try:
        return query(Path(f"/proc/{h.pid}/root/run/pdmv2"), timeout=2.0)
    except ConfigError:
        return None


def status_table(st: dict[str, Any]) -> list[str]:
    """One line per host: name, role, addresses, and for secondaries the agent's state and counters."""
    lines = [f"{'host':<8} {'role':<9} {'addresses':<26} agent"]
    secondaries = [LabHost(name, int(h["pid"])) for name, h in st["hosts"].items() if h["role"] in ("sc", "ss")]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = dict(zip((h.name for h in secondaries), pool.map(agent_stats, secondaries), strict=True))
    for name, h in st["hosts"].items():
        agent = "-"
        if h["role"] in ("sc", "ss"):
            s = answers[name]
            if s is None:
                agent = "DOWN" if st.get("ready") else "not running yet"
            else:
                keyed = "keys loaded" if s.get("keys") else "NO KEYS"
                c = s["counters"]
                agent = (
                    f"up, {keyed}, out {c.get('egress_inserted', 0)}, in {c.get('ingress_read', 0)}, "
                    f"auth failures {c.get('ingress_auth_failed', 0)}"
                )
        lines.append(f"{name:<8} {h['role']:<9} {', '.join(h['addresses']):<26} {agent}")
    return lines
