"""Registration over TCP (an edge): the Primary Server daemon and the Primary Client call.

Sockets, timeouts and files live here; every protocol decision is in registration.py.
Each message must arrive whole within ``timeout`` seconds and the whole handshake must end within
``deadline`` seconds (slow clients are cut off, and the server keeps serving others); a frame
longer than MAX_BODY is refused from its header.  One source (an IPv6 /64 by default, an IPv4
address) holds at most ``max_per_source`` connections; more are answered BUSY at once, so one
source cannot take every slot.  Running out of file descriptors on accept() is counted and logged
at most once a second, without a traceback; asyncio retries the accept a second later.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import re
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .core.errors import DecodeError, EncodeError, PdmError, RegistrationError
from .core.keys import KemId
from .core.registration import (
    DEFAULT_LIFETIME_S,
    DEFAULT_OVERLAP_S,
    AllowList,
    ClientHandshake,
    Identity,
    Registration,
    ServerHandshake,
)
from .core.regmsg import (
    HEADER_LEN,
    ErrorCode,
    ErrorMessage,
    KemRequest,
    KemResponse,
    Message,
    SetupRequest,
    SetupResponse,
    decode_body,
    decode_header,
    encode_message,
)
from .regstore import store_registration

__all__ = [
    "PrimaryServer",
    "ServerConfig",
    "register",
    "read_message",
    "source_key",
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_SOURCE_PREFIX",
    "DEFAULT_DEADLINE_S",
]

DEFAULT_PORT = 4333
DEFAULT_TIMEOUT_S = 5.0  # seconds for each message to arrive whole
DEFAULT_MAX_CLIENTS = 128  # connections a PS serves at once
DEFAULT_SOURCE_PREFIX = 64  # IPv6 prefix length that makes one source
DEFAULT_DEADLINE_S = 10.0  # seconds for a whole handshake
M = TypeVar("M", SetupRequest, SetupResponse, KemRequest, KemResponse)
log = logging.getLogger("pdmv2.registration")
_FD_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_FD_RESERVE = 32  # descriptors kept for the listener, registration files, threads and logs


async def read_message(reader: asyncio.StreamReader, timeout: float) -> Message:
    """One whole message, or RegistrationError (TIMEOUT, TOO_LARGE, MALFORMED, CONNECTION)."""

    async def whole() -> Message:
        header = decode_header(await reader.readexactly(HEADER_LEN))
        return decode_body(header.type, await reader.readexactly(header.length))

    try:
        return await asyncio.wait_for(whole(), timeout)
    except TimeoutError:
        raise RegistrationError(ErrorCode.TIMEOUT, f"no complete message within {timeout:g} s") from None
    except asyncio.IncompleteReadError:
        raise RegistrationError(ErrorCode.CONNECTION, "connection closed in the middle of a message") from None
    except DecodeError as exc:
        code = ErrorCode.TOO_LARGE if exc.field == "length" else ErrorCode.MALFORMED
        if exc.field == "version":
            code = ErrorCode.UNSUPPORTED_VERSION
        raise RegistrationError(code, str(exc)) from None
    except (ConnectionError, OSError) as exc:
        raise RegistrationError(ErrorCode.CONNECTION, f"connection failed ({type(exc).__name__})") from None


async def _send(writer: asyncio.StreamWriter, msg: Message, timeout: float) -> None:
    try:
        writer.write(encode_message(msg))
        await asyncio.wait_for(writer.drain(), timeout)
    except TimeoutError:
        raise RegistrationError(ErrorCode.TIMEOUT, "peer does not read") from None
    except (ConnectionError, OSError) as exc:
        raise RegistrationError(ErrorCode.CONNECTION, f"connection failed ({type(exc).__name__})") from None


class PeerRefused(RegistrationError):
    """The peer sent an ERROR message: not answered with another one."""


async def _receive(reader: asyncio.StreamReader, kind: type[M], timeout: float) -> M:
    """The next message, which must be a ``kind``; an ERROR from the peer raises PeerRefused."""
    msg = await read_message(reader, timeout)
    if isinstance(msg, ErrorMessage):
        raise PeerRefused(msg.code, f"peer refused: {msg.reason}")
    if not isinstance(msg, kind):
        raise RegistrationError(ErrorCode.UNEXPECTED_MESSAGE, f"expected {kind.__name__}, got {type(msg).__name__}")
    return msg


def source_key(host: str, v6_prefix: int = DEFAULT_SOURCE_PREFIX) -> str:
    """The group a peer address counts in: its IPv6 /``v6_prefix``, or the IPv4 address itself."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if isinstance(addr, ipaddress.IPv4Address):
        return str(addr)
    return str(ipaddress.IPv6Network((addr, v6_prefix), strict=False))


class _EverySecond:
    """Log a kind of event at most once a second, saying how many were not logged."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._quiet: Counter[str] = Counter()

    def __call__(self, level: int, kind: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -2.0) >= 1.0:
            more = f" ({self._quiet[kind]} more since the last report)" if self._quiet[kind] else ""
            log.log(level, "%s%s", text, more)
            self._last[kind] = now
            self._quiet[kind] = 0
        else:
            self._quiet[kind] += 1


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64] or "pc"


@dataclass
class ServerConfig:
    """What the Primary Server runs with."""

    identities: dict[KemId, Identity] = field(repr=False)
    """Static key pairs, one per KEM."""
    allow: AllowList
    """PC public keys accepted."""
    state_dir: Path
    """Where registrations/<pc>.json are written (0600)."""
    _: KW_ONLY  # the limits below are adjacent numbers, easy to swap: by name only
    lifetime: int = DEFAULT_LIFETIME_S
    """Seconds a SharedSecret is valid."""
    overlap: int = DEFAULT_OVERLAP_S
    """Seconds an older registration stays valid after a new one."""
    timeout: float = DEFAULT_TIMEOUT_S
    """Seconds for each message to arrive whole."""
    max_clients: int = DEFAULT_MAX_CLIENTS
    """Connections served at once; more are answered BUSY."""
    max_per_source: int = 0
    """Connections one source may hold at once; more are answered BUSY (0: half of max_clients)."""
    source_prefix: int = DEFAULT_SOURCE_PREFIX
    """IPv6 prefix length that makes one source (IPv4: always the address)."""
    deadline: float = DEFAULT_DEADLINE_S
    """Seconds for the whole handshake, from accept to the last message."""

    def per_source(self, max_clients: int) -> int:
        """The per-source limit when ``max_clients`` are served at once."""
        return self.max_per_source or max(1, max_clients // 2)


class PrimaryServer:
    """The PS daemon: one ServerHandshake per connection."""

    def __init__(self, config: ServerConfig, *, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.config = config
        self._rand = random_bytes
        self._active = 0
        self._per_source: Counter[str] = Counter()
        self._lock = asyncio.Lock()
        self.stats = {"ok": 0, "failed": 0, "busy": 0}
        self.limits = {"source_limited": 0, "accept_errors": 0}
        """Connections answered BUSY because their source was at its limit; accept() failures."""
        self._server: asyncio.Server | None = None
        self._say = _EverySecond()
        self.max_clients = config.max_clients
        """Served at once: --max-clients, or fewer when the descriptor limit does not fit it."""
        self.per_source = config.per_source(config.max_clients)
        """Connections one source may hold at once."""

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the address and port actually bound (port 0 picks one)."""
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()

        def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            if isinstance(exc, OSError) and exc.errno in _FD_ERRORS:
                self.limits["accept_errors"] += 1
                self._say(
                    logging.WARNING,
                    "accept",
                    f"cannot accept a connection ({errno.errorcode.get(exc.errno or 0, '?')}: {exc.strerror}); "
                    f"{self.limits['accept_errors']} in all, retrying in 1 s",
                )
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(on_loop_error)
        self.max_clients = _fit_fd_limit(self.config.max_clients)
        self.per_source = self.config.per_source(self.max_clients)
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening and wait for the listener to close."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        where = f"[{peer[0]}]:{peer[1]}" if peer else "?"
        cfg = self.config
        source = source_key(str(peer[0]), cfg.source_prefix) if peer else "?"
        if self._per_source[source] >= self.per_source:
            self.limits["source_limited"] += 1
            self._say(
                logging.WARNING,
                "limit",
                f"{source} holds {self._per_source[source]} connections (limit {self.per_source}); more answered BUSY",
            )
            await self._refuse(writer, "too many connections from this source")
            return
        if self._active >= self.max_clients:
            self.stats["busy"] += 1
            self._say(logging.WARNING, "busy", f"{self._active} registrations in progress; more answered BUSY")
            await self._refuse(writer, "too many registrations at once")
            return
        self._active += 1
        self._per_source[source] += 1
        hs = ServerHandshake(identities=cfg.identities, allow=cfg.allow, lifetime=cfg.lifetime, random_bytes=self._rand)
        end = time.monotonic() + cfg.deadline

        def budget() -> float:
            """Seconds the next message may take: the per-message timeout, cut to the deadline."""
            left = end - time.monotonic()
            if left <= 0:
                raise RegistrationError(ErrorCode.TIMEOUT, f"handshake not finished within {cfg.deadline:g} s")
            return min(cfg.timeout, left)

        try:
            setup = await _receive(reader, SetupRequest, budget())
            await _send(writer, hs.on_setup_request(setup), budget())
            kem = await _receive(reader, KemRequest, budget())
            now = int(time.time())
            response, reg = hs.on_kem_request(kem, now=now)
            assert hs.client is not None
            path = cfg.state_dir / "registrations" / f"{_safe_name(hs.client.name)}.json"
            async with self._lock:  # one writer per file at a time
                await asyncio.to_thread(store_registration, path, reg, now=now, overlap=cfg.overlap)
            await _send(writer, response, cfg.timeout)  # stored: the answer gets its full time
            self.stats["ok"] += 1
            log.info(
                "registered %s from %s: id %s, %s, expires %d",
                hs.client.name,
                where,
                reg.registration_id,
                reg.suite,
                reg.expires,
            )
        except RegistrationError as exc:
            self.stats["failed"] += 1
            self._say(logging.WARNING, "failed", f"registration from {where} failed: {exc}")
            if exc.code != ErrorCode.CONNECTION and not isinstance(exc, PeerRefused):
                try:
                    await _send(writer, ErrorMessage(exc.code, exc.reason), 1.0)
                except RegistrationError:
                    pass
        except (PdmError, EncodeError) as exc:
            self.stats["failed"] += 1
            log.error("registration from %s failed: %s", where, exc)
        except OSError as exc:  # e.g. EMFILE while storing: answered INTERNAL, logged without a traceback
            self.stats["failed"] += 1
            self._say(
                logging.ERROR, "oserror", f"registration from {where} failed: {type(exc).__name__}: {exc.strerror}"
            )
            try:
                await _send(writer, ErrorMessage(ErrorCode.INTERNAL, "server could not complete the registration"), 1.0)
            except RegistrationError:
                pass
        finally:
            self._active -= 1
            self._per_source[source] -= 1
            if self._per_source[source] <= 0:
                del self._per_source[source]
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (TimeoutError, ConnectionError, OSError):
                pass

    @staticmethod
    async def _refuse(writer: asyncio.StreamWriter, reason: str) -> None:
        """Answer BUSY and close, spending at most half a second on a peer that does not read."""
        try:
            await _send(writer, ErrorMessage(ErrorCode.BUSY, reason), 0.5)
        except RegistrationError:
            pass
        writer.close()


def _fit_fd_limit(max_clients: int) -> int:
    """Raise the soft descriptor limit to fit ``max_clients``; else serve fewer at once (warned)."""
    need = max_clients + _FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or need <= soft:
        return max_clients
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    except (ValueError, OSError):
        pass
    if need <= soft:
        return max_clients
    fitted = max(1, soft - _FD_RESERVE)
    log.warning(
        "--max-clients %d does not fit the file descriptor limit %d: serving at most %d at once",
        max_clients,
        soft,
        fitted,
    )
    return fitted


async def register(
    host: str,
    port: int,
    handshake: ClientHandshake,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: Callable[[str], None] | None = None,
) -> Registration:
    """Run one registration against a PS; RegistrationError on any failure (nothing written)."""
    say = progress or (lambda _msg: None)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        raise RegistrationError(ErrorCode.TIMEOUT, f"no answer from [{host}]:{port}") from None
    except OSError as exc:
        raise RegistrationError(ErrorCode.CONNECTION, f"cannot reach [{host}]:{port} ({exc.strerror or exc})") from None
    try:
        say("-> SETUP request (suites offered, client prefixes, PC key)")
        await _send(writer, handshake.start(), timeout)
        setup = await _receive(reader, SetupResponse, timeout)
        try:
            kem_request = handshake.on_setup_response(setup)
        except RegistrationError as exc:
            try:
                await _send(writer, ErrorMessage(exc.code, exc.reason), 1.0)
            except RegistrationError:
                pass  # the refusal stands even if the PS is gone
            raise
        suite = f"kem=0x{setup.kem:04x} kdf=0x{setup.kdf:04x} aead=0x{setup.aead:04x}"
        say(f"<- SETUP response: suite {suite}, PS key pinned OK")
        say("-> KEM request (HPKE Auth enc, salt, PC confirmation)")
        await _send(writer, kem_request, timeout)
        answer = await _receive(reader, KemResponse, timeout)
        reg = handshake.on_kem_response(answer, now=int(time.time()))
        say(f"<- KEM response: registration {reg.registration_id}, lifetime {answer.lifetime} s, PS confirmation OK")
        return reg
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (TimeoutError, ConnectionError, OSError):
            pass
