"""Offline decoding of captures (``pdmv2 decode``): every PDM/PDMv2 option, opened where keys allow.

The file is read with scapy's raw readers (pcap and pcapng); the IPv6 packet is cut from the
link layer (Ethernet, Linux cooked v1/v2, raw IP) without re-serialising it, then read by the
same engine the agent uses, fed with both directions as an observer, in capture order.

``write_decrypted`` (``pdmv2 decode --write``) walks the capture the same way and writes a pcapng
copy in which every encrypted option that opened is replaced by the clear layout (Option Length
0x12, same fields) with a packet comment saying so; see docs/wireshark.md.
"""

from __future__ import annotations

import csv
import io
import json
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .core.doh import PacketInfo, insert_option, padding, parse_packet, remove_option
from .core.errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    InsertError,
    ReplayError,
    UnknownKeyError,
)
from .core.flow import DEFAULT_EPOCH_NS, PdmEngine, Received, StaleKeyError
from .core.keyring import EitherEndKeyring
from .core.metrics import MetricsTracker, PacketRecord, summarize
from .core.option import (
    FIELDS_LEN,
    PdmOption,
    Pdmv2ClearOption,
    Pdmv2EncryptedOption,
    Pdmv2Fields,
    decode_option,
    encode_option,
)
from .core.timing import encode_delta
from .keyfiles import load_keys

__all__ = [
    "DecodedOption",
    "DecodeResult",
    "WriteSummary",
    "decode_capture",
    "write_decrypted",
    "render",
    "ipv6_from_frame",
]

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
    scale_dtlr: int | None = None
    """ScaleDTLR, when readable (opened options: the canonical RFC 8250 encoding of the time read)."""
    scale_dtls: int | None = None
    """ScaleDTLS, when readable (as scale_dtlr)."""
    delta_tlr: int | None = None
    """DELTATLR as sent (16 significant bits), when readable."""
    delta_tls: int | None = None
    """DELTATLS as sent (16 significant bits), when readable."""
    ciphertext: str | None = None
    """Encrypted layout: the 14 octets of ciphertext, hex."""
    tag: str | None = None
    """Encrypted layout: the 16-octet AEAD tag, hex."""
    error: str | None = None
    """Why the option was not read (malformed, encrypted, auth_failed, replay, stale_key)."""


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


@dataclass(frozen=True, slots=True)
class _Frame:
    """One captured frame as read from the file."""

    data: bytes
    """Frame octets as captured."""
    linktype: int
    """pcap link type of the frame."""
    ts_ns: int
    """Capture timestamp in ns since the epoch (exact for pcap/pcapng resolutions up to 1 ns)."""
    wirelen: int
    """Original length on the wire."""
    comments: tuple[bytes, ...]
    """pcapng comments already on the packet."""


def _frames(path: Path) -> Iterator[_Frame]:
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
                ticks = meta.tshigh << 32 | meta.tslow
                yield _Frame(
                    bytes(data),
                    meta.linktype,
                    ticks * 10**9 // (meta.tsresol or 1_000_000),
                    meta.wirelen or len(data),
                    tuple(meta.comments or ()),
                )
        else:
            reader = RawPcapReader(str(path))
            unit = 1 if getattr(reader, "nano", False) else 1000
            for data, meta in reader:
                yield _Frame(bytes(data), reader.linktype, meta.sec * 10**9 + meta.usec * unit, meta.wirelen, ())
    except Exception as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(path), "capture", f"not a readable pcap/pcapng file ({type(exc).__name__})") from None


@dataclass(slots=True)
class _Seen:
    """One frame of the walk, with what was found in it."""

    frame: _Frame
    """The frame."""
    packet: bytes | None = None
    """Its IPv6 packet (a suffix of the frame), if any."""
    info: PacketInfo | None = None
    """The chain walk of the packet, when it carries a PDM option."""
    item: DecodedOption | None = None
    """The option as reported, when there is one."""
    got: Received | None = None
    """What the engine read, when it read it."""


# Why an option was not read, by the engine's exception (DecodedOption.status).
_STATUS = {
    UnknownKeyError: "encrypted",
    ReplayError: "replay",
    StaleKeyError: "stale_key",
    AuthenticationError: "auth_failed",
    DecodeError: "malformed",
}


OFFLINE_TRIES = 64


def _engine(keys_dir: Path | None, epoch_ns: int) -> PdmEngine:
    keys = load_keys(keys_dir) if keys_dir is not None else None
    if keys_dir is not None and keys is None:
        raise ConfigError(str(keys_dir), "keys", "no *.json key files found")
    # An observer: both ends' keys, a whole capture's worth of grace and idle time, and (offline,
    # no hurry) enough tries to find a sender's key at once wherever the resync search would.
    # Capture timestamps are wall-clock time, which is what key epochs follow.
    return PdmEngine(
        keys=EitherEndKeyring(keys) if keys is not None else None,
        grace_ns=3_600 * 10**9,
        idle_ns=10**18,
        epoch_ns=epoch_ns,
        max_tries=OFFLINE_TRIES,
    )


def _walk(path: Path, keys_dir: Path | None, epoch_ns: int = DEFAULT_EPOCH_NS) -> Iterator[_Seen]:
    """Every frame of the capture; options read by one engine in capture order."""
    engine = _engine(keys_dir, epoch_ns)
    for index, frame in enumerate(_frames(path), start=1):
        seen = _Seen(frame)
        pkt = ipv6_from_frame(frame.data, frame.linktype)
        if pkt is None:
            yield seen
            continue
        seen.packet = pkt
        cut = len(frame.data) < frame.wirelen  # snaplen: the headers may still all be there
        try:
            info = parse_packet(pkt, wire_len=frame.wirelen - (len(frame.data) - len(pkt)) if cut else None)
        except DecodeError:
            yield seen  # cut before the end of the headers, or not IPv6: not ours to judge
            continue
        if info.pdm_option is None:
            yield seen
            continue
        seen.info = info
        ts = frame.ts_ns / 1e9
        f = info.flow
        item = DecodedOption(
            index=index,
            time=ts,
            src=f.src_text,
            sport=f.src_port,
            dst=f.dst_text,
            dport=f.dst_port,
            proto=f.proto,
            format="?",
            status="malformed",
        )
        seen.item = item
        try:
            opt = decode_option(info.pdm_option)
        except DecodeError as exc:
            item.error = str(exc)
            yield seen
            continue
        item.format = {10: "pdm", 0x12: "pdmv2-clear", 0x22: "pdmv2-encrypted"}[info.pdm_option[1]]
        if isinstance(opt, Pdmv2EncryptedOption):
            item.ciphertext, item.tag = opt.sealed[:FIELDS_LEN].hex(), opt.sealed[FIELDS_LEN:].hex()
        if not isinstance(opt, PdmOption):
            item.random_number, item.f = opt.random_number, opt.f
        try:
            got = engine.incoming(f, info.pdm_option, frame.ts_ns)
        except (UnknownKeyError, ReplayError, StaleKeyError, AuthenticationError, DecodeError) as exc:
            item.status = next(v for k, v in _STATUS.items() if isinstance(exc, k))
            item.error = str(exc)
            yield seen
            continue
        seen.got = got
        item.status = "opened" if isinstance(opt, Pdmv2EncryptedOption) else "clear"
        item.psntp, item.psnlr, item.global_pointer, item.kri = got.psntp, got.psnlr, got.global_pointer, got.kri
        item.delta_tlr_ns, item.delta_tls_ns = got.delta_tlr_as / 1e9, got.delta_tls_as / 1e9
        if isinstance(opt, Pdmv2ClearOption):  # exactly as sent
            fl = opt.fields
            item.scale_dtlr, item.scale_dtls, item.delta_tlr, item.delta_tls = (
                fl.scale_dtlr,
                fl.scale_dtls,
                fl.delta_tlr,
                fl.delta_tls,
            )
        elif isinstance(opt, PdmOption):
            item.scale_dtlr, item.scale_dtls, item.delta_tlr, item.delta_tls = (
                opt.scale_dtlr,
                opt.scale_dtls,
                opt.delta_tlr,
                opt.delta_tls,
            )
        else:
            # The engine gives times, not the 14 plaintext octets: re-encode them the RFC 8250 way
            # (identical for every sender that encodes canonically, as this project's agent does).
            item.delta_tlr, item.scale_dtlr = encode_delta(got.delta_tlr_as)
            item.delta_tls, item.scale_dtls = encode_delta(got.delta_tls_as)
        yield seen


def decode_capture(path: Path, keys_dir: Path | None, *, epoch_ns: int = DEFAULT_EPOCH_NS) -> DecodeResult:
    """Decode every PDM/PDMv2 option in the capture (``epoch_ns``: the agents' key_epoch_s)."""
    tracker = MetricsTracker()
    values: dict[Any, dict[str, list[float]]] = {}
    out: list[DecodedOption] = []
    frames = 0
    for seen in _walk(path, keys_dir, epoch_ns):
        frames += 1
        if seen.item is not None:
            out.append(seen.item)
        got = seen.got
        if got is None:
            continue
        for m in tracker.feed(PacketRecord.of(got)):
            if m.ambiguous:
                continue  # pipelined requests: left out of the summary (docs/agent.md)
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


# -- decrypted copy (pdmv2 decode --write) ---------------------------------------------------------


@dataclass
class WriteSummary:
    """What ``write_decrypted`` did."""

    out: Path
    """The pcapng file written."""
    frames: int
    """Frames copied (all of them, in order)."""
    decrypted: int
    """Encrypted options rewritten into the clear layout."""
    left: dict[str, int] = field(default_factory=dict)
    """PDMv2 encrypted or malformed options left as captured, by status (encrypted, auth_failed...)."""

    def __str__(self) -> str:
        left = ", ".join(f"{n} {why}" for why, n in sorted(self.left.items())) or "none"
        return (
            f"wrote {self.out}: {self.frames} frame(s), {self.decrypted} option(s) decrypted, left as captured: {left}"
        )


_WHY = {
    "encrypted": "no key for this flow",
    "auth_failed": "it did not authenticate with any expected Kri (forged, corrupted or another key)",
    "replay": "its Random Number was already seen under this Kri (a replay)",
    "stale_key": "it was sealed with a previous Kri after the grace window",
    "malformed": "malformed",
}


def _clear_option(item: DecodedOption) -> bytes:
    """The clear layout (Option Length 0x12) of an option the engine opened; same fields, RN and F."""
    assert item.random_number is not None and item.f is not None and item.global_pointer is not None
    assert item.psntp is not None and item.psnlr is not None
    assert item.scale_dtlr is not None and item.scale_dtls is not None
    assert item.delta_tlr is not None and item.delta_tls is not None
    fields = Pdmv2Fields(
        scale_dtlr=item.scale_dtlr,
        scale_dtls=item.scale_dtls,
        global_pointer=item.global_pointer,
        psntp=item.psntp,
        psnlr=item.psnlr,
        delta_tlr=item.delta_tlr,
        delta_tls=item.delta_tls,
    )
    return encode_option(Pdmv2ClearOption(random_number=item.random_number, f=item.f, fields=fields))


def _replace_option(packet: bytes, info: PacketInfo, option: bytes, *, cut: bool = False) -> bytes:
    """The IPv6 packet with its PDM option replaced by ``option`` (shorter); lengths stay valid.

    The option is taken out and put back the way the agent inserts one, so the header is the one
    a clear sender would have built.  Where an option cannot be inserted (a Routing header before
    the upper layer) or the capture ``cut`` the packet short (snaplen), it is overwritten in place
    and the octets it frees become padding.
    """
    try:
        if cut:
            raise InsertError("cut", "captured without its end")
        stripped, _ = remove_option(packet, info)
        return insert_option(stripped, option)
    except InsertError:
        assert info.pdm_offset is not None and info.pdm_option is not None
        start, end = info.pdm_offset, info.pdm_offset + len(info.pdm_option)
        return packet[:start] + option + padding(len(info.pdm_option) - len(option)) + packet[end:]


def _copy_of(seen: _Seen) -> tuple[bytes, int, list[bytes], str | None]:
    """(frame octets, wire length, comments, outcome) of one frame in the decrypted copy.

    The outcome is "decrypted", the status of a PDMv2 option left as captured, or None.
    """
    frame, item, packet, info = seen.frame, seen.item, seen.packet, seen.info
    comments = list(frame.comments)
    if item is None or packet is None or info is None or info.pdm_option is None:
        return frame.data, frame.wirelen, comments, None
    original = info.pdm_option
    if item.status == "opened":
        option = _clear_option(item)
        cut = len(frame.data) < frame.wirelen
        data = frame.data[: len(frame.data) - len(packet)] + _replace_option(packet, info, option, cut=cut)
        comments.append(
            f"PDMv2 decrypted by pdmv2 decode --write: the option was sent encrypted (Option Length "
            f"0x{original[1]:02x}, {len(original)} octets) and authenticated (AEAD tag verified, Kri "
            f"{item.kri}); shown here in the clear layout (Option Length 0x{option[1]:02x}, {len(option)} "
            f"octets) with the same fields".encode()
        )
        return data, frame.wirelen - (len(frame.data) - len(data)), comments, "decrypted"
    if item.format not in ("pdmv2-encrypted", "?"):
        return frame.data, frame.wirelen, comments, None  # sent in the clear: nothing to do
    detail = f" ({item.error})" if item.status == "malformed" and item.error else ""
    comments.append(
        f"PDMv2 option left as captured (Option Length 0x{original[1]:02x}, {len(original)} octets): "
        f"not decrypted because {_WHY[item.status]}{detail}".encode()
    )
    return frame.data, frame.wirelen, comments, item.status


def write_decrypted(capture: Path, keys_dir: Path, out: Path, *, epoch_ns: int = DEFAULT_EPOCH_NS) -> WriteSummary:
    """Write a pcapng copy of ``capture`` with every encrypted option that opens in the clear layout.

    Each rewritten packet gets a comment saying it was decrypted, its original Option Length and
    that it authenticated; an encrypted (or malformed) option that does not open is left as
    captured with a comment saying why.  Upper-layer checksums do not cover extension headers, so
    they stay valid; Hdr Ext Len, padding and Payload Length are rebuilt.  Frames keep their order,
    timestamps (to the microsecond) and link-layer headers.
    """
    from scapy.packet import Raw
    from scapy.utils import EDecimal, PcapNgWriter

    if out.exists() and out.resolve() == capture.resolve():
        raise ConfigError(str(out), "write", "would overwrite the capture being read")
    walk = _walk(capture, keys_dir, epoch_ns)  # opens the key files before anything is written
    summary = WriteSummary(out, 0, 0)
    left: Counter[str] = Counter()
    partial = out.with_name(out.name + ".partial")  # renamed once complete: never a half-written copy
    try:
        writer = PcapNgWriter(str(partial))
    except OSError as exc:
        raise ConfigError(str(out), "write", exc.strerror or "cannot write") from None
    ifnames: dict[int, str | None] = {}
    try:
        for seen in walk:
            data, wirelen, comments, outcome = _copy_of(seen)
            if outcome == "decrypted":
                summary.decrypted += 1
            elif outcome is not None:
                left[outcome] += 1
            linktype = seen.frame.linktype
            if linktype not in ifnames:
                # scapy writes one interface block with the file header and one per new interface
                # name: a capture with several link types gets one name per extra link type.
                ifnames[linktype] = None if not ifnames else f"linktype-{linktype}"
            pkt = Raw(data)
            pkt.time = EDecimal(seen.frame.ts_ns) / 10**9
            pkt.comments = comments or None
            if ifnames[linktype] is not None:
                pkt.sniffed_on = ifnames[linktype]
            writer.linktype = linktype
            if not writer.header_present:
                writer.write_header(pkt)
            writer.write_packet(pkt, wirelen=max(wirelen, len(data)))
            summary.frames += 1
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    writer.close()
    partial.replace(out)
    summary.left = dict(left)
    return summary


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
