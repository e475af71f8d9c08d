"""Key material of a secondary, as the agent holds it (pure: parsing and derivation, no files).

A secondary client holds its client_secret, bound to its own address.  A secondary server holds
SharedSecret + salt and the client prefixes they cover, and derives client_secret(C) for a client
C on its first packet (draft -03 Appendix B.1).  Both answer one question: which client_secret
protects the flow between ``local`` and ``remote``?
"""

from __future__ import annotations

import ipaddress
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import ConfigError, PdmError, UnknownKeyError
from .keys import SALT_LEN, Suite, client_secret

__all__ = [
    "KeyProvider",
    "ClientKeyring",
    "ServerKeyring",
    "CombinedKeyring",
    "parse_key_file",
    "dump_client_key_file",
    "dump_server_key_file",
    "CLIENT_KEY_TYPE",
    "SERVER_KEY_TYPE",
]

CLIENT_KEY_TYPE = "pdmv2-client-secret"
SERVER_KEY_TYPE = "pdmv2-server-secret"
KEY_FILE_VERSION = 1


class KeyProvider(Protocol):
    """What the per-flow engine asks for: the suite, and the client_secret of a flow."""

    @property
    def suite(self) -> Suite: ...

    def client_secret_for(self, *, local: bytes, remote: bytes) -> bytes:
        """client_secret protecting the flow; raises UnknownKeyError when none does."""
        ...

    def drop_cache(self) -> None:
        """Forget derived secrets kept for speed (after a flood, so their memory goes back)."""
        ...


@dataclass(frozen=True)
class ClientKeyring:
    """A secondary client's key: client_secret for its own address."""

    suite: Suite
    """Suite of the registration."""
    client_addr: bytes
    """The address the secret is bound to (16 octets)."""
    secret: bytes = field(repr=False)
    """client_secret, Nh octets (never shown)."""
    server_prefixes: tuple[ipaddress.IPv6Network, ...] = ()
    """Where the secondary servers are; empty means any remote."""
    registration_id: str = ""
    """Registration the secret came from."""
    expires: int = 0
    """Unix time after which the secret is no longer used (0: never)."""

    def __repr__(self) -> str:
        servers = ", ".join(map(str, self.server_prefixes)) or "any"
        return (
            f"ClientKeyring(suite={self.suite}, client_addr={ipaddress.IPv6Address(self.client_addr)}, "
            f"servers={servers}, registration_id={self.registration_id!r})"
        )

    def client_secret_for(self, *, local: bytes, remote: bytes) -> bytes:
        if local != self.client_addr:
            raise UnknownKeyError("no client_secret for this local address")
        if self.server_prefixes and not _covered(remote, self.server_prefixes):
            raise UnknownKeyError("remote address outside the secondary servers' prefixes")
        return self.secret

    def drop_cache(self) -> None:
        """Nothing is cached: the one secret is the key file's."""


class ServerKeyring:
    """A secondary server's keys: derives client_secret(C) per client, cached (bounded)."""

    __slots__ = ("_cache", "_max", "_salt", "_shared", "client_prefixes", "expires", "registration_id", "suite")

    def __init__(
        self,
        suite: Suite,
        *,
        shared_secret: bytes,
        salt: bytes,
        client_prefixes: tuple[ipaddress.IPv6Network, ...],
        registration_id: str = "",
        expires: int = 0,
        cache_size: int = 4096,
    ) -> None:
        if len(shared_secret) != suite.nh:
            raise PdmError(f"shared_secret: need Nh={suite.nh} octets")
        if len(salt) != SALT_LEN:
            raise PdmError(f"salt: need {SALT_LEN} octets")
        self.suite = suite
        self.client_prefixes = client_prefixes
        self.registration_id = registration_id
        self.expires = expires
        self._shared = shared_secret
        self._salt = salt
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._max = cache_size

    def __repr__(self) -> str:
        prefixes = ", ".join(map(str, self.client_prefixes))
        return (
            f"ServerKeyring(suite={self.suite}, client_prefixes=[{prefixes}], registration_id={self.registration_id!r})"
        )

    def client_secret_for(self, *, local: bytes, remote: bytes) -> bytes:
        cached = self._cache.get(remote)
        if cached is not None:
            self._cache.move_to_end(remote)
            return cached
        if not _covered(remote, self.client_prefixes):
            raise UnknownKeyError("remote address outside the registered client prefixes")
        secret = client_secret(self.suite, shared_secret=self._shared, salt=self._salt, client_addr=remote)
        self._cache[remote] = secret
        if len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return secret

    def drop_cache(self) -> None:
        """Forget the client_secrets derived so far (they are derived again when needed)."""
        self._cache = OrderedDict()


class CombinedKeyring:
    """Several keyrings tried in order (a host that is both client and server, or two registrations)."""

    __slots__ = ("rings",)

    def __init__(self, rings: Sequence[KeyProvider]) -> None:
        if not rings:
            raise PdmError("a keyring needs at least one key")
        suites = {r.suite for r in rings}
        if len(suites) != 1:
            raise PdmError("all keys of one host must use the same suite")
        self.rings = list(rings)

    @property
    def suite(self) -> Suite:
        return self.rings[0].suite

    def __repr__(self) -> str:
        return f"CombinedKeyring({self.rings!r})"

    def client_secret_for(self, *, local: bytes, remote: bytes) -> bytes:
        for ring in self.rings:
            try:
                return ring.client_secret_for(local=local, remote=remote)
            except UnknownKeyError:
                continue
        raise UnknownKeyError("no key covers this flow")

    def drop_cache(self) -> None:
        """Every keyring's cache."""
        for ring in self.rings:
            ring.drop_cache()


def _covered(addr: bytes, prefixes: tuple[ipaddress.IPv6Network, ...]) -> bool:
    a = ipaddress.IPv6Address(addr)
    return any(a in p for p in prefixes)


# --- key files: JSON, written 0600 by `pdmv2 secrets`, read by the agent --------------------------


def _get(doc: dict[str, Any], source: str, name: str, kind: type) -> Any:
    if name not in doc:
        raise ConfigError(source, name, "missing")
    value = doc[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(source, name, f"must be {kind.__name__}")
    return value


def _hex(doc: dict[str, Any], source: str, name: str, length: int) -> bytes:
    text = _get(doc, source, name, str)
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(source, name, "not hexadecimal") from None
    if len(value) != length:
        raise ConfigError(source, name, f"need {length} octets, got {len(value)}")
    return value


def _prefixes(doc: dict[str, Any], source: str, name: str) -> tuple[ipaddress.IPv6Network, ...]:
    items = doc.get(name, [])
    if not isinstance(items, list):
        raise ConfigError(source, name, "must be a list of IPv6 prefixes")
    out = []
    for i, text in enumerate(items):
        try:
            out.append(ipaddress.IPv6Network(str(text)))
        except ValueError:
            raise ConfigError(source, f"{name}[{i}]", f"{text!r} is not an IPv6 prefix") from None
    return tuple(out)


def _suite(doc: dict[str, Any], source: str) -> Suite:
    raw = _get(doc, source, "suite", dict)
    try:
        return Suite.from_ids(
            _get(raw, f"{source} suite", "kem", int),
            _get(raw, f"{source} suite", "kdf", int),
            _get(raw, f"{source} suite", "aead", int),
        )
    except ConfigError:
        raise
    except PdmError as exc:
        raise ConfigError(source, "suite", str(exc)) from None


def parse_key_file(text: str, source: str = "key file") -> ClientKeyring | ServerKeyring:
    """Parse one key file (either kind); ConfigError names the field that is wrong."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(source, "json", f"not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict):
        raise ConfigError(source, "json", "must be an object")
    kind = _get(doc, source, "type", str)
    version = _get(doc, source, "version", int)
    if version != KEY_FILE_VERSION:
        raise ConfigError(source, "version", f"unsupported key file version {version}")
    suite = _suite(doc, source)
    reg = doc.get("registration_id", "")
    expires = doc.get("expires", 0)
    if not isinstance(reg, str):
        raise ConfigError(source, "registration_id", "must be str")
    if not isinstance(expires, int) or isinstance(expires, bool):
        raise ConfigError(source, "expires", "must be int")
    if kind == CLIENT_KEY_TYPE:
        try:
            addr = ipaddress.IPv6Address(_get(doc, source, "client_addr", str)).packed
        except ValueError:
            raise ConfigError(source, "client_addr", "not an IPv6 address") from None
        return ClientKeyring(
            suite,
            addr,
            _hex(doc, source, "client_secret", suite.nh),
            _prefixes(doc, source, "server_prefixes"),
            reg,
            expires,
        )
    if kind == SERVER_KEY_TYPE:
        prefixes = _prefixes(doc, source, "client_prefixes")
        if not prefixes:
            raise ConfigError(source, "client_prefixes", "must name at least one prefix")
        return ServerKeyring(
            suite,
            shared_secret=_hex(doc, source, "shared_secret", suite.nh),
            salt=_hex(doc, source, "salt", SALT_LEN),
            client_prefixes=prefixes,
            registration_id=reg,
            expires=expires,
        )
    raise ConfigError(source, "type", f"unknown key file type {kind!r}")


def dump_client_key_file(
    suite: Suite,
    *,
    client_addr: str,
    client_secret: bytes,
    server_prefixes: list[str],
    registration_id: str,
    expires: int,
) -> str:
    """The JSON text of a secondary client's key file."""
    return (
        json.dumps(
            {
                "type": CLIENT_KEY_TYPE,
                "version": KEY_FILE_VERSION,
                "suite": suite.as_dict(),
                "client_addr": str(ipaddress.IPv6Address(client_addr)),
                "client_secret": client_secret.hex(),
                "server_prefixes": server_prefixes,
                "registration_id": registration_id,
                "expires": expires,
            },
            indent=2,
        )
        + "\n"
    )


def dump_server_key_file(
    suite: Suite,
    *,
    shared_secret: bytes,
    salt: bytes,
    client_prefixes: list[str],
    registration_id: str,
    expires: int,
) -> str:
    """The JSON text of the secondary servers' key file."""
    return (
        json.dumps(
            {
                "type": SERVER_KEY_TYPE,
                "version": KEY_FILE_VERSION,
                "suite": suite.as_dict(),
                "shared_secret": shared_secret.hex(),
                "salt": salt.hex(),
                "client_prefixes": client_prefixes,
                "registration_id": registration_id,
                "expires": expires,
            },
            indent=2,
        )
        + "\n"
    )


class EitherEndKeyring:
    """For an observer holding keys of either end (offline decoding): tries both orientations."""

    __slots__ = ("ring",)

    def __init__(self, ring: KeyProvider) -> None:
        self.ring = ring

    @property
    def suite(self) -> Suite:
        return self.ring.suite

    def __repr__(self) -> str:
        return f"EitherEndKeyring({self.ring!r})"

    def client_secret_for(self, *, local: bytes, remote: bytes) -> bytes:
        try:
            return self.ring.client_secret_for(local=local, remote=remote)
        except UnknownKeyError:
            return self.ring.client_secret_for(local=remote, remote=local)

    def drop_cache(self) -> None:
        """The wrapped keyring's cache."""
        self.ring.drop_cache()
