"""Offline decoding of captures (``pdmv2 decode``): every PDM/PDMv2 option, opened where keys allow.

The file is read with scapy's raw readers (pcap and pcapng); the IPv6 packet is cut from the
link layer (Ethernet, Linux cooked v1/v2, raw IP) without re-serialising it, then read by the
same engine the agent uses, fed with both directions as an observer.
"""

from __future__ import annotations

import csv
import io
import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .core.doh import parse_packet
from .core.errors import AuthenticationError, ConfigError, DecodeError, ReplayError, UnknownKeyError
from .core.flow import PdmEngine, StaleKeyError
from .core.keyring import EitherEndKeyring
from .core.metrics import MetricsTracker, PacketRecord, summarize
from .core.option import PdmOption, Pdmv2EncryptedOption, decode_option
from .keyfiles import load_keys

__all__ = ["DecodedOption", "DecodeResult", "decode_capture", "render", "ipv6_from_frame"]

# pcap link types
_ETHERNET, _RAW, _RAW_IPV6, _LINUX_SLL, _LINUX_SLL2, _NULL = 1, 101, 229, 113, 276, 0


@dataclass(slots=True)
class DecodedOption:
    """One option found in a capture."""

    index: int
    """Frame number (1-based)."""
    time: float
    """Capture timestamp (s)."""
    src: str
    """Source address."""
    sport: int
    """Source port (0 for ICMPv6)."""
    dst: str
    """Destination address."""
    dport: int
    """Destination port."""
    proto: int
    """Upper-layer protocol."""
    format: str
    """pdm, pdmv2-clear, pdmv2-encrypted."""
    status: str
    """clear, opened, encrypted (no key), auth_failed, replay, stale_key, malformed."""
    psntp: int | None = None
    """PSNTP, when readable."""
    psnlr: int | None = None
    """PSNLR, when readable."""
    delta_tlr_ns: float | None = None
    """DELTATLR in ns, when readable."""
    delta_tls_ns: float | None = None
    """DELTATLS in ns, when readable."""
    global_pointer: int | None = None
    """Global Pointer, when readable."""
    kri: int | None = None
    """Sender's Kri that opened it."""
    random_number: int | None = None
    """Random Number (always in clear for PDMv2)."""
    f: int | None = None
    """F bit."""


@dataclass
class DecodeResult:
    """Options and per-flow metrics of one capture."""

    options: list[DecodedOption]
    """Every option, in capture order."""
    metrics: list[dict[str, Any]]
    """Per flow: rtt, server_delay, client_delay summaries (ns)."""
    frames: int
    """Frames read."""


def ipv6_from_frame(frame: bytes, linktype: int) -> bytes | None:
    """The IPv6 packet inside a captured frame, or None."""
    if linktype == _ETHERNET:
        off, ethertype = 12, struct.unpack_from(">H", frame, 12)[0] if len(frame) >= 14 else 0
        while ethertype in (0x8100, 0x88A8) and len(frame) >= off + 6:
            off += 4
            ethertype = struct.unpack_from(">H", frame, off)[0]
        return frame[off + 2 :] if ethertype == 0x86DD else None
    if linktype == _LINUX_SLL:
        return frame[16:] if len(frame) >= 16 and frame[14:16] == b"\x86\xdd" else None
    if linktype == _LINUX_SLL2:
        return frame[20:] if len(frame) >= 20 and frame[0:2] == b"\x86\xdd" else None
    if linktype in (_RAW, _RAW_IPV6):
        return frame if frame[:1] and frame[0] >> 4 == 6 else None
    if linktype == _NULL:
        return frame[4:] if len(frame) > 4 and frame[4] >> 4 == 6 else None
    return None


def _frames(path: Path) -> Any:
    from scapy.utils import RawPcapNgReader, RawPcapReader

    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ConfigError(str(path), "capture", exc.strerror or "cannot read") from None
    try:
        if magic == b"\x0a\x0d\x0d\x0a":
            reader: Any = RawPcapNgReader(str(path))
            for data, meta in reader:
                ts = (meta.tshigh << 32 | meta.tslow) / (meta.tsresol or 1_000_000) if hasattr(meta, "tshigh") else 0.0
                yield data, getattr(meta, "linktype", _ETHERNET), ts
        else:
            reader = RawPcapReader(str(path))
            for data, meta in reader:
                yield data, reader.linktype, meta.sec + meta.usec / (1e9 if getattr(reader, "nano", False) else 1e6)
    except Exception as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(path), "capture", f"not a readable pcap/pcapng file ({type(exc).__name__})") from None


def decode_capture(path: Path, keys_dir: Path | None) -> DecodeResult:
    """Decode every PDM/PDMv2 option in the capture."""
    keys = load_keys(keys_dir) if keys_dir is not None else None
    if keys_dir is not None and keys is None:
        raise ConfigError(str(keys_dir), "keys", "no *.json key files found")
    engine = PdmEngine(
        keys=EitherEndKeyring(keys) if keys is not None else None, grace_ns=3_600 * 10**9, idle_ns=10**18
    )
    tracker = MetricsTracker()
    values: dict[Any, dict[str, list[float]]] = {}
    out: list[DecodedOption] = []
    frames = 0
    for index, (frame, linktype, ts) in enumerate(_frames(path), start=1):
        frames += 1
        pkt = ipv6_from_frame(bytes(frame), linktype)
        if pkt is None:
            continue
        try:
            info = parse_packet(pkt)
        except DecodeError:
            continue  # a truncated capture (snaplen) or not IPv6: not ours to judge
        if info.pdm_option is None:
            continue
        f = info.flow
        item = DecodedOption(index, ts, f.src_text, f.src_port, f.dst_text, f.dst_port, f.proto, "?", "malformed")
        out.append(item)
        try:
            opt = decode_option(info.pdm_option)
        except DecodeError:
            continue
        item.format = {10: "pdm", 0x12: "pdmv2-clear", 0x22: "pdmv2-encrypted"}[info.pdm_option[1]]
        if not isinstance(opt, PdmOption):
            item.random_number, item.f = opt.random_number, opt.f
        try:
            got = engine.incoming(f, info.pdm_option, int(ts * 1e9))
        except UnknownKeyError:
            item.status = "encrypted"
            continue
        except ReplayError:
            item.status = "replay"
            continue
        except StaleKeyError:
            item.status = "stale_key"
            continue
        except AuthenticationError:
            item.status = "auth_failed"
            continue
        except DecodeError:
            continue
        item.status = "opened" if isinstance(opt, Pdmv2EncryptedOption) else "clear"
        item.psntp, item.psnlr, item.global_pointer, item.kri = got.psntp, got.psnlr, got.global_pointer, got.kri
        item.delta_tlr_ns, item.delta_tls_ns = got.delta_tlr_as / 1e9, got.delta_tls_as / 1e9
        for m in tracker.feed(PacketRecord(got.flow, got.psntp, got.psnlr, got.delta_tlr_as, got.delta_tls_as)):
            values.setdefault(m.flow, {}).setdefault(m.metric.value, []).append(m.value_ns)
    metrics = []
    for flow, by in values.items():
        entry: dict[str, Any] = {
            "src": flow.src_text,
            "sport": flow.src_port,
            "dst": flow.dst_text,
            "dport": flow.dst_port,
            "proto": flow.proto,
        }
        for name, vals in by.items():
            s = summarize(vals)
            entry[name] = (
                None
                if s is None
                else {"count": s.count, "min_ns": s.min, "p50_ns": s.p50, "p95_ns": s.p95, "max_ns": s.max}
            )
        metrics.append(entry)
    return DecodeResult(out, metrics, frames)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}"
    return str(v)


def render(result: DecodeResult, fmt: str) -> str:
    """Table, CSV or JSON text."""
    rows = [asdict(o) for o in result.options]
    if fmt == "json":
        return json.dumps({"frames": result.frames, "options": rows, "metrics": result.metrics}, indent=1) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        names = [f.name for f in DecodedOption.__dataclass_fields__.values()]
        writer = csv.DictWriter(buf, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    cols = [
        "index",
        "src",
        "sport",
        "dst",
        "dport",
        "proto",
        "format",
        "status",
        "psntp",
        "psnlr",
        "global_pointer",
        "kri",
        "f",
        "delta_tlr_ns",
        "delta_tls_ns",
    ]
    heads = [
        "#",
        "src",
        "sport",
        "dst",
        "dport",
        "p",
        "format",
        "status",
        "psntp",
        "psnlr",
        "gp",
        "kri",
        "f",
        "dtlr ns",
        "dtls ns",
    ]
    table = [heads] + [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.append(f"{len(rows)} option(s) in {result.frames} frame(s)")
    for m in result.metrics:
        for name in ("server_delay", "rtt", "client_delay"):
            s = m.get(name)
            if s:
                lines.append(
                    f"[{m['src']}]:{m['sport']} > [{m['dst']}]:{m['dport']} {name}: n={s['count']} "
                    f"p50 {s['p50_ns'] / 1e6:.3f} ms min {s['min_ns'] / 1e6:.3f} max {s['max_ns'] / 1e6:.3f}"
                )
    return "\n".join(lines) + "\n"
