"""The web view's HTTP server (aiohttp), read-only, on loopback in the root namespace.

Routes (GET only; anything else is 405):

* ``/`` the page, ``/static/...`` its script and style (shipped here: no CDN, works offline);
* ``/api/snapshot`` one JSON snapshot;
* ``/api/events`` server-sent events: a snapshot every ``interval`` seconds (the page's live feed).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from lab import control
from lab.web.collect import Collector, lab_topology

__all__ = ["make_app", "main", "WebError"]

STATIC = Path(__file__).resolve().parent / "static"
COLLECTOR: web.AppKey[Any] = web.AppKey("collector", object)
INTERVAL: web.AppKey[float] = web.AppKey("interval", float)
# The page loads nothing from anywhere else (and nothing inline).
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


class WebError(Exception):
    """A clear, one-line reason for the user."""


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


async def _index(_request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers=HEADERS)


async def _snapshot(request: web.Request) -> web.Response:
    snap = await asyncio.to_thread(request.app[COLLECTOR].snapshot)
    return web.Response(text=_json(snap), content_type="application/json", headers=HEADERS)


async def _events(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={**HEADERS, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    try:
        while True:
            snap = await asyncio.to_thread(request.app[COLLECTOR].snapshot)
            await resp.write(f"data: {_json(snap)}\n\n".encode())
            await asyncio.sleep(request.app[INTERVAL])
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    resp: web.StreamResponse = await handler(request)
    if not resp.prepared:
        for k, v in HEADERS.items():
            resp.headers.setdefault(k, v)
    return resp


def make_app(collector: Any, *, interval: float = 1.0) -> web.Application:
    """The application: any object with ``snapshot() -> dict`` feeds it (tests pass a fake)."""
    app = web.Application(middlewares=[_headers])
    app[COLLECTOR] = collector
    app[INTERVAL] = interval
    app.router.add_get("/", _index)
    app.router.add_get("/api/snapshot", _snapshot)
    app.router.add_get("/api/events", _events)
    app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
    return app


def _check_bind(bind: str) -> str:
    try:
        addr = ipaddress.ip_address(bind)
    except ValueError:
        raise WebError(f"--bind {bind!r}: give ::1 or 127.0.0.1 (the view serves on loopback only)") from None
    if not addr.is_loopback:
        raise WebError(f"--bind {bind}: not a loopback address; the view serves on loopback only")
    return str(addr)


def _check_root_namespace(st: dict[str, Any]) -> None:
    """Refuse to run inside a lab host (the page must not be reachable from the lab)."""
    mine = os.stat("/proc/self/ns/net").st_ino
    lab = {h.get("netns_inode") for h in st.get("hosts", {}).values()}
    if mine in lab:
        raise WebError("this is a lab host's network namespace: run the web view in the root namespace")
    try:
        if mine != os.stat("/proc/1/ns/net").st_ino:
            raise WebError("not in the root network namespace (pid 1's): run the web view there")
    except PermissionError:
        pass


def main(args: argparse.Namespace) -> int:
    """``python -m lab web``: serve until Ctrl-C."""
    bind = _check_bind(args.bind)
    if not 0 <= args.port <= 65535:
        raise WebError(f"--port {args.port}: must be 0..65535 (0: any free port)")
    if not 0.2 <= args.interval <= 1.0:
        raise WebError("--interval must be between 0.2 and 1 second")
    if os.geteuid() != 0:
        raise WebError("the web view enters the lab's hosts (mnexec, tcpdump on the observer): run it as root")
    st = control.running_lab()
    if st is None:
        raise WebError("no lab is up: start one with `make lab-up` (or `python -m lab up --topo minimal`)")
    if not st.get("ready"):
        raise WebError("the lab is still starting (or stuck): wait for `make lab-up` to finish, then try again")
    _check_root_namespace(st)
    topo = lab_topology(st)
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind, args.port))
    except OSError as exc:
        sock.close()
        raise WebError(f"cannot listen on [{bind}]:{args.port}: {exc.strerror} (try --port)") from None
    collector = Collector(st, topo)
    collector.start()
    host = f"[{bind}]" if family == socket.AF_INET6 else bind
    url = f"http://{host}:{sock.getsockname()[1]}/"
    print(f"lab web: {topo.name} lab, read-only view at {url}  (Ctrl-C stops it)", flush=True)
    try:
        web.run_app(
            make_app(collector, interval=args.interval), sock=sock, print=None, handle_signals=True, shutdown_timeout=1
        )
    finally:
        collector.stop()
        print("lab web: stopped", file=sys.stderr)
    return 0
