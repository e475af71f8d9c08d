"""Per-flow PDM state and the engine that builds and reads options (pure: ``now`` is an argument).

The draft's table (-03 §4.4: 5-tuple, own Kri, other Kri) plus RFC 8250's PSNTP, PSNLR and
last send/receive times.  A flow is keyed by its 5-tuple as seen from this host (src = local);
a packet received is looked up by its reversed 5-tuple, so both directions are one flow.
ICMPv6 has no ports: it is keyed with ports 0 (echo request and reply are one flow).

Keys and nonces (docs/protocol.md §8).  A (key, nonce) pair must never be used twice, also when
this host forgets a flow (idle expiry, eviction) or restarts.  The Kri is therefore anchored to
the wall clock: Kri = key epoch * 2^16 + rotation, where the key epoch is wall time divided by
``epoch_ns``.  Every flow moves to the current epoch's first usable Kri when the epoch changes,
and to the next rotation when its PRSEQ is used up (or after ``rotate_after`` packets).  A key is
never used in an epoch this host may have used it in before it lost the state: forgotten flows
raise a floor, a restart starts from the persisted reservation (or waits for the next epoch), and
every Kri is reserved (``reserve`` callback, written to disk by the agent) before it is used.

The receiver reads only the low bit of the sender's Kri (F) and guesses the rest from its own
state and clock, with at most ``max_tries`` candidates per packet and a search that goes on across
packets when it has lost the sender (§8).  Replays are refused per key with a bitmap of Random
Numbers seen; a receiver that has lost a flow's state accepts only keys above a floor, so old
packets replayed after a restart or an eviction do not open into measurements.
"""

from __future__ import annotations

import random
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from .crypto import OptionCipher
from .errors import AuthenticationError, CryptoError, EncodeError, KeyWaitError, ReplayError, UnknownKeyError
from .keyring import KeyProvider
from .keys import KRI_ROTATION_BITS, FiveTuple, kri_epoch, kri_of, session_key
from .option import (
    OPTION_TYPE_PDM,
    PDMV2_VERSION,
    V2_HEADER_LEN,
    OptionLength,
    PdmOption,
    Pdmv2ClearOption,
    decode_option,
    encode_option,
    option_size,
)
from .prseq import PRSEQ_PERIOD, Prseq
from .timing import ATTOSECONDS_PER_NS, decode_delta, encode_delta

__all__ = [
    "Mode",
    "AddrType",
    "address_type",
    "StaleKeyError",
    "PdmFields",
    "Sent",
    "Received",
    "FlowState",
    "PdmEngine",
    "DEFAULT_EPOCH_NS",
    "RESERVE_AHEAD",
]

_U16 = 0xFFFF
# Per-packet path: pack and unpack with precompiled structs instead of building option objects;
# option.py holds the same layouts for the public codec (tests check both agree).
_V2_HEADER = struct.Struct(">BBHH")
_FIELDS = struct.Struct(">BBIHHHH")
_VRSN_RES = PDMV2_VERSION << 12
_ENC_PREFIX = bytes((OPTION_TYPE_PDM, OptionLength.PDMV2_ENCRYPTED, PDMV2_VERSION << 4, 0))

DEFAULT_EPOCH_NS = 8_000_000_000
"""Length of a key epoch (policy ``key_epoch_s``); both ends of a flow must use the same."""
RESERVE_AHEAD = 15
"""Rotations reserved at once, in aligned blocks of 16 (a bit mask): one disk write per epoch and per
16 rotations."""
_LAST_ROTATION = (1 << KRI_ROTATION_BITS) - 1
_RESYNC_ROTATIONS = 32  # a receiver that lost the sender searches rotations 0..31 of three epochs
_RESYNC_DELTAS = (0, -1, 1)
_RESYNC_SPACE = len(_RESYNC_DELTAS) * _RESYNC_ROTATIONS // 2  # candidates of one parity
_MAX_PROBES = 4096  # resync cursors kept for flows the receiver has no state for
_BITMAP_OCTETS = (PRSEQ_PERIOD + 1) // 8
_COMPACT_AFTER = 1024  # flows forgotten at once after which the table is copied to shrink it


class Mode(StrEnum):
    """What a policy puts in a packet."""

    OFF = "off"
    PDM = "pdm"
    PDMV2_CLEAR = "pdmv2-clear"
    PDMV2_ENCRYPTED = "pdmv2-encrypted"

    @property
    def option_size(self) -> int:
        """Octets of the option with its Type and Length (0 for off)."""
        return _OPTION_SIZE[self]


_OPTION_SIZE = {
    Mode.OFF: 0,
    Mode.PDM: option_size(OptionLength.PDM),
    Mode.PDMV2_CLEAR: option_size(OptionLength.PDMV2_CLEAR),
    Mode.PDMV2_ENCRYPTED: option_size(OptionLength.PDMV2_ENCRYPTED),
}


class AddrType(IntEnum):
    """Source-address types that have a Global Pointer each (draft -03 §6.2)."""

    LINK_LOCAL = 0
    GLOBAL = 1


def address_type(addr: bytes) -> AddrType:
    """fe80::/10 is link-local; every other (unicast) source counts as global unicast."""
    if addr[0] == 0xFE and addr[1] & 0xC0 == 0x80:
        return AddrType.LINK_LOCAL
    return AddrType.GLOBAL


class StaleKeyError(CryptoError):
    """A packet sealed with a key this receiver no longer accepts (old, or from before a loss of state)."""


@dataclass(slots=True, kw_only=True)
class PdmFields:
    """What one option carried, as the engine wrote or read it (base of Sent and Received)."""

    flow: FiveTuple
    """5-tuple of the packet (src = its sender)."""
    mode: Mode
    """Format of the option."""
    psntp: int
    """PSNTP of the packet."""
    psnlr: int
    """PSNLR carried (the PSNTP its sender last received)."""
    delta_tlr_as: int
    """DELTATLR in attoseconds (as encoded: after truncation)."""
    delta_tls_as: int
    """DELTATLS in attoseconds (as encoded: after truncation)."""
    global_pointer: int | None = None
    """Global Pointer carried (None for RFC 8250 PDM)."""
    kri: int | None = None
    """Sender's Kri: used to seal (Sent) or that opened it (Received); None unless encrypted."""
    random_number: int | None = None
    """Random Number carried (None for RFC 8250 PDM)."""
    f: int | None = None
    """F bit carried (None for RFC 8250 PDM)."""


@dataclass(slots=True, kw_only=True)
class Sent(PdmFields):
    """What the engine put into one outgoing packet (src = this host)."""

    option: bytes
    """The whole option, ready for a Destination Options header."""


@dataclass(slots=True, kw_only=True)
class Received(PdmFields):
    """What the engine read from one incoming packet (src = the peer)."""


class FlowState:
    """One flow as this host sees it."""

    __slots__ = (
        "flow",
        "last_recv_ns",
        "last_seen_ns",
        "last_send_ns",
        "next_psntp",
        "other_ciphers",
        "other_kri",
        "other_prev_kri",
        "other_rotated_ns",
        "other_seen",
        "own_cipher",
        "own_kri",
        "own_prseq",
        "probe",
        "psnlr",
        "received",
        "sent",
        "sent_before_recv_ns",
    )

    def __init__(self, flow: FiveTuple, psntp: int, prseq: Prseq) -> None:
        self.flow = flow
        self.next_psntp = psntp
        self.psnlr = 0
        self.last_recv_ns: int | None = None
        self.sent_before_recv_ns: int | None = None
        self.last_send_ns: int | None = None
        self.last_seen_ns = 0
        self.own_kri: int | None = None  # None until the first PDMv2 packet is sent
        self.own_prseq = prseq
        self.own_cipher: OptionCipher | None = None
        self.other_kri: int | None = None  # the peer's newest Kri that opened
        self.other_prev_kri: int | None = None  # the one before it, usable for grace_ns
        self.other_rotated_ns: int | None = None
        self.other_ciphers: dict[int, OptionCipher] = {}
        self.other_seen: dict[int, bytearray] = {}  # Random Numbers seen, a bitmap per Kri
        self.probe = 0  # resync search cursor (see PdmEngine._candidates)
        self.sent = 0
        self.received = 0

    def __repr__(self) -> str:
        return (
            f"FlowState({self.flow}, next_psntp={self.next_psntp}, psnlr={self.psnlr}, "
            f"own_kri={self.own_kri}, other_kri={self.other_kri}, sent={self.sent}, received={self.received})"
        )


class PdmEngine:
    """Builds the option of each outgoing packet and reads the option of each incoming one.

    Durable state (docs/protocol.md §8), both callbacks made durable by the agent before the
    engine goes on: ``reserve(kri)`` is called before any Kri above the last reservation is used
    for sending; ``record_rx(epoch)`` before an option from a key epoch newer than any accepted so
    far is accepted.  Either returning False makes the engine do without the option (counted)
    rather than risk a nonce reuse or a replay after a restart; see :meth:`restarted`.
    """

    def __init__(
        self,
        *,
        keys: KeyProvider | None = None,
        rng: random.Random | None = None,
        rotate_after: int = PRSEQ_PERIOD,
        grace_ns: int = 2_000_000_000,
        idle_ns: int = 300_000_000_000,
        max_flows: int = 65536,
        epoch_ns: int = DEFAULT_EPOCH_NS,
        wall_offset_ns: int = 0,
        send_floor: int = -1,
        recv_floor: int = -1,
        reserve: Callable[[int], bool] | None = None,
        record_rx: Callable[[int], bool] | None = None,
        max_tries: int = 8,
    ) -> None:
        if not 1 <= rotate_after <= PRSEQ_PERIOD:
            raise EncodeError("rotate_after", f"must be in 1..{PRSEQ_PERIOD}")
        if epoch_ns < 1_000_000:
            raise EncodeError("epoch_ns", "a key epoch must last at least 1 ms")
        if max_tries < 1:
            raise EncodeError("max_tries", "must be at least 1")
        self.keys = keys
        self.rotate_after = rotate_after
        self.grace_ns = grace_ns
        self.idle_ns = idle_ns
        self.max_flows = max_flows
        self.epoch_ns = epoch_ns
        self.wall_offset_ns = wall_offset_ns
        """Wall clock minus the ``now_ns`` clock; the agent samples it periodically."""
        self.max_tries = max_tries
        self._rng = rng if rng is not None else random.SystemRandom()
        self._flows: OrderedDict[FiveTuple, FlowState] = OrderedDict()
        self._probes: OrderedDict[FiveTuple, int] = OrderedDict()
        self._gp = [0, 0]  # last Global Pointer sent, per AddrType
        self._epoch = 0  # newest key epoch seen (never goes back)
        self._send_floor = send_floor
        self._recv_floor = recv_floor
        self._reserved = send_floor
        self._reserve = reserve
        self._rx_recorded = kri_epoch(recv_floor) if recv_floor >= 0 else -1
        self._record_rx = record_rx

    # -- state -----------------------------------------------------------------------------------

    @property
    def flows(self) -> dict[FiveTuple, FlowState]:
        """Flows by 5-tuple as seen from this host (a read-only view by convention)."""
        return self._flows

    @property
    def send_floor(self) -> int:
        """Kris up to this one may have been used by a forgotten flow or an earlier run."""
        return self._send_floor

    @property
    def recv_floor(self) -> int:
        """A flow with no receive state accepts only Kris above this one."""
        return self._recv_floor

    @property
    def reserved(self) -> int:
        """The highest Kri reserved (made durable) so far."""
        return self._reserved

    def global_pointer(self, kind: AddrType) -> int:
        """Packets sent so far from this source-address type (the last Global Pointer; 0: none yet)."""
        return self._gp[kind]

    def count_sent(self, src: bytes) -> int:
        """One more packet sent from ``src`` (16 octets) that carries no PDMv2 option.

        The Global Pointer counts every IPv6 packet the host sends from a source-address type
        (draft §6.2), not only the ones that carry PDMv2: the agent calls this for each packet it
        lets out bare.  Returns the new count.
        """
        kind = address_type(src)
        gp = self._gp[kind] % 0xFFFFFFFF + 1
        self._gp[kind] = gp
        return gp

    def epoch(self, now_ns: int) -> int:
        """The key epoch at ``now_ns`` (never older than one already seen)."""
        e = (now_ns + self.wall_offset_ns) // self.epoch_ns
        if e > self._epoch:
            self._epoch = e
        return self._epoch

    def restarted(self, now_ns: int, reservation: int | None, rx_epoch: int | None = None) -> None:
        """Start a new process on a host whose earlier runs may have sent and received.

        ``reservation``: the last Kri an earlier run reserved for sending; ``rx_epoch``: the
        newest key epoch it accepted options from.  None means unknown (the durable state was
        lost): then this host sends from the next key epoch on, and accepts nothing from the
        current or the next epoch on flows it has no state for (one epoch of clock skew), so no
        (key, nonce) pair is used twice and nothing received before can be replayed.
        """
        e = self.epoch(now_ns)
        used = reservation if reservation is not None else kri_of(e, _LAST_ROTATION)
        seen = rx_epoch if rx_epoch is not None else e + 1
        self._send_floor = max(self._send_floor, used)
        self._reserved = max(self._reserved, used)
        self._recv_floor = max(self._recv_floor, kri_of(seen, _LAST_ROTATION))
        self._rx_recorded = max(self._rx_recorded, seen)

    def set_keys(self, keys: KeyProvider | None) -> None:
        """Swap the key material (SIGHUP) without losing flow state; cached ciphers are dropped."""
        self.keys = keys
        for st in self._flows.values():
            st.own_cipher = None
            st.other_ciphers.clear()

    def expire(self, now_ns: int) -> int:
        """Forget flows idle for longer than ``idle_ns``; returns how many."""
        old = [k for k, st in self._flows.items() if now_ns - st.last_seen_ns > self.idle_ns]
        for k in old:
            self._forget(self._flows.pop(k))
        if len(old) >= _COMPACT_AFTER:
            # A dict keeps the size it grew to: copy it so that a flood's table is given back; and
            # the secrets derived for the flood's peers go too (they pin scattered memory).
            self._flows = OrderedDict(self._flows)
            self._probes = OrderedDict(self._probes)
            if self.keys is not None:
                self.keys.drop_cache()
        return len(old)

    def _forget(self, st: FlowState) -> None:
        # The floors remember what a forgotten flow used, so its next incarnation cannot reuse a
        # (key, nonce) pair when sending, nor accept a replay of it when receiving.
        if st.own_kri is not None and st.own_kri > self._send_floor:
            self._send_floor = st.own_kri
        if st.other_kri is not None and st.other_kri > self._recv_floor:
            self._recv_floor = st.other_kri

    def _new_state(self, local: FiveTuple) -> FlowState:
        st = FlowState(local, self._rng.randrange(1 << 16), self._new_prseq())
        self._flows[local] = st
        while len(self._flows) > self.max_flows:
            self._forget(self._flows.popitem(last=False)[1])
        self._probes.pop(local, None)
        return st

    def _new_prseq(self) -> Prseq:
        return Prseq(self._rng.randrange(1, PRSEQ_PERIOD + 1), self.rotate_after)

    def _secret(self, local: FiveTuple) -> bytes:
        if self.keys is None:
            raise UnknownKeyError("no keys loaded")
        return self.keys.client_secret_for(local=local.src, remote=local.dst)

    def _cipher(self, secret: bytes, direction: FiveTuple, kri: int) -> OptionCipher:
        assert self.keys is not None  # checked by _secret, which always runs first
        return OptionCipher(session_key(self.keys.suite, client_secret=secret, flow=direction, kri=kri))

    # -- egress ----------------------------------------------------------------------------------

    def _next_own_kri(self, st: FlowState | None, now_ns: int) -> int | None:
        """The Kri the next packet must move to, or None to keep the current one (no state change)."""
        epoch = self.epoch(now_ns)
        kri = st.own_kri if st is not None else None
        if kri is None or kri_epoch(kri) < epoch:
            new = kri_of(epoch, 0)
            if new <= self._send_floor:
                new = self._send_floor + 1
                if kri_epoch(new) != epoch:
                    raise KeyWaitError(f"key epoch {epoch} may have been used before state was lost; next epoch")
        elif st is not None and st.own_prseq.exhausted:
            # draft -03 §4.4: PRSEQ used up (or rotation due): next Kri, F flips, PRSEQ restarts.
            new = kri + 1
            if kri_epoch(new) != epoch:
                raise KeyWaitError(f"every rotation of key epoch {epoch} is used up; next epoch")
        else:
            return None
        if new > self._reserved:
            # Whole blocks of RESERVE_AHEAD + 1 rotations: a restarted sender starts on a block
            # boundary, which a receiver that kept its state tries early (_candidates).
            reservation = new | RESERVE_AHEAD
            if self._reserve is not None and not self._reserve(reservation):
                raise KeyWaitError("the nonce reservation could not be recorded")
            self._reserved = reservation
        return new

    def outgoing(self, flow: FiveTuple, mode: Mode, now_ns: int) -> Sent:
        """The option for a packet sent on ``flow`` (src = this host) at ``now_ns``.

        Raises UnknownKeyError (encrypted, no key) or KeyWaitError before touching any state.
        """
        if mode is Mode.OFF:
            raise EncodeError("mode", "mode off carries no option")
        st = self._flows.get(flow)
        new_kri = None if mode is Mode.PDM else self._next_own_kri(st, now_ns)
        new_cipher: OptionCipher | None = None
        if mode is Mode.PDMV2_ENCRYPTED and (new_kri is not None or st is None or st.own_cipher is None):
            kri_for_key = new_kri if new_kri is not None else st.own_kri  # type: ignore[union-attr]
            assert kri_for_key is not None  # a flow with no own Kri always gets a new one
            new_cipher = self._cipher(self._secret(flow), flow, kri_for_key)
        # Everything that can fail has run: commit.
        if st is None:
            st = self._new_state(flow)
        else:
            self._flows.move_to_end(flow)
        if new_kri is not None:
            st.own_kri = new_kri
            st.own_prseq = self._new_prseq()
            st.own_cipher = None
        if new_cipher is not None:
            st.own_cipher = new_cipher

        last_recv = st.last_recv_ns
        if last_recv is None:
            dtlr = dtls = 0
        else:
            dtlr = now_ns - last_recv if now_ns > last_recv else 0
            before = st.sent_before_recv_ns
            dtls = last_recv - before if before is not None and last_recv > before else 0
        # RFC 8250 §3.2: 16 most significant bits of the attosecond delta, and the shift.
        dtlr *= ATTOSECONDS_PER_NS
        dtls *= ATTOSECONDS_PER_NS
        scale_dtlr = dtlr.bit_length() - 16
        scale_dtlr = scale_dtlr if scale_dtlr > 0 else 0
        scale_dtls = dtls.bit_length() - 16
        scale_dtls = scale_dtls if scale_dtls > 0 else 0
        if scale_dtlr > 255 or scale_dtls > 255:
            encode_delta(max(dtlr, dtls))  # raises the typed error
        delta_tlr, delta_tls = dtlr >> scale_dtlr, dtls >> scale_dtls
        psntp = st.next_psntp
        st.next_psntp = (psntp + 1) & _U16
        st.last_send_ns = now_ns
        st.last_seen_ns = now_ns
        st.sent += 1

        if mode is Mode.PDM:
            self.count_sent(flow.src)  # an RFC 8250 packet carries no Global Pointer but is IPv6 sent
            v1 = PdmOption(
                scale_dtlr=scale_dtlr,
                scale_dtls=scale_dtls,
                psntp=psntp,
                psnlr=st.psnlr,
                delta_tlr=delta_tlr,
                delta_tls=delta_tls,
            )
            option = encode_option(v1)
            return Sent(
                flow=flow,
                mode=mode,
                option=option,
                psntp=psntp,
                psnlr=st.psnlr,
                delta_tlr_as=delta_tlr << scale_dtlr,
                delta_tls_as=delta_tls << scale_dtls,
            )
        kind = address_type(flow.src)
        gp = self._gp[kind] % 0xFFFFFFFF + 1
        self._gp[kind] = gp
        own_kri = st.own_kri
        assert own_kri is not None
        rn = st.own_prseq.next()
        f = own_kri & 1
        plain = _FIELDS.pack(scale_dtlr, scale_dtls, gp, psntp, st.psnlr, delta_tlr, delta_tls)
        if mode is Mode.PDMV2_ENCRYPTED:
            assert st.own_cipher is not None
            header = _V2_HEADER.pack(OPTION_TYPE_PDM, OptionLength.PDMV2_ENCRYPTED, _VRSN_RES, (rn << 1) | f)
            option = st.own_cipher.seal_packed(header, rn, plain)
        else:
            option = _V2_HEADER.pack(OPTION_TYPE_PDM, OptionLength.PDMV2_CLEAR, _VRSN_RES, (rn << 1) | f) + plain
        return Sent(
            flow=flow,
            mode=mode,
            option=option,
            psntp=psntp,
            psnlr=st.psnlr,
            delta_tlr_as=delta_tlr << scale_dtlr,
            delta_tls_as=delta_tls << scale_dtls,
            global_pointer=gp,
            kri=own_kri,
            random_number=rn,
            f=f,
        )

    # -- ingress ---------------------------------------------------------------------------------

    def incoming(self, flow: FiveTuple, option: bytes, now_ns: int) -> Received:
        """Read the option of a packet received on ``flow`` (src = the peer) at ``now_ns``.

        Raises DecodeError, UnknownKeyError, AuthenticationError, StaleKeyError, ReplayError or
        KeyWaitError; on any error no flow state changes (a receiver that lost the sender only moves its
        search cursor on).
        """
        local = flow.reversed()
        st = self._flows.get(local)
        if len(option) == 36 and option[:4] == _ENC_PREFIX:
            # Per-packet path for the encrypted format; anything else goes through decode_option.
            rn_f = (option[4] << 8) | option[5]
            rn, f = rn_f >> 1, rn_f & 1
            kri, plain = self._open(st, flow, local, bytes(option[:V2_HEADER_LEN]), rn, f, bytes(option[6:]), now_ns)
            scale_dtlr, scale_dtls, gp, psntp, psnlr, delta_tlr, delta_tls = _FIELDS.unpack(plain)
            got = Received(
                flow=flow,
                mode=Mode.PDMV2_ENCRYPTED,
                psntp=psntp,
                psnlr=psnlr,
                delta_tlr_as=delta_tlr << scale_dtlr,
                delta_tls_as=delta_tls << scale_dtls,
                global_pointer=gp,
                kri=kri,
                random_number=rn,
                f=f,
            )
        else:
            got = self._read_clear(flow, option)

        if got.kri is not None and kri_epoch(got.kri) > self._rx_recorded:
            # A restart must not accept this epoch's options again: make that durable first.
            if self._record_rx is not None and not self._record_rx(kri_epoch(got.kri)):
                raise KeyWaitError("could not record the key epoch received; option not read")
            self._rx_recorded = kri_epoch(got.kri)
        # Everything checked: commit.
        if st is None:
            st = self._new_state(local)
        else:
            self._flows.move_to_end(local)
        if got.kri is not None and got.random_number is not None:
            self._commit_kri(st, got.kri, got.random_number, now_ns)
        st.psnlr = got.psntp
        st.sent_before_recv_ns = st.last_send_ns
        st.last_recv_ns = now_ns
        st.last_seen_ns = now_ns
        st.received += 1
        return got

    @staticmethod
    def _read_clear(flow: FiveTuple, option: bytes) -> Received:
        """RFC 8250 PDM and clear PDMv2 (and every malformed option, which decode_option refuses)."""
        opt = decode_option(option)
        if isinstance(opt, PdmOption):
            return Received(
                flow=flow,
                mode=Mode.PDM,
                psntp=opt.psntp,
                psnlr=opt.psnlr,
                delta_tlr_as=decode_delta(opt.delta_tlr, opt.scale_dtlr),
                delta_tls_as=decode_delta(opt.delta_tls, opt.scale_dtls),
            )
        # A well-formed encrypted option always takes the fast path in incoming().
        assert isinstance(opt, Pdmv2ClearOption)
        fl = opt.fields
        return Received(
            flow=flow,
            mode=Mode.PDMV2_CLEAR,
            psntp=fl.psntp,
            psnlr=fl.psnlr,
            delta_tlr_as=decode_delta(fl.delta_tlr, fl.scale_dtlr),
            delta_tls_as=decode_delta(fl.delta_tls, fl.scale_dtls),
            global_pointer=fl.global_pointer,
            random_number=opt.random_number,
            f=opt.f,
        )

    def _candidates(self, st: FlowState | None, local: FiveTuple, f: int, now_ns: int) -> list[int]:
        """The Kris to try for a packet whose F bit is ``f``: at most ``max_tries``, best first."""
        epoch = self.epoch(now_ns)
        out: list[int] = []
        cur = st.other_kri if st is not None else None
        if st is not None and cur is not None:
            # Same parity: the same key, or two rotations on (every packet of one lost).  Else the next.
            out += (cur, cur + 2) if cur & 1 == f else (cur + 1,)
            prev = st.other_prev_kri
            if prev is not None and prev & 1 == f:
                out.append(prev)  # reordered across the rotation (stale once grace_ns is over)
            # The sender moved on to a newer epoch (it does at every epoch, starting at rotation 0).
            # After a quiet spell it is in the receiver's current epoch (or, by skew, the next one).
            last = kri_epoch(cur)
            out += [kri_of(e, f) for e in dict.fromkeys((last + 1, epoch, epoch + 1)) if e > last]
            # A sender that restarted within the epoch goes on at the next reservation block.
            block = (cur | RESERVE_AHEAD) + 1 + f
            out += (block, block + RESERVE_AHEAD + 1)
        else:
            out += [kri_of(epoch + d, f) for d in _RESYNC_DELTAS if epoch + d >= 0]
        # The rest of the budget walks the resync space, where the last packet's search stopped.
        cursor = st.probe if st is not None else self._probes.get(local, 0)
        steps = 0
        while len(out) < self.max_tries and steps < _RESYNC_SPACE:
            i = (cursor + steps) % _RESYNC_SPACE
            e = epoch + _RESYNC_DELTAS[i % len(_RESYNC_DELTAS)]
            kri = kri_of(e, f + 2 * (i // len(_RESYNC_DELTAS)))
            steps += 1
            if e >= 0 and kri not in out:
                out.append(kri)
        cursor = (cursor + steps) % _RESYNC_SPACE
        if st is not None:
            st.probe = cursor
        else:
            self._probes[local] = cursor
            self._probes.move_to_end(local)
            while len(self._probes) > _MAX_PROBES:
                self._probes.popitem(last=False)
        return out[: self.max_tries]

    def _open(
        self,
        st: FlowState | None,
        wire: FiveTuple,
        local: FiveTuple,
        header: bytes,
        rn: int,
        f: int,
        sealed: bytes,
        now_ns: int,
    ) -> tuple[int, bytes]:
        """(Kri that opened it, the 14 plaintext octets)."""
        secret: bytes | None = None
        for kri in self._candidates(st, local, f, now_ns):
            cipher = st.other_ciphers.get(kri) if st is not None else None
            if cipher is None:
                if secret is None:
                    secret = self._secret(local)
                cipher = self._cipher(secret, wire, kri)
                if st is not None and len(st.other_ciphers) < 4:
                    st.other_ciphers[kri] = cipher
            try:
                plain = cipher.open_packed(header, rn, sealed)
            except AuthenticationError:
                continue
            self._check_fresh(st, kri, rn, now_ns)
            return kri, plain
        raise AuthenticationError("PDMv2 option did not authenticate with any expected Kri")

    def _check_fresh(self, st: FlowState | None, kri: int, rn: int, now_ns: int) -> None:
        """StaleKeyError or ReplayError unless (kri, rn) may be accepted now."""
        cur = st.other_kri if st is not None else None
        if st is None or cur is None:
            if kri <= self._recv_floor:
                raise StaleKeyError(f"Kri {kri} is from before this receiver lost the flow's state")
        elif kri < cur:
            rotated = st.other_rotated_ns
            if kri != st.other_prev_kri or rotated is None or now_ns - rotated > self.grace_ns:
                raise StaleKeyError(f"packet sealed with an older Kri {kri} (current {cur})")
        seen = st.other_seen.get(kri) if st is not None else None
        if seen is not None and seen[rn >> 3] & (1 << (rn & 7)):
            raise ReplayError(rn, kri)

    def _commit_kri(self, st: FlowState, kri: int, rn: int, now_ns: int) -> None:
        cur = st.other_kri
        if cur is None or kri > cur:
            if cur is not None:
                st.other_rotated_ns = now_ns
            st.other_prev_kri = cur
            st.other_kri = kri
            keep = (kri, cur)
            for old in [k for k in st.other_seen if k not in keep]:
                del st.other_seen[old]
            for old in [k for k in st.other_ciphers if k not in keep]:
                del st.other_ciphers[old]
        seen = st.other_seen.get(kri)
        if seen is None:
            seen = st.other_seen[kri] = bytearray(_BITMAP_OCTETS)
        seen[rn >> 3] |= 1 << (rn & 7)
