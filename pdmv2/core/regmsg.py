"""Registration message codec (pure): the framing and the four messages of draft -03 Appendix B.

Frame (docs/registration.md has the byte diagrams):

    magic "PR" (2) | version (1) | type (1) | body length (2, big-endian) | body

A frame whose body is longer than ``MAX_BODY`` is refused before it is read.  Every decoder
raises :class:`DecodeError` naming the field and offset (offsets count from the body start).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from .errors import DecodeError, EncodeError
from .keys import SALT_LEN

__all__ = [
    "MAGIC",
    "VERSION",
    "HEADER_LEN",
    "MAX_BODY",
    "NONCE_LEN",
    "REGISTRATION_ID_LEN",
    "MsgType",
    "ErrorCode",
    "FrameHeader",
    "SetupRequest",
    "SetupResponse",
    "KemRequest",
    "KemResponse",
    "ErrorMessage",
    "Message",
    "encode_header",
    "decode_header",
    "encode_message",
    "decode_body",
]

MAGIC = b"PR"
VERSION = 1
HEADER_LEN = 6
MAX_BODY = 4096  # hard limit: the largest legitimate message (P-521 keys, 16 prefixes) is < 1 KiB
NONCE_LEN = 16
REGISTRATION_ID_LEN = 16
MAX_REASON = 200
_HDR = struct.Struct(">2sBBH")


class MsgType(IntEnum):
    """Message types (draft -03 Appendix B.3: setup and KEM, each a request and a response)."""

    SETUP_REQUEST = 1
    SETUP_RESPONSE = 2
    KEM_REQUEST = 3
    KEM_RESPONSE = 4
    ERROR = 0x7F


class ErrorCode(IntEnum):
    """Numeric codes of ERROR messages and of RegistrationError."""

    MALFORMED = 1
    UNSUPPORTED_VERSION = 2
    NO_COMMON_SUITE = 3
    UNAUTHORIZED = 4
    AUTH_FAILED = 5
    TIMEOUT = 6
    TOO_LARGE = 7
    UNEXPECTED_MESSAGE = 8
    PIN_MISMATCH = 9
    PREFIX_NOT_ALLOWED = 10
    BUSY = 11
    INTERNAL = 12
    CONNECTION = 13


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """The 6 octets in front of every message."""

    version: int
    """Protocol version (1)."""
    type: int
    """Message type (MsgType value; unknown values are refused by decode_body)."""
    length: int
    """Body length in octets."""


@dataclass(frozen=True, slots=True)
class SetupRequest:
    """PC -> PS: what the PC offers, who it is, which clients it speaks for (Appendix B.2 step 1)."""

    nonce: bytes
    """16 random octets, fresh per registration (part of the transcript)."""
    kems: tuple[int, ...]
    """KEM ids, most preferred first."""
    kdfs: tuple[int, ...]
    """KDF ids, most preferred first."""
    aeads: tuple[int, ...]
    """AEAD ids, most preferred first."""
    prefixes: tuple[ipaddress.IPv6Network, ...]
    """Client prefixes of the secondary clients."""
    pc_keys: tuple[tuple[int, bytes], ...]
    """The PC's static public key for each KEM it offers: (kem id, serialized key)."""


@dataclass(frozen=True, slots=True)
class SetupResponse:
    """PS -> PC: the suite chosen and the PS public key (Appendix B.2 step 2)."""

    nonce: bytes
    """16 random octets of the PS (part of the transcript)."""
    kem: int
    """KEM id chosen."""
    kdf: int
    """KDF id chosen."""
    aead: int
    """AEAD id chosen."""
    ps_key: bytes
    """The PS static public key for that KEM."""


@dataclass(frozen=True, slots=True)
class KemRequest:
    """PC -> PS: HPKE encapsulation, the salt, and a sealed confirmation (Appendix B.2 step 3)."""

    enc: bytes
    """HPKE enc (Auth mode, sender = PC static key)."""
    salt: bytes = field(repr=False)
    """32 octets used by the key schedule of the data phase."""
    confirm: bytes = field(repr=False)
    """Seal(aad = transcript || salt, "pdmv2 pc confirm"): authenticates PC and salt."""


@dataclass(frozen=True, slots=True)
class KemResponse:
    """PS -> PC: status, registration id and lifetime, and the PS key confirmation (step 4)."""

    status: int
    """0 on success."""
    registration_id: bytes
    """16 octets naming this registration."""
    lifetime: int
    """Seconds the SharedSecret is valid."""
    confirm: bytes = field(repr=False)
    """Export("pdmv2 ps confirm" || transcript, 32): only the holder of the PS key can make it."""


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """Either side: a numeric code and a short reason; the connection closes after it."""

    code: int
    """ErrorCode value."""
    reason: str
    """Human-readable reason (at most 200 UTF-8 octets); never a secret."""


Message = SetupRequest | SetupResponse | KemRequest | KemResponse | ErrorMessage


# -- framing ---------------------------------------------------------------------------------------


def encode_header(msg_type: MsgType, length: int) -> bytes:
    """The frame header for a body of ``length`` octets."""
    if length > MAX_BODY:
        raise EncodeError("body", f"{length} octets exceed the limit of {MAX_BODY}")
    return _HDR.pack(MAGIC, VERSION, msg_type, length)


def decode_header(data: bytes) -> FrameHeader:
    """Check magic, version and length limit of a 6-octet frame header."""
    if len(data) != HEADER_LEN:
        raise DecodeError("header", len(data), f"need {HEADER_LEN} octets")
    magic, version, msg_type, length = _HDR.unpack(data)
    if magic != MAGIC:
        raise DecodeError("magic", 0, "not a pdmv2 registration frame")
    if version != VERSION:
        raise DecodeError("version", 2, f"unsupported version {version}")
    if length > MAX_BODY:
        raise DecodeError("length", 4, f"body of {length} octets exceeds the limit of {MAX_BODY}")
    return FrameHeader(version=version, type=msg_type, length=length)


# -- body readers/writers ----------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, name: str) -> bytes:
        if self.pos + n > len(self.data):
            raise DecodeError(name, self.pos, f"need {n} octets, {len(self.data) - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, name: str) -> int:
        return self.take(1, name)[0]

    def u16(self, name: str) -> int:
        return int.from_bytes(self.take(2, name), "big")

    def u32(self, name: str) -> int:
        return int.from_bytes(self.take(4, name), "big")

    def vec16(self, name: str) -> bytes:
        return self.take(self.u16(f"{name}.length"), name)

    def ids(self, name: str) -> tuple[int, ...]:
        n = self.u8(f"{name}.count")
        if n == 0:
            raise DecodeError(name, self.pos - 1, "empty list")
        return tuple(self.u16(name) for _ in range(n))

    def end(self) -> None:
        if self.pos != len(self.data):
            raise DecodeError("body", self.pos, f"{len(self.data) - self.pos} trailing octets")


def _vec16(data: bytes, name: str) -> bytes:
    if len(data) > 0xFFFF:
        raise EncodeError(name, "too long")
    return struct.pack(">H", len(data)) + data


def _ids(values: tuple[int, ...], name: str) -> bytes:
    if not 0 < len(values) < 256:
        raise EncodeError(name, "need 1..255 ids")
    try:
        return bytes((len(values),)) + b"".join(struct.pack(">H", v) for v in values)
    except struct.error:
        raise EncodeError(name, "ids are 16-bit") from None


def _exact(data: bytes, n: int, name: str) -> bytes:
    if len(data) != n:
        raise EncodeError(name, f"need {n} octets, got {len(data)}")
    return data


def _body(msg: Message) -> tuple[MsgType, bytes]:
    if isinstance(msg, SetupRequest):
        if not 0 < len(msg.prefixes) < 256:
            raise EncodeError("prefixes", "need 1..255 client prefixes")
        if not 0 < len(msg.pc_keys) < 256:
            raise EncodeError("pc_keys", "need 1..255 keys")
        body = _exact(msg.nonce, NONCE_LEN, "nonce")
        body += _ids(msg.kems, "kems") + _ids(msg.kdfs, "kdfs") + _ids(msg.aeads, "aeads")
        body += bytes((len(msg.prefixes),)) + b"".join(
            p.network_address.packed + bytes((p.prefixlen,)) for p in msg.prefixes
        )
        body += bytes((len(msg.pc_keys),)) + b"".join(
            struct.pack(">H", kem) + _vec16(key, "pc_keys") for kem, key in msg.pc_keys
        )
        return MsgType.SETUP_REQUEST, body
    if isinstance(msg, SetupResponse):
        body = _exact(msg.nonce, NONCE_LEN, "nonce") + struct.pack(">HHH", msg.kem, msg.kdf, msg.aead)
        return MsgType.SETUP_RESPONSE, body + _vec16(msg.ps_key, "ps_key")
    if isinstance(msg, KemRequest):
        body = _vec16(msg.enc, "enc") + _exact(msg.salt, SALT_LEN, "salt") + _vec16(msg.confirm, "confirm")
        return MsgType.KEM_REQUEST, body
    if isinstance(msg, KemResponse):
        body = bytes((msg.status,)) + _exact(msg.registration_id, REGISTRATION_ID_LEN, "registration_id")
        return MsgType.KEM_RESPONSE, body + struct.pack(">I", msg.lifetime) + _vec16(msg.confirm, "confirm")
    if isinstance(msg, ErrorMessage):
        reason = msg.reason.encode("utf-8", "replace")[:MAX_REASON]
        return MsgType.ERROR, struct.pack(">HB", msg.code, len(reason)) + reason
    raise EncodeError("message", f"not a registration message: {type(msg).__name__}")


def encode_message(msg: Message) -> bytes:
    """The whole frame (header and body) of one message."""
    msg_type, body = _body(msg)
    return encode_header(msg_type, len(body)) + body


def encode_body(msg: Message) -> bytes:
    """The body alone (what the transcript hashes)."""
    return _body(msg)[1]


def decode_body(msg_type: int, body: bytes) -> Message:
    """Decode the body of a frame of type ``msg_type``."""
    r = _Reader(bytes(body))
    msg: Message
    if msg_type == MsgType.SETUP_REQUEST:
        nonce = r.take(NONCE_LEN, "nonce")
        kems, kdfs, aeads = r.ids("kems"), r.ids("kdfs"), r.ids("aeads")
        prefixes = []
        for _ in range(r.u8("prefixes.count")):
            at = r.pos
            addr, plen = r.take(16, "prefix"), r.u8("prefix.length")
            try:
                prefixes.append(ipaddress.IPv6Network((addr, plen)))
            except ValueError:
                raise DecodeError("prefix", at, "host bits set or length over 128") from None
        if not prefixes:
            raise DecodeError("prefixes", r.pos, "empty list")
        keys = []
        for _ in range(r.u8("pc_keys.count")):
            keys.append((r.u16("pc_keys.kem"), r.vec16("pc_keys.key")))
        if not keys:
            raise DecodeError("pc_keys", r.pos, "empty list")
        msg = SetupRequest(
            nonce=nonce, kems=kems, kdfs=kdfs, aeads=aeads, prefixes=tuple(prefixes), pc_keys=tuple(keys)
        )
    elif msg_type == MsgType.SETUP_RESPONSE:
        nonce = r.take(NONCE_LEN, "nonce")
        kem, kdf, aead = r.u16("kem"), r.u16("kdf"), r.u16("aead")
        msg = SetupResponse(nonce=nonce, kem=kem, kdf=kdf, aead=aead, ps_key=r.vec16("ps_key"))
    elif msg_type == MsgType.KEM_REQUEST:
        msg = KemRequest(enc=r.vec16("enc"), salt=r.take(SALT_LEN, "salt"), confirm=r.vec16("confirm"))
    elif msg_type == MsgType.KEM_RESPONSE:
        msg = KemResponse(
            status=r.u8("status"),
            registration_id=r.take(REGISTRATION_ID_LEN, "registration_id"),
            lifetime=r.u32("lifetime"),
            confirm=r.vec16("confirm"),
        )
    elif msg_type == MsgType.ERROR:
        code = r.u16("code")
        at = r.pos
        raw = r.take(r.u8("reason.length"), "reason")
        try:
            reason = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("reason", at, "not UTF-8") from None
        msg = ErrorMessage(code=code, reason=reason)
    else:
        raise DecodeError("type", 3, f"unknown message type {msg_type}")
    r.end()
    return msg
