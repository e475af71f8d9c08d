"""What the web view shows, gathered from a running lab (an edge: it enters the lab's hosts).

Three background threads, all read-only:

* agents: inside every SC and SS (through lab.control), once a second, what ``pdmv2 stats --json``
  prints: a small watcher per host (lab/web/agentwatch.py, one Python start-up, then one query of
  the agent's control socket a second); past MAX_WATCHERS secondaries, ``pdmv2 stats --json`` in
  rounds instead (no process per host held open);
* capture: tcpdump on the observer's interface (a router's, when the topology has no observer),
  its pcap stream read as it comes, each packet decoded twice by ``LiveDecoder``;
* keys: the secondary servers' key files, read from inside those hosts (``cat``), kept in memory
  only (never written, never sent to the page), and given to the decoder.

``snapshot()`` returns one JSON-able dict: topology graph, agents, flows, packets.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lab import control
from lab.topology import Topology
from lab.web.packets import LiveDecoder, keyring_from_texts
from lab.web.topoview import graph
from pdmv2.core.errors import ConfigError

__all__ = ["Collector", "lab_topology", "agent_view", "COUNTERS", "KEY_FILES"]

KEY_FILES = ("/etc/pdmv2/keys/server.json",)
MAX_WATCHERS = 24  # secondaries watched by a process each; more are polled in rounds
REPO = Path(__file__).resolve().parent.parent.parent
# What the page shows per agent: label -> the agent's counter (pdmv2.core.packetproc.Outcome names).
# The agent reports only counters that moved: one it does not report reads 0.
COUNTERS: dict[str, str] = {
    "inserted": "egress_inserted",
    "read": "ingress_read",
    "auth_failures": "ingress_auth_failed",
    "downgrades": "ingress_downgrade",
    "replays": "ingress_replay",
}


def lab_topology(st: dict[str, Any]) -> Topology:
    """The topology the running lab was built from (its daemon's --topo and --secondaries)."""
    topo_arg, secondaries = None, None
    try:
        argv = Path(f"/proc/{int(st['daemon_pid'])}/cmdline").read_bytes().decode().split("\0")
        for i, a in enumerate(argv[:-1]):
            if a == "--topo":
                topo_arg = argv[i + 1]
            elif a == "--secondaries" and argv[i + 1].isdigit():
                secondaries = int(argv[i + 1])
    except (OSError, KeyError, ValueError):
        pass
    topo, _ = control.load_topology(topo_arg or str(st.get("topology", "enterprise")).split("-x")[0], secondaries)
    return topo


def agent_view(name: str, role: str, stats: dict[str, Any] | None, error: str = "") -> dict[str, Any]:
    """One agent as the page shows it, from its ``pdmv2 stats --json`` (None: it did not answer)."""
    view: dict[str, Any] = {"host": name, "role": role}
    if stats is None:
        view.update(status="down", detail=error or "the agent does not answer", counters={})
        return view
    raw = stats.get("counters") or {}
    counters = {label: int(raw.get(name, 0)) for label, name in COUNTERS.items()}
    view.update(
        status="up" if stats.get("keys") else "no keys",
        detail="keys loaded" if stats.get("keys") else "running, waiting for its keys",
        counters=counters,
        flows_tracked=stats.get("flows_tracked"),
        uptime_s=stats.get("uptime_s"),
        handling_us_p50=stats.get("handling_us_p50"),
    )
    return view


class Collector:
    """Background readers of one running lab; ``snapshot()`` is safe to call from any thread."""

    def __init__(self, st: dict[str, Any], topo: Topology, *, poll_s: float = 1.0) -> None:
        self.state = st
        self.topo = topo
        self.poll_s = poll_s
        self.graph = graph(topo)
        self.hosts = {name: control.LabHost(name, int(h["pid"])) for name, h in st["hosts"].items()}
        self.secondaries = [n for n in topo.hosts if n.role in ("sc", "ss") and n.name in self.hosts]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._agents: dict[str, dict[str, Any]] = {
            n.name: {"host": n.name, "role": n.role, "status": "?", "detail": "not polled yet", "counters": {}}
            for n in self.secondaries
        }
        self._agent_seen: dict[str, float] = {}
        self._watchers: list[subprocess.Popen[str]] = []
        self._decoder = LiveDecoder(None)
        self._keys_from: list[str] = []
        self._key_texts: dict[str, str] = {}
        self._capture_error = ""
        self._tcpdump: subprocess.Popen[bytes] | None = None
        self._lab_up = True

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the readers (agents, keys, capture)."""
        for target in (self._poll_agents, self._poll_keys, self._capture):
            t = threading.Thread(target=target, name=f"web-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Stop the readers and the capture process this collector started."""
        self._stop.set()
        proc = self._tcpdump
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        with self._lock:
            watchers = list(self._watchers)
        for w in watchers:
            if w.poll() is None:
                w.terminate()
        for w in watchers:
            try:
                w.wait(5)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait(5)
        for t in self._threads:
            t.join(5)

    # -- readers -----------------------------------------------------------------------------------

    def _poll_one(self, name: str, role: str) -> dict[str, Any]:
        try:
            out = self.hosts[name].run(control.PDMV2, "stats", "--json", "--run", "/run/pdmv2", timeout=10)
        except subprocess.TimeoutExpired:
            return agent_view(name, role, None, "pdmv2 stats did not answer within 10 s")
        if out.returncode != 0:
            return agent_view(name, role, None, (out.stderr or out.stdout).strip()[-200:])
        try:
            return agent_view(name, role, json.loads(out.stdout))
        except ValueError:
            return agent_view(name, role, None, "pdmv2 stats printed no JSON")

    def _set_agent(self, view: dict[str, Any]) -> None:
        with self._lock:
            self._agents[view["host"]] = view
            self._agent_seen[view["host"]] = time.time()

    def _watch_agent(self, name: str, role: str) -> None:
        """One watcher process in the host; its JSON lines are the agent's stats."""
        while not self._stop.is_set():
            proc = self.hosts[name].popen(
                sys.executable, "-m", "lab.web.agentwatch", "/run/pdmv2", str(self.poll_s),
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, cwd=REPO,
            )  # fmt: skip
            with self._lock:
                self._watchers.append(proc)
            if self._stop.is_set():
                proc.terminate()
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                self._set_agent(agent_view(name, role, doc.get("stats"), str(doc.get("error", ""))))
            proc.wait()
            if not self._stop.is_set() and self._lab_up:
                self._set_agent(agent_view(name, role, None, f"the watcher in {name} exited ({proc.returncode})"))
            self._stop.wait(2.0)

    def _poll_agents(self) -> None:
        watched = len(self.secondaries) <= MAX_WATCHERS
        if watched:
            for n in self.secondaries:
                t = threading.Thread(target=self._watch_agent, args=(n.name, str(n.role)), name=f"web-watch-{n.name}")
                t.daemon = True
                t.start()
                self._threads.append(t)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="web-agent") as pool:
            while not self._stop.is_set():
                t0 = time.monotonic()
                if control.running_lab() is None:
                    with self._lock:
                        self._lab_up = False
                        for n in self.secondaries:
                            self._agents[n.name] = agent_view(n.name, str(n.role), None, "the lab is down")
                    self._stop.wait(self.poll_s)
                    continue
                with self._lock:
                    self._lab_up = True
                if not watched:
                    for v in pool.map(lambda n: self._poll_one(n.name, str(n.role)), self.secondaries):
                        self._set_agent(v)
                self._stop.wait(max(0.2, self.poll_s - (time.monotonic() - t0)))

    def _poll_keys(self) -> None:
        while not self._stop.is_set():
            texts: dict[str, str] = {}
            for n in self.secondaries:
                if n.role != "ss":
                    continue
                for path in KEY_FILES:
                    try:
                        out = self.hosts[n.name].run("cat", path, timeout=10)
                    except subprocess.TimeoutExpired:
                        continue
                    if out.returncode == 0 and out.stdout.strip():
                        texts[f"{n.name}:{path}"] = out.stdout
            unique: dict[str, str] = {}
            for name, text in texts.items():  # the SSs of one PS share their key file
                if text not in unique.values():
                    unique[name] = text
            if unique != self._key_texts:
                try:
                    ring = keyring_from_texts(unique)
                except ConfigError as exc:
                    with self._lock:
                        self._capture_error = f"key file unreadable: {exc}"
                else:
                    with self._lock:
                        self._key_texts = unique
                        self._keys_from = sorted({k.split(":")[0] for k in texts})
                        self._decoder.set_keys(ring)
            self._stop.wait(2.0 if not unique else 15.0)

    def _capture(self) -> None:
        from scapy.utils import RawPcapReader

        cap = self.graph["capture"]
        if cap is None or cap["host"] not in self.hosts:
            with self._lock:
                self._capture_error = "this topology has no observer and no router to capture on"
            return
        proc = self.hosts[cap["host"]].popen(
            "tcpdump", "-i", cap["ifname"], "-U", "-n", "--immediate-mode", "-s", "512", "-w", "-", "ip6",
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self._tcpdump = proc
        if self._stop.is_set():
            proc.terminate()
        try:
            reader = RawPcapReader(proc.stdout)  # type: ignore[arg-type]  # a file object is accepted
            for data, meta in reader:
                ts = meta.sec + meta.usec / (1e9 if getattr(reader, "nano", False) else 1e6)
                with self._lock:
                    self._decoder.feed(bytes(data), reader.linktype, ts)
                if self._stop.is_set():
                    break
        except Exception as exc:  # the stream ended or was cut: say so on the page
            if not self._stop.is_set():
                with self._lock:
                    self._capture_error = f"capture stopped ({type(exc).__name__})"
        if not self._stop.is_set():
            with self._lock:
                self._capture_error = self._capture_error or f"tcpdump on {cap['host']} exited"

    # -- the page's data ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, now."""
        now = time.time()
        with self._lock:
            packets = list(self._decoder.packets)[::-1]
            return {
                "now": now,
                "lab": {
                    "up": self._lab_up,
                    "topology": self.topo.name,
                    "started": self.state.get("started"),
                },
                "graph": self.graph,
                "agents": [
                    {**self._agents[n.name], "age_s": now - self._agent_seen[n.name]}
                    if n.name in self._agent_seen
                    else self._agents[n.name]
                    for n in self.secondaries
                ],
                "agents_polled_s_ago": (
                    now - min(self._agent_seen.get(n.name, 0.0) for n in self.secondaries)
                    if self.secondaries and all(n.name in self._agent_seen for n in self.secondaries)
                    else None
                ),
                "flows": self._decoder.flows(now),
                "packets": packets,
                "capture": {
                    **(self.graph["capture"] or {}),
                    "frames": self._decoder.frames,
                    "options": self._decoder.options,
                    "opened": self._decoder.opened,
                    "keys_from": self._keys_from,
                    "error": self._capture_error,
                },
            }
