"""``python -m lab``: up, down, status, exec, shell, demo (and serve, which `up` starts in the background).

Argument parsing and printing only: every action is a function of lab.control (or lab.demo).
Run as root, with Debian's Python (the project's .venv): Mininet comes from `apt-get install mininet`.
"""

from __future__ import annotations

import argparse
import sys
import time

from lab import control, demo
from lab import state as labstate
from pdmv2.core.errors import ConfigError
from pdmv2.core.prseq import PRSEQ_PERIOD


def cmd_up(args: argparse.Namespace) -> int:
    t0 = time.time()
    try:
        st = control.up(args.topo, secondaries=args.secondaries, rotate=args.rotate, timeout=args.timeout)
    except control.AlreadyUp as exc:
        print(exc)
        return cmd_status(args)
    for line in control.status_table(st):
        print(line)
    print(
        f"lab {st['topology']} up in {time.time() - t0:.1f} s. `make lab-shell HOST=sc1`, `make lab-status`, "
        "`make lab-down`."
    )
    return 0


def cmd_status(_args: argparse.Namespace) -> int:
    st = control.running_lab()
    if st is None:
        left = labstate.load()
        print("no lab is up" + (" (an earlier lab left state behind: `make lab-down` cleans it)" if left else ""))
        return 0
    ready = f"ready in {st['up_seconds']:.1f} s" if st.get("ready") else "NOT READY: starting, or stuck"
    fps = ", ".join(f"{k} {v}" for k, v in st.get("fingerprints", {}).items() if k in st["hosts"]) or "?"
    print(f"lab {st['topology']}: up {time.time() - st['started']:.0f} s ({ready}); primary keys: {fps}")
    if not st.get("ready"):
        for line in st.get("steps", [])[-5:]:
            print(f"  {line}")
    for line in control.progress_lines(st):
        print(f"  {line}")
    for line in control.status_table(st):
        print(line)
    return 0


def cmd_down(_args: argparse.Namespace) -> int:
    print(control.down())
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    control.need_root()
    if not args.cmd:
        raise control.ControlError("usage: python -m lab exec HOST -- COMMAND ...")
    cmd = args.cmd[1:] if args.cmd[0] == "--" else args.cmd
    h = control.host(args.host)
    return h.popen(*cmd).wait()


def cmd_shell(args: argparse.Namespace) -> int:
    control.need_root()
    h = control.host(args.host)
    print(f"shell in {args.host} (exit to leave)", flush=True)
    h.exec("env", f"PS1={args.host}# ", "bash", "--norc", "-i")


def cmd_serve(args: argparse.Namespace) -> int:
    from lab.daemon import serve  # Mininet is imported only by the daemon

    topo, _ = control.load_topology(args.topo, args.secondaries)
    return serve(topo, args.rotate)


def cmd_demo(args: argparse.Namespace) -> int:
    return demo.run(keep=args.keep)


def cmd_web(args: argparse.Namespace) -> int:
    try:
        from lab.web import server
    except ImportError as exc:  # aiohttp comes with `make deps`
        raise control.ControlError(f"the web view needs {exc.name or 'aiohttp'}: run `make deps`") from None
    try:
        return server.main(args)
    except server.WebError as exc:
        raise control.ControlError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab", description="The PDMv2 Mininet lab (root).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="build a topology, register, push keys, start agents; returns when ready")
    up.add_argument("--topo", default="enterprise", help="topology name in topologies/ or a path (default enterprise)")
    up.add_argument("--secondaries", type=int, help="clone to N secondaries per site (scale runs)")
    up.add_argument(
        "--rotate", type=int, default=PRSEQ_PERIOD, help=f"agents rotate keys every N packets (default {PRSEQ_PERIOD})"
    )
    up.add_argument("--timeout", type=float, help="seconds to wait for ready (default 120 + 8 per host)")
    up.set_defaults(func=cmd_up)
    sv = sub.add_parser("serve", help="(internal) the lab daemon that `up` starts")
    sv.add_argument("--topo", required=True)
    sv.add_argument("--secondaries", type=int)
    sv.add_argument("--rotate", type=int, default=PRSEQ_PERIOD)
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
    dm.set_defaults(func=cmd_demo)
    wb = sub.add_parser("web", help="a live, read-only web view of the running lab, on loopback; prints its URL")
    wb.add_argument("--port", type=int, default=8470, help="TCP port (default 8470; 0 picks a free one)")
    wb.add_argument("--bind", default="::1", help="loopback address to listen on: ::1 (default) or 127.0.0.1")
    wb.add_argument("--interval", type=float, default=1.0, help="seconds between updates to the page (0.2-1)")
    wb.set_defaults(func=cmd_web)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (control.ControlError, ConfigError) as exc:
        print(f"lab {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lab {args.command}: interrupted", file=sys.stderr)
        return 130
