"""The Python control plane of the native data path (``pdmv2 agent --datapath native``).

The packet thread runs entirely in C (pdmv2/native/_datapath.c: NFQUEUE, parsing, the option,
AEAD, flow state, verdicts in batches).  This module is what stays in Python, off the packet path:

- key derivation: the C path asks (an eventfd wakes the control thread) for the session key of a
  (direction, Kri) it does not hold and holds that packet (at most 64 packets, at most HOLD_NS);
  the answer is installed into its bounded key table (or a "no key" entry when no key file covers
  the flow) and the held packets are processed again; a packet whose key does not come in time
  goes out unmeasured; derivations are limited per peer /64 like the Python path's;
- nonce reservations: made durable on disk (the agent's NonceReservation) before the C path may
  use the Kri;
- the random pool the C path draws PSNTP starts and PRSEQ seeds from (os.urandom);
- records: fixed-size binary records drained from the C ring into metrics, ``pdmv2 stats`` and
  records.jsonl; when Python falls behind, the ring drops records and counts them;
- the wall-clock offset (sampled once a second), policy, reload, expiry and stats;
- kernel receive timestamps: the agent holds a socket with SO_TIMESTAMPNS open (KernelTimestamps),
  so the kernel stamps every packet on arrival and NFQUEUE hands the stamp over (NFQA_TIMESTAMP).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..core.keyring import KeyProvider
from ..core.keys import FiveTuple, session_key
from ..core.metrics import PacketRecord
from ..core.policy import Policy
from ..native import (
    AVAILABLE,
    OUTCOMES,
    UNAVAILABLE_REASON,
    NativeRecord,
    apply_policy,
    iter_records,
    new_datapath,
    serve_requests,
)
from .txcal import TxCalibrator

__all__ = ["NativeLoop", "native_available", "KernelTimestamps"]

log = logging.getLogger("pdmv2.agent")
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_DRAIN_MAX = 1 << 20  # a drain's default: everything (at stop)
"""Records taken per control tick (50 ms): at most 20 000 a second go through Python (metrics, JSON
lines); beyond that the ring fills and the C path drops records and counts them, so a flood of
measured packets does not spend the CPU the packets need."""
_POOL_LOW = 2048
HOLD_NS = 50_000_000
TICK_S = 0.05  # the control thread's period while records flow
IDLE_TICK_S = 0.5  # ... and when nothing happened for a while (requests wake it at once)
PREFETCH_NS = 1_000_000_000
"""How long before a key epoch changes its keys and durable state are prepared."""
"""Longest a packet waits for its key (first packet of a flow or key epoch); then it goes out unmeasured."""


def native_available() -> tuple[bool, str]:
    """(built, why not)."""
    return AVAILABLE, UNAVAILABLE_REASON


class KernelTimestamps:
    """Holds kernel receive timestamping on (net_enable_timestamp) while open."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        try:
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            self.sock = s
        except OSError as exc:
            log.warning("kernel receive timestamps not switched on (%s): ingress uses the agent's clock", exc)

    @property
    def on(self) -> bool:
        """Whether this process holds timestamping on."""
        return self.sock is not None

    def close(self) -> None:
        """Release (the kernel keeps them on while any other socket asks)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class NativeLoop:
    """Runs the C packet loop in a thread and serves it from a control thread.

    ``record_sink(rec)`` is called (control thread, under ``lock``) for each record drained;
    ``limit(peer, now_ns)`` says whether a key derivation for that peer is within budget.
    """

    def __init__(
        self,
        *,
        policy: Policy,
        keys: KeyProvider | None,
        epoch_ns: int,
        floors: tuple[int, int, int],
        wall_offset_ns: int,
        reserve: Callable[[int], bool],
        record_sink: Callable[[NativeRecord], None],
        record_rx: Callable[[int], bool] | None = None,
        rx_recorded: int | None = None,
        limit: Callable[[bytes, int], bool] | None = None,
        lock: threading.Lock | None = None,
        max_flows: int = 65536,
        ring: int = 65536,
        on_gap: Callable[[], None] | None = None,
        tx_calibration: bool = False,
    ) -> None:
        self.dp = new_datapath(max_flows=max_flows, ring=ring)
        self.keys = keys
        self.reserve = reserve
        self.record_rx = record_rx
        self.record_sink = record_sink
        self.limit = limit
        self.lock = lock if lock is not None else threading.Lock()
        self.policy = policy
        apply_policy(self.dp, policy, epoch_ns=epoch_ns)
        # Keys, reservations and receive epochs are asked for before packets must wait for them.
        self.dp.configure(prefetch_ns=min(PREFETCH_NS, epoch_ns // 4))
        send_floor, recv_floor, reserved = floors
        self.dp.set_floors(
            send_floor=send_floor,
            recv_floor=recv_floor,
            reserved=reserved,
            rx_recorded=rx_recorded if rx_recorded is not None else 1 << 62,  # None: not kept durable
        )
        self.dp.set_clock(wall_offset_ns=wall_offset_ns)
        self.wall_offset_ns = wall_offset_ns
        self._refill()
        self._warm_up()
        self._notify = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.dp.set_notify_fd(self._notify)
        self._stop_r, self._stop_w = os.pipe()
        self._threads: list[threading.Thread] = []
        self._running = False
        self.keys_installed = 0
        self.keys_limited = 0
        self.reservations = 0
        self.tx_calibration = tx_calibration
        self.txcal: TxCalibrator | None = None
        self.records_drained = 0
        self.record_gaps = 0
        self._sample_epoch = 0
        self.on_gap = on_gap
        self.errors = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, queue: int) -> None:
        """Bind the queue (raises OSError naming why) and start the packet and control threads."""
        self.dp.bind_queue(queue)
        if self.tx_calibration:
            self.txcal = TxCalibrator(self._apply_tx, lambda: self.wall_offset_ns)
        self._running = True
        self._threads = [
            threading.Thread(target=self.dp.serve, args=(self._stop_r,), name="native-packets", daemon=True),
            threading.Thread(target=self._control, name="native-control", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop both threads, give the last records to the sink, unbind the queue."""
        if not self._running:
            return
        self._running = False
        os.write(self._stop_w, b"x")
        for t in self._threads:
            t.join(timeout=2.0)
        self.drain()  # everything left
        self.dp.unbind_queue()
        if self.txcal is not None:
            self.txcal.close()
        for fd in (self._stop_r, self._stop_w, self._notify):
            os.close(fd)

    # -- control thread --------------------------------------------------------------------------

    def _control(self) -> None:
        held = 0
        idle = TICK_S  # grows while nothing happens: a fleet of idle agents should cost nothing
        while self._running:
            try:
                ready, _, _ = select.select([self._notify, self._stop_r], [], [], 0.002 if held else idle)
                if self._stop_r in ready:
                    return
                if self._notify in ready:
                    try:
                        os.eventfd_read(self._notify)
                    except BlockingIOError:
                        pass
                before = (self.keys_installed, self.reservations)
                self.serve()
                held = self.dp.release_held(HOLD_NS)
                drained = self.drain(max(1, int(self.policy.records_per_s * TICK_S)))
                if self.txcal is not None:
                    self.txcal.poll()
                self._refill()
                busy = drained or held or self._notify in ready or before != (self.keys_installed, self.reservations)
                idle = TICK_S if busy else min(idle * 2, IDLE_TICK_S)
            except Exception as exc:  # the control plane must never die; the packet path goes on
                self.errors += 1
                log.error("native control: %s: %s", type(exc).__name__, exc)
                time.sleep(0.1)

    def _apply_tx(self, warm_ns: int, cold_ns: int) -> None:
        self.dp.configure(tx_comp_warm_ns=warm_ns, tx_comp_cold_ns=cold_ns)
        log.info("transmit compensation: %.1f µs warm, %.1f µs cold", warm_ns / 1000, cold_ns / 1000)

    def serve(self) -> None:
        """Answer the packet path's key and reservation requests."""
        installed, reserved = serve_requests(
            self.dp, self.keys, self.reserve, allow=self._allow, record_rx=self.record_rx
        )
        self.keys_installed += installed
        self.reservations += reserved

    def _allow(self, wire: FiveTuple, seal: bool) -> bool:
        if self.limit is None:
            return True
        peer = wire.dst if seal else wire.src
        if self.limit(peer, time.monotonic_ns()):
            return True
        self.keys_limited += 1
        return False

    def drain(self, limit: int = _DRAIN_MAX) -> int:
        """Move the records the C ring holds to the sink; returns how many."""
        data = self.dp.drain(limit)
        if not data:
            return 0
        n = 0
        with self.lock:
            for rec in iter_records(data):
                if rec.sample_epoch != self._sample_epoch:  # records were skipped before this one
                    self._sample_epoch = rec.sample_epoch
                    self.record_gaps += 1
                    if self.on_gap is not None:
                        self.on_gap()
                if self.txcal is not None:
                    self.txcal.on_record(rec)
                self.record_sink(rec)
                n += 1
        self.records_drained += n
        return n

    def _warm_up(self) -> None:
        """One derivation now, so the first packets' keys do not pay for cold imports and caches."""
        if self.keys is not None:
            suite = self.keys.suite
            session_key(suite, client_secret=bytes(suite.nh), flow=FiveTuple(bytes(16), 0, bytes(16), 0, 17), kri=0)

    def _refill(self) -> None:
        if self.dp.stats()["pool"] < _POOL_LOW:
            raw = os.urandom(4 * 4096)
            self.dp.feed_random([int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4)])

    # -- from the agent's main thread ------------------------------------------------------------

    def housekeeping(self, now_ns: int, wall_offset_ns: int) -> int:
        """Once a second: the clock offset, idle expiry; returns flows forgotten."""
        self.wall_offset_ns = wall_offset_ns
        self.dp.set_clock(wall_offset_ns=wall_offset_ns)
        gone: int = self.dp.expire(now_ns)
        return gone

    def reload(self, policy: Policy, keys: KeyProvider | None) -> None:
        """New policy and keys: installed keys are dropped and derived again on demand."""
        self.policy = policy
        self.keys = keys
        apply_policy(self.dp, policy)
        self.dp.clear_keys()

    def counters(self) -> dict[str, int]:
        """Counters named like the Python path's (egress_inserted, ingress_read, ...)."""
        st = self.dp.stats()
        out: dict[str, int] = {}
        for direction in ("egress", "ingress"):
            for name, value in zip(OUTCOMES, st[direction], strict=True):
                if value:
                    out[f"{direction}_{name}"] = value
        return out

    def stats(self) -> dict[str, Any]:
        """What `pdmv2 stats` adds for the native path."""
        st = self.dp.stats()
        handled = st["handled"]
        return {
            "datapath": "native",
            "packets_handled": handled,
            "handling_us_mean": st["busy_ns"] / handled / 1000 if handled else None,
            "flows_tracked": st["flows"],
            "global_pointer": {"link_local": st["gp_link_local"], "global": st["gp_global"]},
            "native": {
                "verdict_batches": st["batches"],
                "records_dropped_ring": st["records_dropped"],
                "records_sampled_out": st["records_sampled_out"],
                "record_sampling_1_in": st["record_stride"],
                "record_gaps": self.record_gaps,
                "tx_compensation": self.txcal.stats() if self.txcal is not None else {"on": False},
                "records_drained": self.records_drained,
                "held_for_key": st["held"],
                "held_expired": st["held_expired"],
                "key_requests": st["key_requests"],
                "key_requests_dropped": st["requests_dropped"],
                "keys_installed": self.keys_installed,
                "key_derivations_limited": self.keys_limited,
                "reservations": self.reservations,
                "not_for_us": st["not_read"],
                "control_errors": self.errors,
                "floors": self.dp.floors(),
            },
        }


def record_to_packet_record(rec: NativeRecord) -> PacketRecord | None:
    """What the metrics tracker takes, for the records that carry fields (inserted, read)."""
    if rec.outcome not in ("inserted", "read"):
        return None
    return PacketRecord.of(rec, rec.t_ns)


def json_line(rec: NativeRecord, wall_offset_ns: int) -> str:
    """The records.jsonl line of a record, in the Python path's format."""
    f = rec.flow
    t = (rec.t_ns + wall_offset_ns) / 1e9
    if rec.outcome not in ("inserted", "read"):
        return f'{{"t": {t:.6f}, "direction": "{rec.direction}", "status": "{rec.outcome}"}}\n'
    gp = "null" if rec.global_pointer is None else str(rec.global_pointer)
    kri = "null" if rec.kri is None else str(rec.kri)
    return (
        f'{{"direction": "{rec.direction}", "src": "{f.src_text}", "sport": {f.src_port}, "dst": "{f.dst_text}", '
        f'"dport": {f.dst_port}, "proto": {f.proto}, "mode": "{rec.mode.value}", "t": {t:.6f}, '
        f'"psntp": {rec.psntp}, "psnlr": {rec.psnlr}, "delta_tlr_ns": {rec.delta_tlr_as / 1e9}, '
        f'"delta_tls_ns": {rec.delta_tls_as / 1e9}, "global_pointer": {gp}, "kri": {kri}, '
        f'"status": "{rec.outcome}"}}\n'
    )


def attach(agent: Any, datapath: str) -> NativeLoop | None:
    """The native loop for ``agent`` when ``datapath`` is native and the extension is built, else None.

    Falls back to the Python data path with one clear log line when the extension is missing.
    """
    if datapath == "python":
        return None
    if not AVAILABLE:
        log.warning("native data path requested but %s: using the Python data path", UNAVAILABLE_REASON)
        return None
    engine, proc = agent.engine, agent.proc

    def sink(rec: NativeRecord) -> None:
        pr = record_to_packet_record(rec)
        if pr is not None:
            proc._record(pr)
        else:  # auth_failed, replay, stale_key: logged like the Python path (rate-limited)
            agent._logs.warn(f"{rec.direction}_{rec.outcome}", f"option from {rec.flow} not read", rec.t_ns)
        writer = agent._records
        if writer is not None:
            writer.write(json_line(rec, loop.wall_offset_ns))

    def limit(peer: bytes, now_ns: int) -> bool:
        if not proc.limiter.allow(peer, now_ns):
            return False
        proc.limiter.charge(peer, now_ns)
        return True

    durable = getattr(agent, "durable", None) or agent.reservation
    loop = NativeLoop(
        policy=agent.policy,
        keys=engine.keys,
        epoch_ns=engine.epoch_ns,
        floors=(engine.send_floor, engine.recv_floor, engine.reserved),
        wall_offset_ns=engine.wall_offset_ns,
        reserve=durable.reserve,
        record_rx=getattr(durable, "record_rx", None),
        rx_recorded=getattr(engine, "_rx_recorded", None),
        record_sink=sink,
        limit=limit,
        lock=agent._lock,
        on_gap=proc.metrics.forget_all,
        tx_calibration=agent.kernel_timestamps and getattr(agent, "tx_calibration", True),
    )
    log.info("native data path (C): NFQUEUE loop, option and AEAD in pdmv2.native._datapath")
    return loop
