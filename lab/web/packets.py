"""Live decoding of the observer's capture (pure: bytes in, rows out; no I/O, no clock).

The same machinery as ``pdmv2 decode`` (pdmv2.capture): the IPv6 packet is cut from the frame,
its Destination Options walked by the agent's parser, the PDM option read by the engine an
observer uses (both directions, with the secondary servers' keys), and the per-packet records
fed to the metrics tracker.  Each packet is kept twice: as it is on the wire (Random Number, F,
ciphertext and tag) and as it reads with the keys (sequence numbers, Global Pointer, times).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pdmv2.capture import ipv6_from_frame
from pdmv2.core.doh import parse_packet
from pdmv2.core.errors import AuthenticationError, DecodeError, ReplayError, UnknownKeyError
from pdmv2.core.flow import PdmEngine, StaleKeyError
from pdmv2.core.keyring import CombinedKeyring, EitherEndKeyring, KeyProvider, parse_key_file
from pdmv2.core.keys import FiveTuple
from pdmv2.core.metrics import Metric, MetricsTracker, PacketRecord, summarize
from pdmv2.core.option import PdmOption, Pdmv2ClearOption, Pdmv2EncryptedOption, decode_option

__all__ = ["LiveDecoder", "keyring_from_texts", "flow_label"]

PROTO_NAMES = {6: "TCP", 17: "UDP", 58: "ICMPv6"}
_FORMATS = {10: "pdm", 0x12: "pdmv2-clear", 0x22: "pdmv2-encrypted"}


def keyring_from_texts(texts: dict[str, str]) -> KeyProvider | None:
    """One keyring from key files' texts (name -> JSON), read in memory; None when there is none."""
    rings = [parse_key_file(text, name) for name, text in sorted(texts.items())]
    if not rings:
        return None
    return CombinedKeyring(rings) if len(rings) > 1 else rings[0]


def flow_label(flow: FiveTuple) -> str:
    """``[src]:sport > [dst]:dport UDP`` (no ports for ICMPv6)."""
    proto = PROTO_NAMES.get(flow.proto, str(flow.proto))
    if flow.proto == 58:
        return f"{flow.src_text} > {flow.dst_text} {proto}"
    return f"[{flow.src_text}]:{flow.src_port} > [{flow.dst_text}]:{flow.dst_port} {proto}"


@dataclass
class _FlowSeries:
    label: str
    samples: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)


class LiveDecoder:
    """Feed it the frames of a capture as they come; it keeps the last packets and a minute of metrics."""

    def __init__(self, keys: KeyProvider | None, *, keep_packets: int = 40, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self.packets: deque[dict[str, Any]] = deque(maxlen=keep_packets)
        self.frames = 0
        self.options = 0
        self.opened = 0
        self._flows: dict[FiveTuple, _FlowSeries] = {}
        self.set_keys(keys)

    def set_keys(self, keys: KeyProvider | None) -> None:
        """Use these keys from now on (a fresh engine: what was read stays read)."""
        self.has_keys = keys is not None
        self._engine = PdmEngine(
            keys=EitherEndKeyring(keys) if keys is not None else None, grace_ns=3_600 * 10**9, idle_ns=10**18
        )
        self._tracker = MetricsTracker()

    def feed(self, frame: bytes, linktype: int, ts: float) -> dict[str, Any] | None:
        """Read one captured frame; returns the row kept for it (None when it has no PDM option)."""
        self.frames += 1
        pkt = ipv6_from_frame(frame, linktype)
        if pkt is None:
            return None
        try:
            info = parse_packet(pkt)
        except DecodeError:
            return None
        if info.pdm_option is None:
            return None
        self.options += 1
        f = info.flow
        wire: dict[str, Any] = {"type": f"0x{info.pdm_option[0]:02x}", "length": f"0x{info.pdm_option[1]:02x}"}
        opened: dict[str, Any] = {"status": "malformed"}
        row: dict[str, Any] = {
            "n": self.frames,
            "t": ts,
            "src": f.src_text,
            "dst": f.dst_text,
            "sport": f.src_port,
            "dport": f.dst_port,
            "proto": PROTO_NAMES.get(f.proto, str(f.proto)),
            "bytes": len(pkt),
            "wire": wire,
            "opened": opened,
        }
        self.packets.append(row)
        try:
            opt = decode_option(info.pdm_option)
        except DecodeError:
            wire["format"] = "malformed"
            return row
        wire["format"] = _FORMATS.get(info.pdm_option[1], "?")
        if isinstance(opt, Pdmv2EncryptedOption):
            wire.update(
                random_number=opt.random_number, f=opt.f, ciphertext=opt.sealed[:14].hex(), tag=opt.sealed[14:].hex()
            )
        elif isinstance(opt, Pdmv2ClearOption):
            wire.update(random_number=opt.random_number, f=opt.f, psntp=opt.fields.psntp, psnlr=opt.fields.psnlr)
        elif isinstance(opt, PdmOption):
            wire.update(psntp=opt.psntp, psnlr=opt.psnlr)
        try:
            got = self._engine.incoming(f, info.pdm_option, int(ts * 1e9))
        except UnknownKeyError:
            opened["status"] = "no key" if self.has_keys else "no keys loaded"
            return row
        except ReplayError:
            opened["status"] = "replay"
            return row
        except StaleKeyError:
            opened["status"] = "stale key"
            return row
        except AuthenticationError:
            opened["status"] = "auth failed"
            return row
        except DecodeError:
            return row
        self.opened += isinstance(opt, Pdmv2EncryptedOption)
        opened.update(
            status="opened" if isinstance(opt, Pdmv2EncryptedOption) else "clear",
            psntp=got.psntp,
            psnlr=got.psnlr,
            global_pointer=got.global_pointer,
            kri=got.kri,
            delta_tlr_ns=got.delta_tlr_as / 1e9,
            delta_tls_ns=got.delta_tls_as / 1e9,
        )
        for m in self._tracker.feed(PacketRecord.of(got)):
            if m.metric is Metric.CLIENT_DELAY or m.ambiguous:
                continue
            series = self._flows.get(m.flow)
            if series is None:
                series = self._flows[m.flow] = _FlowSeries(flow_label(m.flow))
            series.samples.setdefault(m.metric.value, deque(maxlen=5000)).append((ts, m.value_ns))
            opened[m.metric.value + "_ns"] = m.value_ns
        return row

    def flows(self, now: float) -> list[dict[str, Any]]:
        """Per flow, over the last ``window_s`` seconds before ``now``: p50 and the samples (ms, age s)."""
        out = []
        for flow, series in list(self._flows.items()):
            entry: dict[str, Any] = {"flow": series.label, "proto": PROTO_NAMES.get(flow.proto, str(flow.proto))}
            recent = False
            for name in (Metric.SERVER_DELAY.value, Metric.RTT.value):
                dq = series.samples.get(name, deque())
                while dq and dq[0][0] < now - self.window_s:
                    dq.popleft()
                pts = list(dq)
                s = summarize([v for _, v in pts])
                entry[name] = {
                    "count": len(pts),
                    "p50_ms": None if s is None else s.p50 / 1e6,
                    "last_ms": pts[-1][1] / 1e6 if pts else None,
                    "points": [[round(t - now, 3), round(v / 1e6, 4)] for t, v in pts[:: -(-len(pts) // 300) or 1]],
                }
                recent = recent or bool(pts)
            if recent:
                out.append(entry)
            else:  # nothing in the last minute: forget the flow
                del self._flows[flow]
        out.sort(key=lambda e: e["flow"])
        return out
