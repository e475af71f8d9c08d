"""The native data path (C extension ``_datapath``): a thin typed wrapper.

The extension is optional: ``AVAILABLE`` says whether it was built, ``UNAVAILABLE_REASON`` why not.
It does per packet what pdmv2/core (the readable reference) does, for established flows, and the
NFQUEUE loop itself; key derivation, policy, reload and stats stay in Python
(pdmv2/agent/native_loop.py).  docs/agent.md §Native data path describes the split.
"""

from __future__ import annotations

import importlib
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..core.errors import AuthenticationError, ConfigError, PdmError
from ..core.flow import Mode
from ..core.keyring import KeyProvider
from ..core.keys import FiveTuple, SessionKey, session_key
from ..core.policy import Policy

__all__ = [
    "AVAILABLE",
    "UNAVAILABLE_REASON",
    "OUTCOMES",
    "MODE_CODES",
    "HOOK_INGRESS",
    "HOOK_EGRESS",
    "REQ_KEY",
    "REQ_RESERVE",
    "REQ_RX_EPOCH",
    "NativeRecord",
    "NativeCipher",
    "new_datapath",
    "pack_tuple",
    "unpack_tuple",
    "iter_records",
    "serve_requests",
    "apply_policy",
]

try:
    _ext: Any = importlib.import_module("pdmv2.native._datapath")
except ImportError as exc:  # not built: the agent falls back to the Python data path
    _ext = None
    AVAILABLE = False
    UNAVAILABLE_REASON = f"the C extension pdmv2.native._datapath is not built ({exc})"
else:
    AVAILABLE = True
    UNAVAILABLE_REASON = ""

# Same order as the enum in _datapath.c; names as pdmv2.core.packetproc.Outcome's values where it has them
# (key_pending and reserve_pending: the packet passed unmeasured while Python answers a request).
OUTCOMES = (
    "inserted",
    "off",
    "not_measured",
    "too_big",
    "refused",
    "no_key",
    "malformed",
    "read",
    "no_pdm",
    "auth_failed",
    "replay",
    "stale_key",
    "bad_option",
    "downgrade",
    "key_pending",
    "key_wait",
    "reserve_pending",
    "not_for_us",
    "rate_limited",
)
MODE_CODES = {Mode.OFF: 0, Mode.PDM: 1, Mode.PDMV2_CLEAR: 2, Mode.PDMV2_ENCRYPTED: 3}
MODES = {v: k for k, v in MODE_CODES.items()}
HOOK_INGRESS, HOOK_EGRESS = 0, 1
REQ_KEY, REQ_RESERVE, REQ_RX_EPOCH = 1, 2, 3
LIMITED_NS = 100_000_000
"""How long a derivation refused by the budget answers "rate_limited" before it is asked again."""
_AEAD_IDS = (1, 2, 3)

# The record layout of _datapath.c (rec_t), little-endian, 96 octets.
_RECORD = struct.Struct("<qQIHHHHHHBBBBBBBB16s16sBBHI16x")
RECORD_SIZE = _RECORD.size


@dataclass(frozen=True, slots=True)
class NativeRecord:
    """One fixed-size record from the native ring."""

    t_ns: int
    """Monotonic ns: the time the packet's option was made or read at."""
    direction: str
    """egress or ingress."""
    mode: Mode
    """Option format."""
    outcome: str
    """inserted, read, auth_failed, replay or stale_key."""
    flow: FiveTuple
    """The packet's 5-tuple (src = its sender)."""
    psntp: int
    """PSNTP carried."""
    psnlr: int
    """PSNLR carried."""
    delta_tlr_as: int
    """DELTATLR in attoseconds, as encoded."""
    delta_tls_as: int
    """DELTATLS in attoseconds, as encoded."""
    global_pointer: int | None
    """Global Pointer (None for RFC 8250 PDM)."""
    kri: int | None
    """Kri (None unless encrypted)."""
    sample_epoch: int = 0
    """Moves (mod 256) each time the ring's sampling stepped back or records were lost to a full
    ring: records of different epochs may have a gap between them."""
    cold: bool = False
    """Egress: the packet came more than 1 ms after the one before it (caches cold)."""
    rnf: int = 0
    """Egress v2: the option's clear RN<<1|F field (with the 5-tuple, finds the packet on the wire)."""
    comp_ns: int = 0
    """Egress: the transmit compensation added to the clock read (t_ns - comp_ns is the read)."""


def iter_records(data: bytes) -> Iterator[NativeRecord]:
    """Decode what ``Datapath.drain`` returned."""
    for (
        t,
        kri,
        gp,
        sport,
        dport,
        psntp,
        psnlr,
        dtlr,
        dtls,
        d,
        mode,
        outc,
        proto,
        sl,
        ss,
        hg,
        hk,
        src,
        dst,
        epoch,
        cold,
        rnf,
        comp,
    ) in _RECORD.iter_unpack(data):
        yield NativeRecord(
            t,
            "egress" if d == HOOK_EGRESS else "ingress",
            MODES.get(mode, Mode.OFF),
            OUTCOMES[outc],
            FiveTuple(src, sport, dst, dport, proto),
            psntp,
            psnlr,
            dtlr << sl,
            dtls << ss,
            gp if hg else None,
            kri if hk else None,
            epoch,
            bool(cold),
            rnf,
            comp,
        )


def pack_tuple(flow: FiveTuple) -> bytes:
    """The 37 octets the extension keys flows and keys by (src, sport, dst, dport, proto)."""
    return flow.packed()


def unpack_tuple(data: bytes) -> FiveTuple:
    """Inverse of :func:`pack_tuple`."""
    src, sport, dst, dport, proto = struct.unpack(">16sH16sHB", data)
    return FiveTuple(src, sport, dst, dport, proto)


def _require() -> Any:
    if _ext is None:
        raise ConfigError("pdmv2.native", "build", UNAVAILABLE_REASON)
    return _ext


class NativeCipher:
    """One session key in OpenSSL (seal/open of the 36-octet option), for tests and the micro-benchmark."""

    __slots__ = ("_c", "kri")

    def __init__(self, key: SessionKey) -> None:
        self.kri = key.kri
        self._c = _require().Cipher(int(key.suite.aead), key.key, key.base_nonce)

    def __repr__(self) -> str:
        return f"NativeCipher(kri={self.kri})"

    def seal_packed(self, header: bytes, random_number: int, plain: bytes) -> bytes:
        """Header (the AAD) followed by the sealed 14 octets: same as OptionCipher.seal_packed."""
        out: bytes = self._c.seal(header, random_number, plain)
        return out

    def open_packed(self, header: bytes, random_number: int, sealed: bytes) -> bytes:
        """The 14 plaintext octets; AuthenticationError when the tag fails."""
        plain: bytes | None = self._c.open(header, random_number, sealed)
        if plain is None:
            raise AuthenticationError(f"PDMv2 option did not authenticate with Kri {self.kri}")
        return plain

    def bench(self, n: int) -> tuple[float, float]:
        """(seal ns/op, open ns/op) measured inside C over ``n`` operations."""
        seal_ns, open_ns = self._c.bench(n)
        return float(seal_ns), float(open_ns)


def new_datapath(*, max_flows: int = 65536, key_slots: int = 16384, ring: int = 65536) -> Any:
    """A native Datapath (raises ConfigError naming the reason when the extension is not built)."""
    return _require().Datapath(max_flows=max_flows, key_slots=key_slots, ring=ring)


def apply_policy(dp: Any, policy: Policy, *, epoch_ns: int | None = None, max_tries: int | None = None) -> None:
    """Give the native path a policy: prefix rules (longest first), rotation, grace, MTU, failures."""
    rules = [(r.prefix.network_address.packed, r.prefix.prefixlen, MODE_CODES[r.mode]) for r in policy.rules]
    dp.set_policy(rules, MODE_CODES[policy.default])
    settings: dict[str, Any] = {
        "rotate_after": policy.rotate_after,
        "grace_ns": policy.grace_ms * 1_000_000,
        "mtu": policy.mtu,
        "drop_on_auth_failure": policy.on_auth_failure == "drop",
    }
    if epoch_ns is not None:
        settings["epoch_ns"] = epoch_ns
    if max_tries is not None:
        settings["max_tries"] = max_tries
    dp.configure(**settings)


def serve_requests(
    dp: Any,
    keys: KeyProvider | None,
    reserve: Callable[[int], bool],
    allow: Callable[[FiveTuple, bool], bool] | None = None,
    record_rx: Callable[[int], bool] | None = None,
) -> tuple[int, int]:
    """Answer what the packet path asked for: derive and install keys, make reservations durable.

    A key that cannot be derived (no secret covers the flow) is installed as "no key", so the
    packet path counts ``no_key`` instead of asking again.  ``allow(wire, seal)`` may refuse a
    derivation (budget): the packet path asks again with a later packet.  A reservation (or a
    received key epoch, ``record_rx``) that cannot be made durable is not given: the packet path
    does without the option meanwhile.
    Returns (keys installed, reservations made).
    """
    installed = reserved = 0
    for kind, packed, kri, seal in dp.requests():
        if kind == REQ_RESERVE:
            if reserve(kri):
                dp.set_floors(reserved=kri)
                reserved += 1
            continue
        if kind == REQ_RX_EPOCH:  # here "kri" is a key epoch received
            if record_rx is None or record_rx(kri):
                dp.set_floors(rx_recorded=kri)
                reserved += 1
            continue
        wire = unpack_tuple(packed)
        if allow is not None and not allow(wire, seal):
            # over budget: "rate_limited" for a while (no request per packet), then asked again
            dp.install_key(packed, kri, 1, None, None, seal, time.monotonic_ns() + LIMITED_NS)
            continue
        local = wire if seal else wire.reversed()
        aead = int(keys.suite.aead) if keys is not None else 1
        try:
            if keys is None:
                raise PdmError("no keys loaded")
            secret = keys.client_secret_for(local=local.src, remote=local.dst)
            key = session_key(keys.suite, client_secret=secret, flow=wire, kri=kri)
        except PdmError:
            dp.install_key(packed, kri, aead, None, None, seal)
            continue
        dp.install_key(packed, kri, aead, key.key, key.base_nonce, seal)
        installed += 1
    return installed, reserved
