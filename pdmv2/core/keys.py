"""The PDMv2 key schedule (docs/protocol.md §Key schedule).

draft-ietf-ippm-encrypted-pdmv2-03 §4.4 says a SessionTemporaryKey is derived with the HPKE
KDF from the SharedSecret, the flow's 5-tuple and a Key Rotation Index; it fixes no labels,
no byte layout and no nonce.  This module fixes them (implementation choice, documented):

    client_secret = LabeledExpand(LabeledExtract(salt, "pdmv2 client", SharedSecret),
                                  "client", C, Nh)                        # C: 16 octets
    ctx           = src(16) || sport(2) || dst(16) || dport(2) || proto(1) || I2OSP(kri, 8)
    prk           = LabeledExtract("", "pdmv2 session", client_secret)
    key           = LabeledExpand(prk, "key", ctx, Nk)
    base_nonce    = LabeledExpand(prk, "base_nonce", ctx, Nn)

The Key Rotation Index is 64 bits: the key epoch (wall clock / epoch length) times 2^16 plus the
rotation within that epoch (docs/protocol.md §8); only its low bit (F) is on the wire.

LabeledExtract/LabeledExpand are RFC 9180 §4 with suite_id = "HPKE" || kem || kdf || aead,
as pyhpke's KDF objects implement them.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property
from typing import NamedTuple

from pyhpke.consts import KDFId as _PyKdfId
from pyhpke.kdf import KDF as _PyKdf

from .errors import EncodeError, PdmError

__all__ = [
    "KemId",
    "KdfId",
    "AeadId",
    "Suite",
    "DEFAULT_SUITE",
    "FiveTuple",
    "SessionKey",
    "client_secret",
    "session_key",
    "SALT_LEN",
    "KRI_LEN",
    "KRI_ROTATION_BITS",
    "kri_of",
    "kri_epoch",
    "kri_rotation",
]

KRI_LEN = 8
"""Octets of the Key Rotation Index in the key derivation context."""
KRI_ROTATION_BITS = 16
"""Low bits of the Kri that count rotations within one key epoch (docs/protocol.md §8)."""
_ROTATION_MASK = (1 << KRI_ROTATION_BITS) - 1


def kri_of(epoch: int, rotation: int) -> int:
    """The Kri of rotation ``rotation`` within key epoch ``epoch``."""
    return (epoch << KRI_ROTATION_BITS) | rotation


def kri_epoch(kri: int) -> int:
    """The key epoch a Kri belongs to."""
    return kri >> KRI_ROTATION_BITS


def kri_rotation(kri: int) -> int:
    """The rotation within its key epoch (its low bit is the F bit on the wire)."""
    return kri & _ROTATION_MASK


SALT_LEN = 32  # issue #2: the registration's salt is 32 octets


class KemId(IntEnum):
    """RFC 9180 §7.1 KEM identifiers."""

    DHKEM_P256_HKDF_SHA256 = 0x0010
    DHKEM_P384_HKDF_SHA384 = 0x0011
    DHKEM_P521_HKDF_SHA512 = 0x0012
    DHKEM_X25519_HKDF_SHA256 = 0x0020
    DHKEM_X448_HKDF_SHA512 = 0x0021


class KdfId(IntEnum):
    """RFC 9180 §7.2 KDF identifiers."""

    HKDF_SHA256 = 0x0001
    HKDF_SHA384 = 0x0002
    HKDF_SHA512 = 0x0003


class AeadId(IntEnum):
    """RFC 9180 §7.3 AEAD identifiers (Export-only is of no use to PDMv2)."""

    AES_128_GCM = 0x0001
    AES_256_GCM = 0x0002
    CHACHA20_POLY1305 = 0x0003


_NH = {KdfId.HKDF_SHA256: 32, KdfId.HKDF_SHA384: 48, KdfId.HKDF_SHA512: 64}
_NK = {AeadId.AES_128_GCM: 16, AeadId.AES_256_GCM: 32, AeadId.CHACHA20_POLY1305: 32}
_NN = 12  # all three AEADs


@dataclass(frozen=True)
class Suite:
    """An RFC 9180 cipher suite: (KEM, KDF, AEAD) ids."""

    kem: KemId = KemId.DHKEM_X25519_HKDF_SHA256
    """KEM id; used by the registration, and in suite_id."""
    kdf: KdfId = KdfId.HKDF_SHA256
    """KDF id: the hash of every LabeledExtract/LabeledExpand."""
    aead: AeadId = AeadId.AES_128_GCM
    """AEAD id: seals the encrypted option."""

    def __post_init__(self) -> None:
        for name, enum in (("kem", KemId), ("kdf", KdfId), ("aead", AeadId)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value))
            except ValueError:
                raise PdmError(f"suite: unsupported {name} id 0x{int(value):04x}") from None

    @classmethod
    def from_ids(cls, kem: int, kdf: int, aead: int) -> Suite:
        """The suite of three numeric ids (raises PdmError on an unsupported one)."""
        return cls(kem, kdf, aead)  # type: ignore[arg-type]  # __post_init__ checks and converts

    @property
    def nh(self) -> int:
        """Nh: output length of the KDF's hash."""
        return _NH[self.kdf]

    @property
    def nk(self) -> int:
        """Nk: AEAD key length."""
        return _NK[self.aead]

    @property
    def nn(self) -> int:
        """Nn: AEAD nonce length."""
        return _NN

    @cached_property
    def suite_id(self) -> bytes:
        """RFC 9180 §5.1: "HPKE" || I2OSP(kem, 2) || I2OSP(kdf, 2) || I2OSP(aead, 2)."""
        return b"HPKE" + struct.pack(">HHH", self.kem, self.kdf, self.aead)

    @cached_property
    def _kdf(self) -> _PyKdf:
        return _PyKdf(_PyKdfId(int(self.kdf)), self.suite_id)

    def labeled_extract(self, salt: bytes, label: bytes, ikm: bytes) -> bytes:
        """RFC 9180 §4 LabeledExtract."""
        return self._kdf.labeled_extract(salt, label, ikm)

    def labeled_expand(self, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
        """RFC 9180 §4 LabeledExpand."""
        return self._kdf.labeled_expand(prk, label, info, length)

    def as_dict(self) -> dict[str, int]:
        """{"kem", "kdf", "aead"} as ints, the shape of test vectors and key files."""
        return {"kem": int(self.kem), "kdf": int(self.kdf), "aead": int(self.aead)}

    def __str__(self) -> str:
        return f"{self.kem.name}/{self.kdf.name}/{self.aead.name}"


DEFAULT_SUITE = Suite()

_FIVE = struct.Struct(">16sH16sHB")


class FiveTuple(NamedTuple):
    """A flow's 5-tuple, as one packet carries it (src is the sender).

    A NamedTuple rather than a frozen dataclass: it is the key of every per-packet dictionary
    lookup, and a tuple's hash and equality run in C (five times faster here).
    """

    src: bytes
    """Source address, 16 octets."""
    src_port: int
    """Source port (0 for ICMPv6)."""
    dst: bytes
    """Destination address, 16 octets."""
    dst_port: int
    """Destination port (0 for ICMPv6)."""
    proto: int
    """Upper-layer protocol number (6 TCP, 17 UDP, 58 ICMPv6)."""

    @classmethod
    def from_text(cls, src: str, src_port: int, dst: str, dst_port: int, proto: int) -> FiveTuple:
        """Build from textual IPv6 addresses."""
        return cls(ipaddress.IPv6Address(src).packed, src_port, ipaddress.IPv6Address(dst).packed, dst_port, proto)

    def reversed(self) -> FiveTuple:
        """The same flow seen from the other end."""
        return FiveTuple(self.dst, self.dst_port, self.src, self.src_port, self.proto)

    def packed(self) -> bytes:
        """src(16) || src_port(2) || dst(16) || dst_port(2) || proto(1): the ctx without kri."""
        if len(self.src) != 16 or len(self.dst) != 16:  # struct's "16s" would pad silently
            raise EncodeError("five_tuple", "addresses must be 16 octets")
        try:
            return _FIVE.pack(self.src, self.src_port, self.dst, self.dst_port, self.proto)
        except struct.error:
            raise EncodeError("five_tuple", "address must be 16 octets, ports u16, proto u8") from None

    @property
    def src_text(self) -> str:
        """Source address as text."""
        return str(ipaddress.IPv6Address(self.src))

    @property
    def dst_text(self) -> str:
        """Destination address as text."""
        return str(ipaddress.IPv6Address(self.dst))

    def __str__(self) -> str:
        return f"[{self.src_text}]:{self.src_port} > [{self.dst_text}]:{self.dst_port} proto {self.proto}"


@dataclass(frozen=True, slots=True)
class SessionKey:
    """SessionTemporaryKey and base nonce of one direction of a flow at one Kri."""

    suite: Suite
    """The suite whose AEAD the key is for."""
    kri: int
    """Key Rotation Index the key was derived for."""
    key: bytes = field(repr=False)
    """SessionTemporaryKey, Nk octets (never shown)."""
    base_nonce: bytes = field(repr=False)
    """Base nonce, Nn octets (never shown)."""


def _address_bytes(addr: bytes | str | ipaddress.IPv6Address) -> bytes:
    if isinstance(addr, bytes):
        if len(addr) != 16:
            raise EncodeError("client_addr", f"need 16 octets, got {len(addr)}")
        return addr
    try:
        return ipaddress.IPv6Address(addr).packed
    except ValueError:
        raise EncodeError("client_addr", "not an IPv6 address") from None


def client_secret(
    suite: Suite, *, shared_secret: bytes, salt: bytes, client_addr: bytes | str | ipaddress.IPv6Address
) -> bytes:
    """The secondary client's secret: Nh octets bound to its IPv6 address C (draft Appendix B.2 step 6)."""
    if len(shared_secret) != suite.nh:
        raise EncodeError("shared_secret", f"need Nh={suite.nh} octets, got {len(shared_secret)}")
    if len(salt) != SALT_LEN:
        raise EncodeError("salt", f"need {SALT_LEN} octets, got {len(salt)}")
    prk = suite.labeled_extract(salt, b"pdmv2 client", shared_secret)
    return suite.labeled_expand(prk, b"client", _address_bytes(client_addr), suite.nh)


def session_key(suite: Suite, *, client_secret: bytes, flow: FiveTuple, kri: int) -> SessionKey:
    """SessionTemporaryKey and base nonce for the direction ``flow.src -> flow.dst`` at ``kri``."""
    if len(client_secret) != suite.nh:
        raise EncodeError("client_secret", f"need Nh={suite.nh} octets, got {len(client_secret)}")
    if not 0 <= kri < 1 << 64:
        raise EncodeError("kri", f"{kri} is not a 64-bit value")
    ctx = flow.packed() + kri.to_bytes(KRI_LEN, "big")
    prk = suite.labeled_extract(b"", b"pdmv2 session", client_secret)
    return SessionKey(
        suite,
        kri,
        key=suite.labeled_expand(prk, b"key", ctx, suite.nk),
        base_nonce=suite.labeled_expand(prk, b"base_nonce", ctx, suite.nn),
    )
