"""Per-flow PDM state and the engine that builds and reads options (pure: ``now`` is an argument).

The draft's table (-03 §4.4: 5-tuple, own Kri, other Kri) plus RFC 8250's PSNTP, PSNLR and
last send/receive times.  A flow is keyed by its 5-tuple as seen from this host (src = local);
a packet received is looked up by its reversed 5-tuple, so both directions are one flow.
ICMPv6 has no ports: it is keyed with ports 0 (echo request and reply are one flow).

Rotation (implementation choice, docs/protocol.md §Rotation): F is always the low bit of the
sender's Kri (Kri 0 starts with F 0).  When its PRSEQ is used up, or after ``rotate_after``
packets, the sender increments its Kri, flips F and restarts PRSEQ from a new seed.  The receiver
reads Kri from F: a packet whose F differs from the parity of the Kri in use was sealed with the
next Kri (or, reordered, the previous one); the previous key stays usable for ``grace_ns`` after
a rotation, so packets reordered across a flip still open.  One whole lost epoch (every packet
with one F value dropped) is tolerated by also trying Kri + 2.
"""

from __future__ import annotations

import random
import struct
from collections import OrderedDict
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from .crypto import OptionCipher
from .errors import AuthenticationError, CryptoError, EncodeError, ReplayError, UnknownKeyError
from .keyring import KeyProvider
from .keys import FiveTuple, session_key
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
    "Sent",
    "Received",
    "FlowState",
    "PdmEngine",
]

_U16 = 0xFFFF
# Per-packet path: pack and unpack with precompiled structs instead of building option objects;
# option.py holds the same layouts for the public codec (tests check both agree).
_V2_HEADER = struct.Struct(">BBHH")
_FIELDS = struct.Struct(">BBIHHHH")
_VRSN_RES = PDMV2_VERSION << 12
_ENC_PREFIX = bytes((OPTION_TYPE_PDM, OptionLength.PDMV2_ENCRYPTED, PDMV2_VERSION << 4, 0))


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
    """A packet sealed with the previous Kri after its grace window closed."""


@dataclass(slots=True)
class Sent:
    """What the engine put into one outgoing packet."""

    flow: FiveTuple
    """5-tuple of the packet (src = this host)."""
    mode: Mode
    """Format of the option."""
    option: bytes
    """The whole option, ready for a Destination Options header."""
    psntp: int
    """PSNTP of this packet."""
    psnlr: int
    """PSNLR carried."""
    delta_tlr_as: int
    """DELTATLR as encoded (attoseconds after truncation)."""
    delta_tls_as: int
    """DELTATLS as encoded (attoseconds after truncation)."""
    global_pointer: int | None
    """Global Pointer carried (None for RFC 8250 PDM)."""
    kri: int | None
    """Own Kri used (None unless encrypted)."""
    random_number: int | None
    """Random Number carried (None for RFC 8250 PDM)."""
    f: int | None
    """F bit carried (None for RFC 8250 PDM)."""


@dataclass(slots=True)
class Received:
    """What the engine read from one incoming packet."""

    flow: FiveTuple
    """5-tuple of the packet (src = the peer)."""
    mode: Mode
    """Format the option came in."""
    psntp: int
    """Peer's PSNTP."""
    psnlr: int
    """Peer's PSNLR (our PSNTP it last received)."""
    delta_tlr_as: int
    """Peer's DELTATLR in attoseconds."""
    delta_tls_as: int
    """Peer's DELTATLS in attoseconds."""
    global_pointer: int | None
    """Peer's Global Pointer (None for RFC 8250 PDM)."""
    kri: int | None
    """Peer's Kri that opened the option (None unless encrypted)."""
    random_number: int | None
    """Random Number carried (None for RFC 8250 PDM)."""
    f: int | None
    """F bit carried (None for RFC 8250 PDM)."""


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
        "other_rotated_ns",
        "other_seen",
        "own_cipher",
        "own_kri",
        "own_prseq",
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
        self.own_kri = 0
        self.own_prseq = prseq
        self.own_cipher: OptionCipher | None = None
        self.other_kri = 0
        self.other_rotated_ns: int | None = None
        self.other_ciphers: dict[int, OptionCipher] = {}
        self.other_seen: dict[int, set[int]] = {}
        self.sent = 0
        self.received = 0

    def __repr__(self) -> str:
        return (
            f"FlowState({self.flow}, next_psntp={self.next_psntp}, psnlr={self.psnlr}, "
            f"own_kri={self.own_kri}, other_kri={self.other_kri}, sent={self.sent}, received={self.received})"
        )


class PdmEngine:
    """Builds the option of each outgoing packet and reads the option of each incoming one."""

    def __init__(
        self,
        *,
        keys: KeyProvider | None = None,
        rng: random.Random | None = None,
        rotate_after: int = PRSEQ_PERIOD,
        grace_ns: int = 2_000_000_000,
        idle_ns: int = 300_000_000_000,
        max_flows: int = 65536,
    ) -> None:
        if not 1 <= rotate_after <= PRSEQ_PERIOD:
            raise EncodeError("rotate_after", f"must be in 1..{PRSEQ_PERIOD}")
        self.keys = keys
        self.rotate_after = rotate_after
        self.grace_ns = grace_ns
        self.idle_ns = idle_ns
        self.max_flows = max_flows
        self._rng = rng if rng is not None else random.SystemRandom()
        self._flows: OrderedDict[FiveTuple, FlowState] = OrderedDict()
        self._gp = [0, 0]  # last Global Pointer sent, per AddrType

    # -- state -----------------------------------------------------------------------------------

    @property
    def flows(self) -> dict[FiveTuple, FlowState]:
        """Flows by 5-tuple as seen from this host (a read-only view by convention)."""
        return self._flows

    def global_pointer(self, kind: AddrType) -> int:
        """The last Global Pointer sent for this source-address type (0: none yet)."""
        return self._gp[kind]

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
            del self._flows[k]
        return len(old)

    def _new_state(self, local: FiveTuple) -> FlowState:
        st = FlowState(local, self._rng.randrange(1 << 16), self._new_prseq())
        self._flows[local] = st
        while len(self._flows) > self.max_flows:
            self._flows.popitem(last=False)
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

    def outgoing(self, flow: FiveTuple, mode: Mode, now_ns: int) -> Sent:
        """The option for a packet sent on ``flow`` (src = this host) at ``now_ns``.

        Raises UnknownKeyError (encrypted, no key) before touching any state.
        """
        if mode is Mode.OFF:
            raise EncodeError("mode", "mode off carries no option")
        st = self._flows.get(flow)
        rotate = mode is not Mode.PDM and st is not None and st.own_prseq.exhausted
        secret = b""
        if mode is Mode.PDMV2_ENCRYPTED and (st is None or st.own_cipher is None or rotate):
            secret = self._secret(flow)
        if st is None:
            st = self._new_state(flow)
        else:
            self._flows.move_to_end(flow)

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

        gp: int | None = None
        kri: int | None = None
        rn: int | None = None
        f: int | None = None
        if mode is Mode.PDM:
            option = encode_option(PdmOption(scale_dtlr, scale_dtls, psntp, st.psnlr, delta_tlr, delta_tls))
        else:
            if rotate:
                # draft -03 §4.4: PRSEQ used up (or rotation due): new Kri, flip F, restart PRSEQ.
                st.own_kri += 1
                st.own_prseq = self._new_prseq()
                st.own_cipher = None
            kind = address_type(flow.src)
            gp = self._gp[kind] % 0xFFFFFFFF + 1
            rn = st.own_prseq.next()
            f = st.own_kri & 1
            plain = _FIELDS.pack(scale_dtlr, scale_dtls, gp, psntp, st.psnlr, delta_tlr, delta_tls)
            if mode is Mode.PDMV2_ENCRYPTED:
                cipher = st.own_cipher
                if cipher is None:
                    cipher = st.own_cipher = self._cipher(secret, flow, st.own_kri)
                header = _V2_HEADER.pack(OPTION_TYPE_PDM, OptionLength.PDMV2_ENCRYPTED, _VRSN_RES, (rn << 1) | f)
                option = cipher.seal_packed(header, rn, plain)
                kri = st.own_kri
            else:
                option = _V2_HEADER.pack(OPTION_TYPE_PDM, OptionLength.PDMV2_CLEAR, _VRSN_RES, (rn << 1) | f) + plain
            self._gp[kind] = gp

        st.next_psntp = (psntp + 1) & _U16
        st.last_send_ns = now_ns
        st.last_seen_ns = now_ns
        st.sent += 1
        return Sent(
            flow,
            mode,
            option,
            psntp,
            st.psnlr,
            delta_tlr << scale_dtlr,
            delta_tls << scale_dtls,
            gp,
            kri,
            rn,
            f,
        )

    # -- ingress ---------------------------------------------------------------------------------

    def incoming(self, flow: FiveTuple, option: bytes, now_ns: int) -> Received:
        """Read the option of a packet received on ``flow`` (src = the peer) at ``now_ns``.

        Raises DecodeError, UnknownKeyError, AuthenticationError, StaleKeyError or ReplayError;
        on any error no state changes.
        """
        local = flow.reversed()
        st = self._flows.get(local)
        kri: int | None
        rn: int | None
        f: int | None
        gp: int | None
        if len(option) == 36 and option[:4] == _ENC_PREFIX:
            # Per-packet path for the encrypted format; anything else goes through decode_option.
            mode = Mode.PDMV2_ENCRYPTED
            rn_f = (option[4] << 8) | option[5]
            rn, f = rn_f >> 1, rn_f & 1
            kri, plain = self._open(st, flow, local, bytes(option[:V2_HEADER_LEN]), rn, f, bytes(option[6:]), now_ns)
            scale_dtlr, scale_dtls, gp, psntp, psnlr, delta_tlr, delta_tls = _FIELDS.unpack(plain)
            dtlr, dtls = delta_tlr << scale_dtlr, delta_tls << scale_dtls
        else:
            mode, psntp, psnlr, dtlr, dtls, gp, kri, rn, f = self._read_slow(option)

        # Everything checked: commit.
        if st is None:
            st = self._new_state(local)
        else:
            self._flows.move_to_end(local)
        if kri is not None:
            self._commit_kri(st, kri, rn or 0, now_ns)
        st.psnlr = psntp
        st.sent_before_recv_ns = st.last_send_ns
        st.last_recv_ns = now_ns
        st.last_seen_ns = now_ns
        st.received += 1
        return Received(flow, mode, psntp, psnlr, dtlr, dtls, gp, kri, rn, f)

    @staticmethod
    def _read_slow(option: bytes) -> tuple[Mode, int, int, int, int, int | None, int | None, int | None, int | None]:
        """RFC 8250 PDM and clear PDMv2 (and every malformed option, which decode_option refuses)."""
        opt = decode_option(option)
        if isinstance(opt, PdmOption):
            return (
                Mode.PDM,
                opt.psntp,
                opt.psnlr,
                decode_delta(opt.delta_tlr, opt.scale_dtlr),
                decode_delta(opt.delta_tls, opt.scale_dtls),
                None,
                None,
                None,
                None,
            )
        # A well-formed encrypted option always takes the fast path in incoming().
        assert isinstance(opt, Pdmv2ClearOption)
        fl = opt.fields
        return (
            Mode.PDMV2_CLEAR,
            fl.psntp,
            fl.psnlr,
            decode_delta(fl.delta_tlr, fl.scale_dtlr),
            decode_delta(fl.delta_tls, fl.scale_dtls),
            fl.global_pointer,
            None,
            opt.random_number,
            opt.f,
        )

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
        current = st.other_kri if st is not None else 0
        if (current & 1) == f:
            candidates = [current, current + 2]
        else:
            candidates = [current + 1, current - 1, current + 3]
        secret: bytes | None = None
        for kri in candidates:
            if kri < 0:
                continue
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
            if st is not None and kri < current:
                rotated = st.other_rotated_ns
                if rotated is None or now_ns - rotated > self.grace_ns:
                    raise StaleKeyError(f"packet sealed with previous Kri {kri} after the grace window")
            seen = st.other_seen.get(kri) if st is not None else None
            if seen is not None and rn in seen:
                raise ReplayError(rn, kri)
            return kri, plain
        raise AuthenticationError("PDMv2 option did not authenticate with any expected Kri")

    @staticmethod
    def _commit_kri(st: FlowState, kri: int, rn: int, now_ns: int) -> None:
        if kri > st.other_kri or not st.other_seen:
            if kri > st.other_kri:
                st.other_rotated_ns = now_ns
            st.other_kri = kri
            for old in [k for k in st.other_seen if k < kri - 1]:
                del st.other_seen[old]
            for old in [k for k in st.other_ciphers if k < kri - 1]:
                del st.other_ciphers[old]
        st.other_seen.setdefault(kri, set()).add(rn)
