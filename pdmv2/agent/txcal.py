"""Transmit calibration for the native path: how long from the clock read to the device (an edge).

The native path reads the clock just before it seals an egress option, then gives the verdict;
the packet reaches the device (where a capture sees it leave) some microseconds later: 15 µs warm,
40 µs after an idle spell, on this project's 2-core VM.  Left alone that time makes every server
delay too small and every RTT too large by the same amount (docs/agent.md, Timestamps).

This module measures it where a capture would: an AF_PACKET socket sees the host's own outgoing
packets that carry an encrypted PDMv2 option (a classic BPF filter in the kernel lets only those
through; a small receive buffer samples them when they are many) with the kernel's timestamp of
the moment the packet passed the device's tap.  Each is matched with the native path's record of
the same packet (5-tuple and the option's clear RN/F field) and its clock read; the median of
recent differences, warm and cold apart, is handed back to the C path, which adds it to its clock
read from then on.  The records carry the compensation each packet got, so a sample is always
measured from the raw read (no feedback).

It needs kernel receive timestamps on (the agent holds them on unless started with
``--kernel-timestamps off``); without them the tap's times would be read late and it stays off.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import statistics
import struct
from collections import OrderedDict, deque
from collections.abc import Callable

from ..core.keys import FiveTuple
from ..native import NativeRecord

__all__ = ["TxCalibrator", "bpf_outgoing_pdmv2"]

log = logging.getLogger("pdmv2.agent")

ETH_P_IPV6 = 0x86DD
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SKF_AD_PROTOCOL = -0x1000 + 0  # SKF_AD_OFF + SKF_AD_PROTOCOL (skb->protocol)
SKF_AD_PKTTYPE = -0x1000 + 4  # SKF_AD_OFF + SKF_AD_PKTTYPE
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SNAP = 128  # IPv6 header, the Destination Options header with the option, the ports

WINDOW = 64  # samples per class for the median
MIN_SAMPLES = 8  # before any compensation is applied
MAX_US = 500  # a sample above this (a descheduled VM, a full queue) is not the path's latency

# classic BPF opcodes
_LD_W_ABS, _LD_B_ABS, _JEQ_K, _RET_K = 0x20, 0x30, 0x15, 0x06


def bpf_outgoing_pdmv2() -> list[tuple[int, int, int, int]]:
    """Outgoing IPv6 packets whose first extension header is Destination Options starting with an
    encrypted PDMv2 option (type 0x0F, length 0x22); offsets from the IPv6 header (SOCK_DGRAM).

    The socket is ETH_P_ALL (only those see outgoing packets), so the filter checks the protocol.
    """
    return [
        (_LD_W_ABS, 0, 0, SKF_AD_PKTTYPE & 0xFFFFFFFF),
        (_JEQ_K, 0, 9, PACKET_OUTGOING),
        (_LD_W_ABS, 0, 0, SKF_AD_PROTOCOL & 0xFFFFFFFF),
        (_JEQ_K, 0, 7, ETH_P_IPV6),
        (_LD_B_ABS, 0, 0, 6),  # Next Header
        (_JEQ_K, 0, 5, 60),
        (_LD_B_ABS, 0, 0, 42),  # first option's type
        (_JEQ_K, 0, 3, 0x0F),
        (_LD_B_ABS, 0, 0, 43),  # its length
        (_JEQ_K, 0, 1, 0x22),
        (_RET_K, 0, 0, SNAP),
        (_RET_K, 0, 0, 0),
    ]


def _attach(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    insns = b"".join(struct.pack("HBBI", *i) for i in prog)
    buf = ctypes.create_string_buffer(insns)
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def parse_tap(pkt: bytes) -> tuple[FiveTuple, int] | None:
    """(5-tuple, RN<<1|F) of an outgoing packet the filter let through, or None."""
    if len(pkt) < 48 or pkt[6] != 60:
        return None
    doh_len = (pkt[41] + 1) * 8
    upper, at = pkt[40], 40 + doh_len
    rnf = (pkt[46] << 8) | pkt[47]
    if upper in (6, 17):
        if len(pkt) < at + 4:
            return None
        sport, dport = struct.unpack_from(">HH", pkt, at)
    elif upper == 58:
        sport = dport = 0
    else:
        return None
    return FiveTuple(pkt[8:24], sport, pkt[24:40], dport, upper), rnf


def _stamp(anc: list[tuple[int, int, bytes]]) -> int | None:
    """The SO_TIMESTAMPNS time (realtime ns) among a recvmsg's ancillary data."""
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            return int(sec) * 10**9 + int(nsec)
    return None


class TxCalibrator:
    """Samples the clock-read-to-device time of the host's own PDMv2 packets; see the module doc."""

    def __init__(self, apply: Callable[[int, int], None], wall_offset_ns: Callable[[], int]) -> None:
        self._apply = apply
        self._wall_offset_ns = wall_offset_ns
        self.sock: socket.socket | None = None
        self._recent: OrderedDict[tuple[FiveTuple, int], tuple[int, bool]] = OrderedDict()
        self._taps: OrderedDict[tuple[FiveTuple, int], int] = OrderedDict()
        self.samples: dict[bool, deque[int]] = {False: deque(maxlen=WINDOW), True: deque(maxlen=WINDOW)}
        self.applied = (0, 0)
        self.matched = 0
        try:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
            _attach(s, bpf_outgoing_pdmv2())
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            s.setblocking(False)
            self.sock = s
        except OSError as exc:
            log.warning("transmit calibration off (%s): egress times are the clock read before sealing", exc)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def on_record(self, rec: NativeRecord) -> None:
        """Remember the raw clock read of each encrypted option sent (bounded)."""
        if rec.direction != "egress" or rec.outcome != "inserted" or rec.kri is None:
            return
        key = (rec.flow, rec.rnf)
        self._recent[key] = (rec.t_ns - rec.comp_ns, rec.cold)
        while len(self._recent) > 4096:
            self._recent.popitem(last=False)
        tap = self._taps.pop(key, None)
        if tap is not None:
            self._sample(tap, rec.t_ns - rec.comp_ns, rec.cold)

    def poll(self, limit: int = 256) -> None:
        """Read what the tap caught (non-blocking), match it, update and apply the estimates."""
        if self.sock is None:
            return
        offset = self._wall_offset_ns()
        for _ in range(limit):
            try:
                pkt, anc, _flags, _addr = self.sock.recvmsg(SNAP, socket.CMSG_SPACE(16))
            except OSError:  # nothing more to read now (BlockingIOError), or the socket failed
                break
            tap_ns = _stamp(anc)
            got = parse_tap(pkt)
            if tap_ns is None or got is None:
                continue
            mono = tap_ns - offset
            read = self._recent.pop(got, None)
            if read is None:  # its record is not drained yet
                self._taps[got] = mono
                while len(self._taps) > 1024:
                    self._taps.popitem(last=False)
            else:
                self._sample(mono, *read)
        self._update()

    def _sample(self, tap_mono: int, read_mono: int, cold: bool) -> None:
        lat = tap_mono - read_mono
        if 0 <= lat <= MAX_US * 1000:
            self.samples[cold].append(lat)
            self.matched += 1

    def _update(self) -> None:
        est = [
            int(statistics.median(self.samples[c])) if len(self.samples[c]) >= MIN_SAMPLES else None
            for c in (False, True)
        ]
        warm = est[0] if est[0] is not None else (est[1] or 0)
        cold = est[1] if est[1] is not None else warm
        if (warm, cold) != self.applied and (abs(warm - self.applied[0]) > 500 or abs(cold - self.applied[1]) > 500):
            self._apply(warm, cold)
            self.applied = (warm, cold)

    def stats(self) -> dict[str, object]:
        return {
            "on": self.sock is not None,
            "warm_us": self.applied[0] / 1000,
            "cold_us": self.applied[1] / 1000,
            "samples": self.matched,
        }
