"""``pdmv2 agent``: the daemon that runs in one host's network namespace.

One thread, one loop: select() on the NFQUEUE socket, the control socket and a signal pipe.
Packets go through PacketProcessor (pure); this module only moves bytes, reads clocks, writes
records and answers the control socket.  Any exception in packet handling is counted and the
packet accepted unchanged: no packet ever crashes the agent.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import json
import logging
import os
import signal
import socket
import statistics
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, PdmError
from ..core.flow import AddrType, PdmEngine
from ..core.packetproc import Outcome, PacketProcessor, Verdict
from ..core.policy import Policy, parse_policy
from ..core.ratelimit import PrefixLimiter
from ..keyfiles import KeySet, load_key_set
from ..regstore import read_text
from . import native_loop, rules
from .native_loop import KernelTimestamps
from .nfq import open_queue
from .records import DEFAULT_FILES, DEFAULT_MAX_BYTES, RecordWriter
from .reservation import DurableState

__all__ = [
    "Agent",
    "AgentPaths",
    "RECORDS_NAME",
    "SOCKET_NAME",
    "PID_NAME",
    "READY_NAME",
    "LOCK_NAME",
    "take_netns_lock",
]

log = logging.getLogger("pdmv2.agent")
NF_INET_LOCAL_OUT = 3  # netfilter hook number; anything else queued is LOCAL_IN
RECORDS_NAME, SOCKET_NAME, PID_NAME = "records.jsonl", "agent.sock", "agent.pid"
READY_NAME = "ready"
"""In the run directory while the agent serves: "keys N" (key files loaded).  A supervisor can wait
for it with a shell test instead of starting a Python process to ask the control socket."""
_LOG_EVERY_NS = 1_000_000_000
# One agent per network namespace: abstract unix socket names are per network namespace and the
# name is released by the kernel when the process ends, however it ends (kill -9 included).
LOCK_NAME = b"\0pdmv2-agent"


_held_lock: socket.socket | None = None


def take_netns_lock() -> socket.socket:
    """Bind the namespace's agent lock; ConfigError (nothing changed) when another agent holds it.

    Taken again by the process that holds it, the same socket is returned: `pdmv2 agent` takes it
    before it reads any state, and Agent.run() before it changes anything.
    """
    global _held_lock
    if _held_lock is not None and _held_lock.fileno() >= 0:
        return _held_lock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(LOCK_NAME)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            holder = _lock_holder()
            who = f" (pid {holder})" if holder else ""
            raise ConfigError(
                "pdmv2 agent",
                "lock",
                f"another agent{who} already runs in this network namespace; this one changed nothing and exits",
            ) from None
        raise ConfigError("pdmv2 agent", "lock", f"cannot take the namespace lock ({exc.strerror or exc})") from None
    _held_lock = sock
    return sock


def _lock_holder() -> int | None:
    """Pid of the process holding LOCK_NAME in this network namespace, when /proc tells (best effort)."""
    name = "@" + LOCK_NAME[1:].decode()
    try:
        with open("/proc/net/unix", encoding="ascii", errors="replace") as f:
            inodes = {f"socket:[{p[6]}]" for p in (line.split() for line in f) if len(p) >= 8 and p[7] == name}
        if not inodes:
            return None
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return int(pid)
                except OSError:
                    continue
    except OSError:
        return None
    return None


DEFAULT_RUN_DIR = Path("/run/pdmv2")
DEFAULT_STATE_DIR = Path("/var/lib/pdmv2/agent")


def wall_offset_ns(tries: int = 5) -> int:
    """Wall clock minus the monotonic clock: key epochs follow the wall clock, and the kernel's
    receive timestamps (wall clock) become monotonic times with it.

    Each try brackets one wall-clock read between two monotonic reads; the tightest bracket wins.
    A single pair of reads is off by however long the thread was preempted between them (ms under
    a flood), and that error would sit in every kernel timestamp for the next second.
    """
    best_gap, best = -1, 0
    for _ in range(tries):
        m1 = time.monotonic_ns()
        wall = time.time_ns()
        m2 = time.monotonic_ns()
        if best_gap < 0 or m2 - m1 < best_gap:
            best_gap, best = m2 - m1, wall - (m1 + m2) // 2
    return best


_GUARD_READ_EVERY_S = 2.0


def _give_back_memory() -> None:
    """Collect, then ask glibc to return free heap to the system (a no-op elsewhere)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class AgentPaths:
    """Where one host's agent reads and writes."""

    def __init__(
        self,
        config_dir: Path,
        run_dir: Path,
        policy: Path | None = None,
        keys: Path | None = None,
        state: Path | None = None,
    ) -> None:
        self.config_dir = Path(config_dir)
        self.run_dir = Path(run_dir)
        self.policy = policy or self.config_dir / "policy.yaml"
        self.keys = keys or self.config_dir / "keys"
        # What must outlive a restart (the nonce reservation).  The default run directory is a
        # tmpfs that a reboot empties, so the default agent keeps it under /var/lib.
        if state is None:
            state = DEFAULT_STATE_DIR if self.run_dir == DEFAULT_RUN_DIR else self.run_dir / "state"
        self.state = Path(state)

    @property
    def socket(self) -> Path:
        """Control socket."""
        return self.run_dir / SOCKET_NAME

    @property
    def records(self) -> Path:
        """Per-packet JSON lines."""
        return self.run_dir / RECORDS_NAME


def _json_num(value: int | None) -> str:
    return "null" if value is None else str(value)


class _RateLimitedLog:
    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.suppressed: Counter[str] = Counter()

    def warn(self, reason: str, detail: str, now: int) -> None:
        if now - self.last.get(reason, -_LOG_EVERY_NS) >= _LOG_EVERY_NS:
            extra = f" ({self.suppressed[reason]} more since last report)" if self.suppressed[reason] else ""
            log.warning("%s: %s%s", reason, detail, extra)
            self.last[reason] = now
            self.suppressed[reason] = 0
        else:
            self.suppressed[reason] += 1


class Agent:
    """The daemon: rules, queue, processing, records, control socket.

    A packet thread blocks in netfilterqueue's own recv loop (a select()/poll() loop in Python cost
    about 100 µs per packet here) and is never interrupted: Python runs signal handlers in the
    main thread only, so no packet can be left without a verdict by a signal.  The main thread
    handles SIGTERM/SIGINT (stop), SIGHUP (reload) and once a second the housekeeping; a third
    thread answers the control socket.  One lock serialises packet handling with reloads and stats.
    """

    def __init__(
        self,
        paths: AgentPaths,
        *,
        queue: int = 7,
        install_rules: bool = True,
        records_max_bytes: int = DEFAULT_MAX_BYTES,
        records_files: int = DEFAULT_FILES,
        datapath: str = "python",
        kernel_timestamps: bool = True,
        tx_calibration: bool = True,
    ) -> None:
        self.paths = paths
        self.kernel_timestamps = kernel_timestamps
        self.tx_calibration = tx_calibration
        self.timestamps: KernelTimestamps | None = None
        self.kernel_stamped = 0  # python path: arriving packets that carried the kernel's stamp
        self.queue_num = queue
        self.install_rules = install_rules
        self.records_max_bytes = records_max_bytes
        self.records_files = records_files
        self.policy = self._load_policy()
        self.keyset: KeySet = load_key_set(paths.keys, now=time.time())
        epoch_ns = self.policy.key_epoch_s * 1_000_000_000
        self.durable = DurableState(paths.state, epoch_ns)
        self.engine = PdmEngine(
            keys=self.keyset.provider,
            rotate_after=self.policy.rotate_after,
            grace_ns=self.policy.grace_ms * 1_000_000,
            idle_ns=self.policy.flow_idle_s * 1_000_000_000,
            epoch_ns=epoch_ns,
            wall_offset_ns=wall_offset_ns(),
            reserve=self.durable.reserve,
            record_rx=self.durable.record_rx,
        )
        # Stay above whatever an earlier run sent or received (docs/protocol.md §8).
        previous = self.durable.load()
        if not previous.fresh:
            self.engine.restarted(time.monotonic_ns(), previous.reservation, previous.rx_epoch)
        limiter = PrefixLimiter(self.policy.crypto_per_prefix_per_s, self.policy.crypto_total_per_s)
        self.proc = PacketProcessor(self.engine, self.policy, limiter)
        self.started = time.time()
        self.errors: Counter[str] = Counter()
        self._logs = _RateLimitedLog()
        self._records: RecordWriter | None = None
        self.control_errors = 0
        self._reload_lock = threading.Lock()
        self._netns_lock: socket.socket | None = None
        self._record_prefix: dict[tuple[Any, ...], str] = {}
        self._reload = False
        self._stop = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.busy_ns = 0
        self.handled = 0
        self._guarded_count = 0
        self._guarded_at = -_GUARD_READ_EVERY_S
        self._recent: deque[int] = deque(maxlen=4096)
        # --datapath native: the C packet path, this object keeps the control plane (native_loop.py).
        self.native = native_loop.attach(self, datapath)

    def _load_policy(self) -> Policy:
        if not self.paths.policy.exists():
            raise ConfigError(str(self.paths.policy), "policy", "file not found")
        return parse_policy(read_text(self.paths.policy, "policy"), str(self.paths.policy))

    # -- packets ---------------------------------------------------------------------------------

    def handle(self, pkt: Any) -> None:
        """netfilterqueue callback (packet thread): always gives a verdict, never raises."""
        t0 = time.perf_counter_ns()
        with self._lock:
            self._handle(pkt)
            spent = time.perf_counter_ns() - t0
            self.busy_ns += spent
            self.handled += 1
            self._recent.append(spent)

    def _handle(self, pkt: Any) -> None:
        try:
            payload = pkt.get_payload()
            if pkt.hook == NF_INET_LOCAL_OUT:
                verdict = self.proc.egress(payload, time.monotonic_ns())
                if verdict.packet is not None:
                    pkt.set_payload(verdict.packet)
                pkt.accept()
                self._after(verdict, "egress")
            else:
                verdict = self.proc.ingress(payload, self._ingress_time(pkt))
                if verdict.drop:
                    pkt.drop()
                else:
                    pkt.accept()
                self._after(verdict, "ingress")
        except Exception as exc:
            self.errors[type(exc).__name__] += 1
            self._logs.warn(
                "internal_error",
                f"{type(exc).__name__} while handling a packet; accepted unchanged",
                time.monotonic_ns(),
            )
            try:
                pkt.accept()
            except Exception:  # noqa: S110 - already decided; nothing more to do
                pass

    def _ingress_time(self, pkt: Any) -> int:
        """Monotonic ns of arrival: the kernel's timestamp when NFQUEUE has one, else now."""
        now_mono = time.monotonic_ns()
        try:
            ts = pkt.get_timestamp()
        except Exception:
            ts = 0
        if ts:
            age = time.time_ns() - int(ts * 1e9)
            if 0 <= age < 1_000_000_000:
                self.kernel_stamped += 1
                return now_mono - age
        return now_mono

    def _after(self, verdict: Verdict, direction: str) -> None:
        if verdict.outcome in (
            Outcome.AUTH_FAILED,
            Outcome.REPLAY,
            Outcome.STALE_KEY,
            Outcome.BAD_OPTION,
            Outcome.NO_KEY,
            Outcome.MALFORMED,
            Outcome.TOO_BIG,
        ):
            self._logs.warn(f"{direction}_{verdict.outcome.value}", verdict.detail, time.monotonic_ns())
        if self._records is None:
            return
        item = verdict.sent if direction == "egress" else verdict.received
        if item is None:
            if verdict.outcome in (Outcome.AUTH_FAILED, Outcome.REPLAY, Outcome.STALE_KEY, Outcome.BAD_OPTION):
                self._records.write(
                    json.dumps({"t": time.time(), "direction": direction, "status": verdict.outcome.value}) + "\n"
                )
            return
        key = (item.flow, direction, item.mode)
        prefix = self._record_prefix.get(key)
        if prefix is None:  # the constant part of a flow's lines, made once (json.dumps per packet was slow)
            f = item.flow
            prefix = json.dumps(
                {
                    "direction": direction,
                    "src": f.src_text,
                    "sport": f.src_port,
                    "dst": f.dst_text,
                    "dport": f.dst_port,
                    "proto": f.proto,
                    "mode": item.mode.value,
                }
            )[:-1]
            if len(self._record_prefix) > 65536:
                self._record_prefix.clear()
            self._record_prefix[key] = prefix
        self._records.write(
            f'{prefix}, "t": {time.time():.6f}, "psntp": {item.psntp}, "psnlr": {item.psnlr}, '
            f'"delta_tlr_ns": {item.delta_tlr_as / 1e9}, "delta_tls_ns": {item.delta_tls_as / 1e9}, '
            f'"global_pointer": {_json_num(item.global_pointer)}, "kri": {_json_num(item.kri)}, '
            f'"status": "{verdict.outcome.value}"}}\n'
        )

    # -- control -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Everything `pdmv2 stats` shows."""
        flows = []
        for fs in list(self.proc.flow_stats.values()):  # copied in C: safe against the packet thread
            f = fs.flow
            summary = {
                k: (
                    None
                    if v is None
                    else {"count": v.count, "min_ns": v.min, "p50_ns": v.p50, "p95_ns": v.p95, "max_ns": v.max}
                )
                for k, v in fs.summary().items()
            }
            flows.append(
                {
                    "src": f.src_text,
                    "sport": f.src_port,
                    "dst": f.dst_text,
                    "dport": f.dst_port,
                    "proto": f.proto,
                    **summary,
                }
            )
        out: dict[str, Any] = {
            "pid": os.getpid(),
            "datapath": "python",
            "uptime_s": time.time() - self.started,
            "counters": {**self.proc.counters, "ingress_guarded": self._guarded()},
            "internal_errors": dict(self.errors),
            "packets_handled": self.handled,
            "handling_us_mean": self.busy_ns / self.handled / 1000 if self.handled else None,
            "handling_us_p50": statistics.median(list(self._recent)) / 1000 if self._recent else None,
            "flows_tracked": len(self.engine.flows),
            "kernel_timestamps": {
                "held_on": self.timestamps is not None and self.timestamps.on,
                "stamped_arrivals": self.kernel_stamped,
            },
            "global_pointer": {
                "link_local": self.engine.global_pointer(AddrType.LINK_LOCAL),
                "global": self.engine.global_pointer(AddrType.GLOBAL),
            },
            "keys": repr(self.engine.keys) if self.engine.keys is not None else None,
            "key_files": len(self.keyset),
            "records": self._records.stats() if self._records is not None else None,
            "records_dropped": self._records.dropped if self._records is not None else 0,
            "control_errors": self.control_errors,
            "flows": flows,
        }
        if self.native is not None:
            out.update(self.native.stats())
            out["counters"] = {**self.native.counters(), **out["counters"]}
            out["kernel_timestamps"]["stamped_arrivals"] = self.native.dp.stats()["kernel_timestamps"]
        return out

    def _guarded(self) -> int:
        """Packets the kernel let pass unqueued because their /64 sent more than its share.

        Read from the rule's counter (an ip6tables process) at most every 2 s: stats are
        polled every second by the web view, and a process per poll is not worth it.
        """
        if not (self.install_rules and self.policy.queue_per_prefix_pps):
            return 0
        now = time.monotonic()
        if now - self._guarded_at >= _GUARD_READ_EVERY_S:
            self._guarded_count, self._guarded_at = rules.guarded_packets(), now
        return self._guarded_count

    def _serve_control(self, server: socket.socket) -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(1.0)
            try:
                request = conn.recv(256).decode("ascii", "replace").strip()
                if request == "stats":
                    reply: dict[str, Any] = self.stats()
                elif request == "reload":
                    refused = self.reload()
                    reply = {"ok": True} if refused is None else {"error": f"reload refused: {refused}"}
                else:
                    reply = {"error": f"unknown request {request[:40]!r}"}
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    def reload(self) -> str | None:
        """SIGHUP or `pdmv2 reload`: re-read keys and policy; flow state stays.

        Returns None when applied, else why it was refused: a bad file, or no usable key file
        left when the agent has keys.  A refused reload keeps every running setting.
        """
        with self._reload_lock:
            try:
                policy = self._load_policy()
                keyset = load_key_set(self.paths.keys, now=time.time())
                keys = keyset.provider
            except PdmError as exc:
                log.error("reload refused, keeping the running settings: %s", exc)
                return str(exc)
            for name in ("key_epoch_s", "global_pointer"):
                if getattr(policy, name) != getattr(self.policy, name):
                    why = f"{name} cannot change while the agent runs (restart it); nothing was reloaded"
                    log.error("reload refused: %s", why)
                    return why
            if len(self.keyset) and not len(keyset):
                why = (
                    f"no usable key file in {self.paths.keys} while the agent has {len(self.keyset)}; "
                    "the running keys and policy are kept (stop the agent to run without keys)"
                )
                log.error("reload refused: %s", why)
                return why
            with self._lock:
                self.policy = policy
                self.proc.set_policy(policy)
                self.engine.set_keys(keys)
                self.keyset = keyset
                if self.native is not None:
                    self.native.reload(policy, keys)
            self._write_ready()
            log.info("reloaded policy (%d rules) and keys (%s)", len(policy.rules), keys)
            return None

    def _write_ready(self) -> None:
        """READY_NAME, replaced atomically (a reader never sees half of it)."""
        path = self.paths.run_dir / READY_NAME
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(f"keys {len(self.keyset)}\n")
            tmp.replace(path)
        except OSError as exc:  # a full run directory: supervisors fall back to asking the socket
            log.warning("could not write %s: %s", path, exc.strerror)

    # -- main loop ---------------------------------------------------------------------------------

    def run(self, ready: Any = None) -> int:
        """Serve until SIGTERM/SIGINT; removes everything it installed on the way out."""
        self._netns_lock = take_netns_lock()  # before anything is touched: a refused start changes nothing
        self.paths.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.paths.run_dir / READY_NAME).unlink(missing_ok=True)  # an earlier run's
        (self.paths.run_dir / PID_NAME).write_text(f"{os.getpid()}\n")
        self.paths.socket.unlink(missing_ok=True)
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        control.bind(str(self.paths.socket))
        os.chmod(self.paths.socket, 0o600)
        control.listen(8)

        def on_signal(signum: int, _frame: Any) -> None:
            if signum == signal.SIGHUP:
                self._reload = True
            else:
                self._stop = True
            self._wake.set()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)
        if self.policy.records:
            self._records = RecordWriter(self.paths.records, max_bytes=self.records_max_bytes, files=self.records_files)
        nfq: Any = None
        try:
            if self.kernel_timestamps:  # held for the agent's life: every arrival gets the kernel's stamp
                self.timestamps = KernelTimestamps()
            if self.native is not None:
                self.native.start(self.queue_num)
            else:
                nfq = open_queue(self.queue_num, self.handle)
                threading.Thread(target=self._packet_loop, args=(nfq,), name="packets", daemon=True).start()
            if self.install_rules:
                rules.install(
                    self.queue_num,
                    rules.mss_for(self.policy.mtu, self.policy.max_option_size),
                    self.policy.queue_per_prefix_pps,
                    all_egress=self.policy.global_pointer == "all-packets",
                )
            threading.Thread(target=self._control_loop, args=(control,), name="control", daemon=True).start()
            log.info(
                "agent up: queue %d, %d policy rules, keys %s", self.queue_num, len(self.policy.rules), self.engine.keys
            )
            self._write_ready()
            if ready is not None:
                ready()
            while not self._stop:
                self._wake.wait(1.0)
                self._wake.clear()
                if self._reload:
                    self._reload = False
                    self.reload()
                self._housekeeping()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            if self.install_rules:
                rules.remove()  # no new packets; --queue-bypass covers the rest
            time.sleep(0.05)  # let the packet thread give its last verdicts
            if self.native is not None:
                self.native.stop()
            if self.timestamps is not None:
                self.timestamps.close()
            with self._lock:
                if self._records is not None:
                    self._records.close()
                    self._records = None
                self.durable.close()
            # No nfq.unbind(): the packet thread sits in recv() on the same socket and would take the
            # kernel's answer to the unbind; closing the socket at exit unbinds the queue.
            control.close()
            self.paths.socket.unlink(missing_ok=True)
            (self.paths.run_dir / READY_NAME).unlink(missing_ok=True)
            (self.paths.run_dir / PID_NAME).unlink(missing_ok=True)
            self._netns_lock.close()  # last: the namespace is free once everything of ours is gone
        log.info("agent stopped: %s", dict(self.proc.counters))
        return 0

    def _packet_loop(self, nfq: Any) -> None:
        while True:
            try:
                nfq.run()
            except Exception as exc:
                self.errors[type(exc).__name__] += 1
                log.error("packet loop: %s: %s", type(exc).__name__, exc)
                time.sleep(0.1)

    def _control_loop(self, control: socket.socket) -> None:
        """Serve requests until shutdown; an error (EMFILE on accept, a failed request) never ends it."""
        while True:
            try:
                self._serve_control(control)
            except Exception as exc:
                if self._stop or control.fileno() < 0:
                    return  # socket closed at shutdown
                self.control_errors += 1
                detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                self._logs.warn("control_error", f"{type(exc).__name__}: {detail}; still serving", time.monotonic_ns())
                time.sleep(0.1)  # EMFILE: the connection waits in the backlog; do not spin on it

    def _housekeeping(self) -> None:
        with self._lock:
            if self._records is not None:
                self._records.flush()  # never raises: a full disk drops and counts records
            self.engine.wall_offset_ns = wall_offset_ns()
            gone = self.proc.expire(time.monotonic_ns())
            if self.native is not None:
                self.native.housekeeping(time.monotonic_ns(), self.engine.wall_offset_ns)
        if gone >= 1024:
            _give_back_memory()  # after a flood: what the forgotten flows held goes back to the system
        self._expire_keys(time.time())

    def _expire_keys(self, now: float) -> None:
        """Stop using key files whose ``expires`` has passed (checked once a second)."""
        expiry = self.keyset.next_expiry
        if not expiry or now < expiry:
            return
        with self._reload_lock:
            active = self.keyset.active(now)
            with self._lock:
                self.engine.set_keys(active.provider)
                self.keyset = active
                if self.native is not None:
                    self.native.reload(self.policy, active.provider)
        log.warning("keys now in use: %s", active.provider)


def query(run_dir: Path, request: str = "stats", timeout: float = 3.0) -> dict[str, Any]:
    """Ask a running agent over its control socket."""
    path = Path(run_dir) / SOCKET_NAME
    if not path.exists():
        raise ConfigError(str(path), "agent", "no agent socket here: is the agent running on this host?")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(request.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (OSError, TimeoutError) as exc:
        raise ConfigError(str(path), "agent", f"no answer ({type(exc).__name__})") from None
    try:
        reply: dict[str, Any] = json.loads(data)
    except ValueError:
        raise ConfigError(str(path), "agent", "garbled answer") from None
    return reply
