"""The registration handshake of Primary Client and Primary Server (pure: no sockets, no clock).

draft -03 §4.2 and Appendix B.2 say only that PC and PS negotiate a SharedSecret with the HPKE
KEM.  Implementation choice (docs/registration.md):

* Both primaries have static KEM key pairs.  The PC pins the PS public key (its fingerprint);
  the PS keeps an allow-list of PC public keys.  HPKE runs in Auth mode (RFC 9180 §5.1.3),
  sender = PC, recipient = PS, info = "pdmv2 registration".
* transcript = SHA-256(SETUP request body || SETUP response body).
* The PC proves its key and binds the salt: confirm = Seal(aad = transcript || salt,
  pt = "pdmv2 pc confirm").  Only a context made with the PC's private key opens it.
* SharedSecret = Export("pdmv2 shared secret", Nh); the PS proves it derived the same context
  with Export("pdmv2 ps confirm" || transcript, 32), which only the PS private key allows.

Callers drive it: ClientHandshake.start -> on_setup_response -> on_kem_response, and
ServerHandshake.on_setup_request -> on_kem_request.  Errors are RegistrationError with the
code that goes on the wire.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyhpke import AEADId as PyAead
from pyhpke import CipherSuite, KEMKeyInterface, KEMKeyPair, PyHPKEError
from pyhpke import KDFId as PyKdf
from pyhpke import KEMId as PyKem

from .errors import ConfigError, PdmError, RegistrationError
from .keys import SALT_LEN, AeadId, KdfId, KemId, Suite
from .regmsg import (
    NONCE_LEN,
    REGISTRATION_ID_LEN,
    ErrorCode,
    KemRequest,
    KemResponse,
    SetupRequest,
    SetupResponse,
    encode_body,
)

__all__ = [
    "INFO",
    "DEFAULT_LIFETIME_S",
    "DEFAULT_OVERLAP_S",
    "Identity",
    "AllowEntry",
    "AllowList",
    "Registration",
    "ClientHandshake",
    "ServerHandshake",
    "fingerprint",
    "hpke_suite",
    "parse_identity",
    "dump_identity",
    "parse_allow_list",
]

INFO = b"pdmv2 registration"
PC_CONFIRM = b"pdmv2 pc confirm"
DEFAULT_LIFETIME_S = 86_400  # seconds a SharedSecret is valid
DEFAULT_OVERLAP_S = 300  # seconds an older registration stays valid after a new one
RandomBytes = Callable[[int], bytes]


def hpke_suite(suite: Suite) -> CipherSuite:
    """The pyhpke CipherSuite of one of our suites."""
    return CipherSuite.new(PyKem(int(suite.kem)), PyKdf(int(suite.kdf)), PyAead(int(suite.aead)))


def fingerprint(kem: int, public_key: bytes) -> str:
    """ "sha256:" + hex SHA-256(I2OSP(kem, 2) || public key): what a PC pins and a PS allows."""
    return "sha256:" + hashlib.sha256(int(kem).to_bytes(2, "big") + public_key).hexdigest()


class Identity:
    """A primary's static KEM key pair (the private half never shown)."""

    __slots__ = ("_pair", "kem", "public_key")

    def __init__(self, kem: KemId, pair: KEMKeyPair) -> None:
        self.kem = kem
        self._pair = pair
        self.public_key: bytes = pair.public_key.to_public_bytes()

    @classmethod
    def generate(cls, kem: KemId, *, ikm: bytes) -> Identity:
        """Derive a key pair from ``ikm`` (random octets from the caller, at least 64)."""
        if len(ikm) < 64:
            raise PdmError("identity: need at least 64 octets of key material")
        hs = CipherSuite.new(PyKem(int(kem)), PyKdf.HKDF_SHA256, PyAead.AES128_GCM)
        return cls(kem, hs.kem.derive_key_pair(ikm))

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the public key."""
        return fingerprint(self.kem, self.public_key)

    @property
    def private_key(self) -> KEMKeyInterface:
        """The pyhpke private key (for HPKE calls only)."""
        return self._pair.private_key

    def private_bytes(self) -> bytes:
        """Serialized private key (for the identity file only)."""
        return bytes(self._pair.private_key.to_private_bytes())

    def __repr__(self) -> str:
        return f"Identity({self.kem.name}, {self.fingerprint})"


def dump_identity(identity: Identity) -> str:
    """JSON text of an identity file (0600)."""
    return (
        json.dumps(
            {
                "type": "pdmv2-identity",
                "version": 1,
                "kem": int(identity.kem),
                "private_key": identity.private_bytes().hex(),
                "public_key": identity.public_key.hex(),
                "fingerprint": identity.fingerprint,
            },
            indent=2,
        )
        + "\n"
    )


def parse_identity(text: str, source: str = "identity file") -> Identity:
    """An identity from its JSON text; ConfigError names the field that is wrong."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise ConfigError(source, "json", "not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("type") != "pdmv2-identity":
        raise ConfigError(source, "type", "not a pdmv2 identity file")
    kem_id = doc.get("kem")
    if not isinstance(kem_id, int) or kem_id not in KemId._value2member_map_:
        raise ConfigError(source, "kem", f"unsupported KEM {kem_id!r}")
    kem = KemId(kem_id)
    try:
        priv = bytes.fromhex(str(doc.get("private_key", "")))
        pub = bytes.fromhex(str(doc.get("public_key", "")))
    except ValueError:
        raise ConfigError(source, "private_key", "not hexadecimal") from None
    hs = CipherSuite.new(PyKem(int(kem)), PyKdf.HKDF_SHA256, PyAead.AES128_GCM)
    try:
        sk = hs.kem.deserialize_private_key(priv)
        pk = hs.kem.deserialize_public_key(pub)
    except (PyHPKEError, ValueError, TypeError):
        raise ConfigError(source, "private_key", "not a key of this KEM") from None
    identity = Identity(kem, KEMKeyPair(sk, pk))
    if identity.public_key != pk.to_public_bytes():  # pragma: no cover - defensive
        raise ConfigError(source, "public_key", "does not match the private key")
    return identity


@dataclass(frozen=True)
class AllowEntry:
    """One Primary Client the PS accepts."""

    name: str
    """Label for logs."""
    fingerprint: str
    """Fingerprint of its public key."""
    prefixes: tuple[ipaddress.IPv6Network, ...] = ()
    """Client prefixes it may speak for (empty: any)."""


@dataclass(frozen=True)
class AllowList:
    """The PS allow-list of PC public keys."""

    entries: tuple[AllowEntry, ...]
    """Accepted PCs."""

    def find(self, fp: str) -> AllowEntry | None:
        """The entry of this fingerprint, if any."""
        for e in self.entries:
            if hmac.compare_digest(e.fingerprint, fp):
                return e
        return None


def parse_allow_list(doc: Any, source: str = "allow list") -> AllowList:
    """From parsed YAML/JSON: {"clients": [{"name", "fingerprint", "prefixes"?}]}."""
    if not isinstance(doc, dict) or not isinstance(doc.get("clients"), list):
        raise ConfigError(source, "clients", "must be a list")
    entries = []
    for i, item in enumerate(doc["clients"]):
        where = f"clients[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(source, where, "must be a mapping")
        fp = item.get("fingerprint")
        if not isinstance(fp, str) or not fp.startswith("sha256:") or len(fp) != 71:
            raise ConfigError(source, f"{where}.fingerprint", "must be sha256:<64 hex digits>")
        prefixes = []
        for j, p in enumerate(item.get("prefixes") or []):
            try:
                prefixes.append(ipaddress.IPv6Network(str(p)))
            except ValueError:
                raise ConfigError(source, f"{where}.prefixes[{j}]", f"{p!r} is not an IPv6 prefix") from None
        entries.append(AllowEntry(str(item.get("name", f"pc{i}")), fp.lower(), tuple(prefixes)))
    return AllowList(tuple(entries))


@dataclass(frozen=True, kw_only=True)
class Registration:
    """The outcome of one registration, as both primaries store it (built by keyword only)."""

    suite: Suite
    """Suite negotiated."""
    registration_id: str
    """16 octets in hex."""
    shared_secret: bytes = field(repr=False)
    """SharedSecret, Nh octets (never shown)."""
    salt: bytes = field(repr=False)
    """Salt of the data-phase key schedule, 32 octets (never shown)."""
    created: int = 0
    """Unix time of the registration."""
    expires: int = 0
    """Unix time after which the secret is not used."""
    prefixes: tuple[ipaddress.IPv6Network, ...] = ()
    """Client prefixes the registration covers."""
    peer: str = ""
    """Fingerprint of the other primary."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the 0600 registration file)."""
        return {
            "suite": self.suite.as_dict(),
            "registration_id": self.registration_id,
            "shared_secret": self.shared_secret.hex(),
            "salt": self.salt.hex(),
            "created": self.created,
            "expires": self.expires,
            "prefixes": [str(p) for p in self.prefixes],
            "peer": self.peer,
        }

    @classmethod
    def from_dict(cls, doc: Any, source: str = "registration") -> Registration:
        """Inverse of to_dict; ConfigError names the field."""
        if not isinstance(doc, dict):
            raise ConfigError(source, "registration", "must be an object")
        try:
            s = doc["suite"]
            suite = Suite.from_ids(int(s["kem"]), int(s["kdf"]), int(s["aead"]))
        except (KeyError, TypeError, ValueError, PdmError):
            raise ConfigError(source, "suite", "missing or unsupported") from None
        try:
            shared = bytes.fromhex(doc["shared_secret"])
            salt = bytes.fromhex(doc["salt"])
            prefixes = tuple(ipaddress.IPv6Network(p) for p in doc.get("prefixes", []))
            reg = cls(
                suite=suite,
                registration_id=str(doc["registration_id"]),
                shared_secret=shared,
                salt=salt,
                created=int(doc.get("created", 0)),
                expires=int(doc["expires"]),
                prefixes=prefixes,
                peer=str(doc.get("peer", "")),
            )
        except (KeyError, TypeError, ValueError):
            raise ConfigError(source, "registration", "missing or malformed field") from None
        if len(shared) != suite.nh:
            raise ConfigError(source, "shared_secret", f"need Nh={suite.nh} octets")
        if len(salt) != SALT_LEN:
            raise ConfigError(source, "salt", f"need {SALT_LEN} octets")
        return reg


def _transcript(req: SetupRequest, resp: SetupResponse) -> bytes:
    return hashlib.sha256(encode_body(req) + encode_body(resp)).digest()


def _deserialize_public(suite: Suite, key: bytes, what: str) -> KEMKeyInterface:
    try:
        return hpke_suite(suite).kem.deserialize_public_key(key)
    except (PyHPKEError, ValueError, TypeError):
        raise RegistrationError(ErrorCode.MALFORMED, f"{what} is not a {suite.kem.name} public key") from None


class ClientHandshake:
    """The Primary Client's side of one registration."""

    def __init__(
        self,
        *,
        identities: dict[KemId, Identity],
        pin: str,
        prefixes: tuple[ipaddress.IPv6Network, ...],
        kems: tuple[int, ...] = (KemId.DHKEM_X25519_HKDF_SHA256,),
        kdfs: tuple[int, ...] = (KdfId.HKDF_SHA256,),
        aeads: tuple[int, ...] = (AeadId.AES_128_GCM,),
        random_bytes: RandomBytes,
    ) -> None:
        missing = [k for k in kems if k not in identities]
        if missing:
            raise PdmError(f"no identity key for offered KEM(s) {missing}")
        self._ids = identities
        self._pin = pin.lower()
        self._rand = random_bytes
        self.request = SetupRequest(
            random_bytes(NONCE_LEN),
            tuple(kems),
            tuple(kdfs),
            tuple(aeads),
            tuple(prefixes),
            tuple((int(k), identities[KemId(k)].public_key) for k in kems),
        )
        self._suite: Suite | None = None
        self._shared: bytes | None = None
        self._salt: bytes | None = None
        self._expect: bytes | None = None
        self._peer = ""

    def __repr__(self) -> str:
        return f"ClientHandshake(pin={self._pin}, suite={self._suite})"

    def start(self) -> SetupRequest:
        """The SETUP request."""
        return self.request

    def on_setup_response(self, resp: SetupResponse) -> KemRequest:
        """Check the PS (pin, suite offered) and produce the KEM request."""
        req = self.request
        if resp.kem not in req.kems or resp.kdf not in req.kdfs or resp.aead not in req.aeads:
            raise RegistrationError(ErrorCode.NO_COMMON_SUITE, "PS chose a suite the PC did not offer")
        suite = Suite.from_ids(resp.kem, resp.kdf, resp.aead)
        fp = fingerprint(resp.kem, resp.ps_key)
        if not hmac.compare_digest(fp, self._pin):
            raise RegistrationError(ErrorCode.PIN_MISMATCH, f"PS key {fp} does not match the pinned key")
        pkr = _deserialize_public(suite, resp.ps_key, "PS key")
        ident = self._ids[suite.kem]
        hs = hpke_suite(suite)
        transcript = _transcript(req, resp)
        salt = self._rand(SALT_LEN)
        try:
            enc, ctx = hs.create_sender_context(pkr, info=INFO, sks=ident.private_key)
            confirm = ctx.seal(PC_CONFIRM, aad=transcript + salt)
            self._shared = ctx.export(b"pdmv2 shared secret", suite.nh)
            self._expect = ctx.export(b"pdmv2 ps confirm" + transcript, 32)
        except (PyHPKEError, ValueError) as exc:
            raise RegistrationError(ErrorCode.INTERNAL, f"HPKE setup failed ({type(exc).__name__})") from None
        self._suite, self._salt, self._peer = suite, salt, fp
        return KemRequest(enc=enc, salt=salt, confirm=confirm)

    def on_kem_response(self, resp: KemResponse, *, now: int) -> Registration:
        """Check the PS key confirmation and return the registration."""
        if self._suite is None or self._shared is None or self._salt is None or self._expect is None:
            raise RegistrationError(ErrorCode.UNEXPECTED_MESSAGE, "KEM response before the setup")
        if resp.status != 0:
            raise RegistrationError(ErrorCode.AUTH_FAILED, f"PS answered status {resp.status}")
        if not hmac.compare_digest(resp.confirm, self._expect):
            raise RegistrationError(ErrorCode.AUTH_FAILED, "PS key confirmation does not match")
        return Registration(
            suite=self._suite,
            registration_id=resp.registration_id.hex(),
            shared_secret=self._shared,
            salt=self._salt,
            created=now,
            expires=now + resp.lifetime,
            prefixes=self.request.prefixes,
            peer=self._peer,
        )


class ServerHandshake:
    """The Primary Server's side of one registration."""

    def __init__(
        self,
        *,
        identities: dict[KemId, Identity],
        allow: AllowList,
        kdfs: tuple[int, ...] = tuple(KdfId),
        aeads: tuple[int, ...] = tuple(AeadId),
        lifetime: int = DEFAULT_LIFETIME_S,
        random_bytes: RandomBytes,
    ) -> None:
        self._ids = identities
        self._allow = allow
        self._kdfs = kdfs
        self._aeads = aeads
        self._lifetime = lifetime
        self._rand = random_bytes
        self._req: SetupRequest | None = None
        self._resp: SetupResponse | None = None
        self._pc_key: KEMKeyInterface | None = None
        self.client: AllowEntry | None = None

    def __repr__(self) -> str:
        return f"ServerHandshake(client={self.client.name if self.client else None})"

    def on_setup_request(self, req: SetupRequest) -> SetupResponse:
        """Choose the suite (the PC's most preferred that the PS supports) and check the PC."""
        kem = next((k for k in req.kems if k in KemId._value2member_map_ and KemId(k) in self._ids), None)
        kdf = next((k for k in req.kdfs if k in self._kdfs), None)
        aead = next((a for a in req.aeads if a in self._aeads), None)
        if kem is None or kdf is None or aead is None:
            raise RegistrationError(ErrorCode.NO_COMMON_SUITE, "no KEM/KDF/AEAD in common")
        suite = Suite.from_ids(kem, kdf, aead)
        pc_key = dict(req.pc_keys).get(kem)
        if pc_key is None:
            raise RegistrationError(ErrorCode.MALFORMED, f"no PC key for KEM {kem}")
        entry = self._allow.find(fingerprint(kem, pc_key))
        if entry is None:
            raise RegistrationError(ErrorCode.UNAUTHORIZED, "PC key is not on the allow-list")
        if entry.prefixes:
            for p in req.prefixes:
                if not any(p.subnet_of(a) for a in entry.prefixes):
                    raise RegistrationError(ErrorCode.PREFIX_NOT_ALLOWED, f"{p} is outside what {entry.name} may claim")
        self._pc_key = _deserialize_public(suite, pc_key, "PC key")
        self.client = entry
        ident = self._ids[KemId(kem)]
        self._req = req
        self._resp = SetupResponse(self._rand(NONCE_LEN), kem, kdf, aead, ident.public_key)
        return self._resp

    def on_kem_request(self, req: KemRequest, *, now: int) -> tuple[KemResponse, Registration]:
        """Open the PC's confirmation, export the SharedSecret, answer with the PS confirmation."""
        if self._req is None or self._resp is None or self._pc_key is None or self.client is None:
            raise RegistrationError(ErrorCode.UNEXPECTED_MESSAGE, "KEM request before the setup")
        suite = Suite.from_ids(self._resp.kem, self._resp.kdf, self._resp.aead)
        transcript = _transcript(self._req, self._resp)
        ident = self._ids[suite.kem]
        try:
            ctx = hpke_suite(suite).create_recipient_context(req.enc, ident.private_key, info=INFO, pks=self._pc_key)
            if ctx.open(req.confirm, aad=transcript + req.salt) != PC_CONFIRM:
                raise RegistrationError(ErrorCode.AUTH_FAILED, "PC confirmation has the wrong content")
            shared = ctx.export(b"pdmv2 shared secret", suite.nh)
            confirm = ctx.export(b"pdmv2 ps confirm" + transcript, 32)
        except RegistrationError:
            raise
        except (PyHPKEError, ValueError, TypeError):
            raise RegistrationError(
                ErrorCode.AUTH_FAILED, "HPKE open failed: wrong key, tampered enc or salt"
            ) from None
        reg_id = self._rand(REGISTRATION_ID_LEN)
        reg = Registration(
            suite=suite,
            registration_id=reg_id.hex(),
            shared_secret=shared,
            salt=req.salt,
            created=now,
            expires=now + self._lifetime,
            prefixes=self._req.prefixes,
            peer=self.client.fingerprint,
        )
        return KemResponse(status=0, registration_id=reg_id, lifetime=self._lifetime, confirm=confirm), reg
