"""``python -m lab``: up, down, status, exec, shell (and serve, which `up` starts in the background).

Run as root, with Debian's Python (the project's .venv): Mininet comes from `apt-get install mininet`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab import state as labstate
from lab.topology import Topology, parse_topology, scaled
from pdmv2.core.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
TOPO_DIR = REPO / "topologies"


class LabCliError(Exception):
    """A clear, one-line reason for the user."""


def _need_root() -> None:
    if os.geteuid() != 0:
        raise LabCliError("the lab needs root (network namespaces, bridges, ip6tables): run it with sudo")


def _need_mininet() -> None:
    try:
        import mininet.net  # noqa: F401
    except ImportError:
        raise LabCliError(
            "mininet is not installed for this Python: run `make deps` "
            "(apt-get install mininet, and the .venv made from /usr/bin/python3)"
        ) from None
    if subprocess.run(["which", "mnexec"], capture_output=True, check=False).returncode != 0:
        raise LabCliError("mnexec not found: apt-get install mininet")


def load_topology(name: str, secondaries: int | None) -> tuple[Topology, Path]:
    """A topology by name (topologies/NAME.yaml) or path, validated; scaled if asked."""
    path = Path(name)
    if not path.suffix:
        path = TOPO_DIR / f"{name}.yaml"
    try:
        text = path.read_text()
    except OSError:
        known = ", ".join(p.stem for p in sorted(TOPO_DIR.glob("*.yaml")))
        raise LabCliError(f"no topology {name!r} (known: {known})") from None
    topo = parse_topology(text, str(path))
    if secondaries:
        topo = scaled(topo, secondaries)
    return topo, path


def running_lab() -> dict[str, Any] | None:
    """The state of a lab whose daemon is alive (ready or not), or None."""
    st = labstate.load()
    if st and not st.get("broken") and labstate.alive(st.get("daemon_pid")) and not st.get("stopped"):
        return st
    return None


def host_pid(name: str) -> int:
    """The pid that holds a lab host's namespaces."""
    st = running_lab()
    if st is None:
        raise LabCliError("no lab is up: make lab-up")
    host = st["hosts"].get(name)
    if host is None:
        raise LabCliError(f"no host {name!r} in the lab (hosts: {', '.join(st['hosts'])})")
    return int(host["pid"])


def host_run(name: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command in a lab host and capture its output."""
    return subprocess.run(
        ["mnexec", "-a", str(host_pid(name)), *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def cmd_up(args: argparse.Namespace) -> int:
    _need_root()
    _need_mininet()
    topo, path = load_topology(args.topo, args.secondaries)  # validated before anything starts
    current = running_lab()
    if current is not None:
        if not current.get("ready"):
            raise LabCliError("a lab is starting, or stuck while starting: `make lab-down`, then try again")
        print(f"a lab is already up (topology {current['topology']}); `make lab-down` first to start another")
        return cmd_status(args)
    leftovers = labstate.load()
    if leftovers is not None:
        print("cleaning up what an earlier lab left behind ...")
        teardown(leftovers)
    labstate.LAB_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = open(labstate.LAB_DIR / "daemon.log", "ab")
    argv = [sys.executable, "-m", "lab", "serve", "--topo", str(path), "--rotate", str(args.rotate)]
    if args.secondaries:
        argv += ["--secondaries", str(args.secondaries)]
    t0 = time.time()
    daemon = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO
    )
    log.close()
    shown = 0
    timeout = args.timeout or 120 + 8 * len(topo.hosts)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = labstate.load() or {}
        steps = st.get("steps", [])
        for line in steps[shown:]:
            print(line, flush=True)
        shown = len(steps)
        if st.get("daemon_pid") == daemon.pid and st.get("ready"):
            break
        if daemon.poll() is not None:
            tail = (labstate.LAB_DIR / "daemon.log").read_text()[-1500:]
            teardown(labstate.load() or {})
            raise LabCliError(f"the lab failed to come up: {st.get('error', 'daemon exited')}\n{tail}")
        time.sleep(0.1)
    else:
        daemon.send_signal(signal.SIGTERM)
        raise LabCliError(f"the lab was not ready within {timeout:.0f} s; see {labstate.LAB_DIR}/daemon.log")
    print_table()
    print(
        f"lab {topo.name} up in {time.time() - t0:.1f} s. `make lab-shell HOST=sc1`, `make lab-status`, "
        "`make lab-down`."
    )
    return 0


def print_table() -> None:
    st = running_lab()
    if st is None:
        print("no lab is up")
        return
    print(f"{'host':<8} {'role':<9} {'addresses':<26} agent")
    for name, h in st["hosts"].items():
        agent = "-"
        if h["role"] in ("sc", "ss"):
            out = host_run(name, str(Path(sys.executable).parent / "pdmv2"), "stats", "--json", "--run", "/run/pdmv2")
            if out.returncode == 0:
                s = json.loads(out.stdout)
                keyed = "keys loaded" if s.get("keys") else "NO KEYS"
                c = s["counters"]
                agent = (
                    f"up, {keyed}, out {c.get('egress_inserted', 0)}, in {c.get('ingress_read', 0)}, "
                    f"auth failures {c.get('ingress_auth_failed', 0)}"
                )
            else:
                agent = "DOWN"
        print(f"{name:<8} {h['role']:<9} {', '.join(h['addresses']):<26} {agent}")


def cmd_status(_args: argparse.Namespace) -> int:
    st = running_lab()
    if st is None:
        left = labstate.load()
        print("no lab is up" + (" (an earlier lab left state behind: `make lab-down` cleans it)" if left else ""))
        return 0
    ready = f"ready in {st['up_seconds']:.1f} s" if st.get("ready") else "NOT READY: starting, or stuck"
    print(
        f"lab {st['topology']}: up {time.time() - st['started']:.0f} s ({ready}), "
        f"registration PS key {st['fingerprints'].get('ps', '?')}"
    )
    print_table()
    return 0


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
    inodes = {h.get("netns_inode") for h in st.get("hosts", {}).values()} - {None}
    if inodes:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.stat(entry / "ns" / "net").st_ino in inodes:
                    os.kill(int(entry.name), signal.SIGKILL)
                    removed.append(f"process {entry.name}")
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
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


def cmd_down(_args: argparse.Namespace) -> int:
    _need_root()
    st = labstate.load()
    if st is None:
        print("no lab is up: nothing to do")
        return 0
    t0 = time.time()
    removed = teardown(st)
    extra = f"; also removed {len(removed) - 1} leftovers" if len(removed) > 1 else ""
    print(f"lab {st.get('topology', '?')} down in {time.time() - t0:.1f} s{extra}")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    _need_root()
    if not args.cmd:
        raise LabCliError("usage: python -m lab exec HOST -- COMMAND ...")
    cmd = args.cmd[1:] if args.cmd[0] == "--" else args.cmd
    return subprocess.run(["mnexec", "-a", str(host_pid(args.host)), *cmd], check=False).returncode


def cmd_shell(args: argparse.Namespace) -> int:
    _need_root()
    pid = host_pid(args.host)
    print(f"shell in {args.host} (exit to leave)", flush=True)
    os.execvp("mnexec", ["mnexec", "-a", str(pid), "env", f"PS1={args.host}# ", "bash", "--norc", "-i"])  # noqa: S606
    return 0  # pragma: no cover


def cmd_serve(args: argparse.Namespace) -> int:
    from lab.daemon import serve

    topo, _ = load_topology(args.topo, args.secondaries)
    return serve(topo, args.rotate)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab", description="The PDMv2 Mininet lab (root).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="build a topology, register, push keys, start agents; returns when ready")
    up.add_argument("--topo", default="enterprise", help="topology name in topologies/ or a path (default enterprise)")
    up.add_argument("--secondaries", type=int, help="clone to N secondaries per site (scale runs)")
    up.add_argument("--rotate", type=int, default=32767, help="agents rotate keys every N packets (default 32767)")
    up.add_argument("--timeout", type=float, help="seconds to wait for ready (default 120 + 8 per host)")
    up.set_defaults(func=cmd_up)
    sv = sub.add_parser("serve", help="(internal) the lab daemon that `up` starts")
    sv.add_argument("--topo", required=True)
    sv.add_argument("--secondaries", type=int)
    sv.add_argument("--rotate", type=int, default=32767)
    sv.set_defaults(func=cmd_serve)
    sub.add_parser("down", help="remove everything the lab made (also after a crash)").set_defaults(func=cmd_down)
    sub.add_parser("status", help="hosts, roles, addresses, agent status").set_defaults(func=cmd_status)
    ex = sub.add_parser("exec", help="run a command in a lab host: exec HOST -- CMD ...")
    ex.add_argument("host")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)
    sh = sub.add_parser("shell", help="interactive shell in a lab host")
    sh.add_argument("host")
    sh.set_defaults(func=cmd_shell)
    dm = sub.add_parser("demo", help="the teaching walkthrough on the default topology")
    dm.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    dm.set_defaults(func=lambda a: __import__("lab.demo", fromlist=["run"]).run(a))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (LabCliError, ConfigError) as exc:
        print(f"lab {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lab {args.command}: interrupted", file=sys.stderr)
        return 130
