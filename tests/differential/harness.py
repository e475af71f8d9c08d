"""Drive the Python engine (PacketProcessor over PdmEngine) and the native path with the same input.

Same packets, same clocks, same random draws: the Python engine gets a ScriptedRng whose
randrange(a, b) is ``a + u32 % (b - a)`` over a seeded stream of u32 values, and the native path's
random pool is fed the same stream in the same order (the native path draws with the same mapping).
Keys and reservations the native path asks for are served by the control-plane code the agent
uses (pdmv2.native.serve_requests), then the packet is processed again: the same as the Python
engine deriving inline.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any

from pdmv2 import DEFAULT_SUITE, client_secret
from pdmv2.core.errors import KeyWaitError
from pdmv2.core.flow import FlowState, PdmEngine
from pdmv2.core.keyring import ClientKeyring, KeyProvider, ServerKeyring
from pdmv2.core.keys import FiveTuple
from pdmv2.core.packetproc import PacketProcessor
from pdmv2.core.policy import parse_policy
from pdmv2.native import HOOK_EGRESS, HOOK_INGRESS, OUTCOMES, apply_policy, new_datapath, pack_tuple, serve_requests

SHARED, SALT = bytes(range(32)), bytes(32)
C, S = "2001:db8:1::10", "2001:db8:2::20"
MS = 1_000_000
SEC = 1_000 * MS


def client_keys(addr: str = C) -> ClientKeyring:
    cs = client_secret(DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_addr=addr)
    return ClientKeyring(DEFAULT_SUITE, ipaddress.IPv6Address(addr).packed, cs)


def server_keys() -> ServerKeyring:
    return ServerKeyring(
        DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_prefixes=(ipaddress.IPv6Network("2001:db8:1::/64"),)
    )


class Stream:
    """A seeded stream of u32 values, read by index."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self.values: list[int] = []

    def at(self, i: int) -> int:
        while len(self.values) <= i:
            self.values.append(self._rng.getrandbits(32))
        return self.values[i]


class ScriptedRng(random.Random):
    """randrange(a, b) = a + u32 % (b - a): the native path's mapping."""

    def __init__(self, stream: Stream) -> None:
        super().__init__(0)
        self.stream = stream
        self.used = 0

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:  # type: ignore[override]
        if stop is None:
            start, stop = 0, start
        v = self.stream.at(self.used)
        self.used += 1
        return start + v % (stop - start)


class Side:
    """One host, twice: the Python reference and the native path."""

    def __init__(self, keys: KeyProvider, policy: str, *, seed: int, max_flows: int = 65536, **engine: Any) -> None:
        self.keys = keys
        self.policy = parse_policy(policy)
        self.stream = Stream(seed)
        self.rng = ScriptedRng(self.stream)
        self.reservations: list[int] = []
        self.engine = PdmEngine(
            keys=keys,
            rng=self.rng,
            rotate_after=self.policy.rotate_after,
            grace_ns=self.policy.grace_ms * MS,
            max_flows=max_flows,
            reserve=self._reserve,
            **self._record_rx_kw(),
            **engine,
        )
        self.proc = PacketProcessor(self.engine, self.policy)
        self.dp = new_datapath(max_flows=max_flows, key_slots=1024, ring=1024)
        apply_policy(self.dp, self.policy, epoch_ns=self.engine.epoch_ns, max_tries=self.engine.max_tries)
        self.dp.configure(idle_ns=self.engine.idle_ns)
        self.fed = 0
        self.sync_floors()

    @staticmethod
    def _record_rx_kw() -> dict[str, Any]:
        """record_rx for engines that have it (issue 8: durable receive epochs)."""
        import inspect

        if "record_rx" in inspect.signature(PdmEngine).parameters:
            return {"record_rx": lambda epoch: True}
        return {}

    def _reserve(self, kri: int) -> bool:
        self.reservations.append(kri)
        return True

    def sync_floors(self) -> None:
        """Give the native path the engine's clock offset, floors and reservation (start/restart)."""
        e = self.engine
        self.dp.set_clock(wall_offset_ns=e.wall_offset_ns)
        # An engine without durable receive epochs: the native path's check is switched off.
        rx = getattr(e, "_rx_recorded", 1 << 62)
        self.dp.set_floors(send_floor=e.send_floor, recv_floor=e.recv_floor, reserved=e.reserved, rx_recorded=rx)

    def _top_up(self) -> None:
        room = 4096 - self.dp.stats()["pool"]
        values = [self.stream.at(self.fed + i) for i in range(room)]
        self.fed += self.dp.feed_random(values)

    def native(self, hook: int, packet: bytes, now: int) -> tuple[str, bytes | None, bool]:
        for _ in range(4):
            self._top_up()
            out, new, drop = self.dp.process(hook, packet, now)
            name = OUTCOMES[out]
            if name not in ("key_pending", "reserve_pending"):
                return name, new, bool(drop)
            serve_requests(self.dp, self.keys, self._native_reserve, record_rx=self._native_reserve)
        raise AssertionError(f"native path still waiting after the control plane answered: {name}")

    def _native_reserve(self, kri: int) -> bool:
        return True

    def python(self, hook: int, packet: bytes, now: int) -> tuple[str, bytes | None, bool]:
        try:
            v = self.proc.egress(packet, now) if hook == HOOK_EGRESS else self.proc.ingress(packet, now)
        except KeyWaitError:
            return "key_wait", None, False
        return v.outcome.value, v.packet, v.drop

    def both(self, hook: int, packet: bytes, now: int) -> tuple[str, bytes | None, bool]:
        """Process with both; assert the same outcome, bytes, verdict and random draws."""
        py = self.python(hook, packet, now)
        nat = self.native(hook, packet, now)
        assert nat == py, f"{'egress' if hook == HOOK_EGRESS else 'ingress'} differs: python {py[0]}, native {nat[0]}"
        assert self.fed - self.dp.stats()["pool"] == self.rng.used, "different numbers of random draws"
        return py

    def egress(self, packet: bytes, now: int) -> tuple[str, bytes | None, bool]:
        return self.both(HOOK_EGRESS, packet, now)

    def ingress(self, packet: bytes, now: int) -> tuple[str, bytes | None, bool]:
        return self.both(HOOK_INGRESS, packet, now)

    def expire(self, now: int) -> None:
        assert self.dp.expire(now) == self.engine.expire(now)

    def check_state(self) -> None:
        """Identical flow tables (in LRU order), per-flow state, replay bitmaps and engine globals."""
        e = self.engine
        assert self.dp.flows() == [pack_tuple(f) for f in e.flows]
        for flow, st in e.flows.items():
            got = self.dp.flow(pack_tuple(flow))
            assert got == expected_state(st), f"flow {flow} differs"
            for kri, bitmap in st.other_seen.items():
                seen = [i for i in range(len(bitmap) * 8) if bitmap[i >> 3] & (1 << (i & 7))]
                assert self.dp.seen(pack_tuple(flow), kri) == seen, f"replay bitmap of Kri {kri} differs"
        floors = self.dp.floors()
        assert (floors["send_floor"], floors["recv_floor"], floors["reserved"]) == (
            e.send_floor,
            e.recv_floor,
            e.reserved,
        )
        stats = self.dp.stats()
        assert (stats["gp_link_local"], stats["gp_global"]) == (e.global_pointer(0), e.global_pointer(1))  # type: ignore[arg-type]


def expected_state(st: FlowState) -> dict[str, Any]:
    """The native flow dict a Python FlowState corresponds to."""
    return {
        "flow": pack_tuple(st.flow),
        "next_psntp": st.next_psntp,
        "psnlr": st.psnlr,
        "last_recv_ns": st.last_recv_ns,
        "sent_before_recv_ns": st.sent_before_recv_ns,
        "last_send_ns": st.last_send_ns,
        "last_seen_ns": st.last_seen_ns,
        "own_kri": st.own_kri,
        "other_kri": st.other_kri,
        "other_prev_kri": st.other_prev_kri,
        "probe": st.probe,
        "prseq_state": st.own_prseq._state,
        "prseq_used": st.own_prseq.used,
        "other_rotated_ns": st.other_rotated_ns,
        "sent": st.sent,
        "received": st.received,
    }


def flow_of(src: str, sport: int, dst: str, dport: int, proto: int) -> FiveTuple:
    return FiveTuple.from_text(src, sport, dst, dport, proto)
