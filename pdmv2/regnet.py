"""Registration over TCP (an edge): the Primary Server daemon and the Primary Client call.

Sockets, timeouts and files live here; every protocol decision is in registration.py.
Each message must arrive whole within ``timeout`` seconds (slow clients are cut off, and the
server keeps serving others); a frame longer than MAX_BODY is refused from its header.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .core.errors import DecodeError, EncodeError, PdmError, RegistrationError
from .core.keys import KemId
from .core.registration import AllowList, ClientHandshake, Identity, Registration, ServerHandshake
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

__all__ = ["PrimaryServer", "ServerConfig", "register", "read_message", "DEFAULT_PORT"]

DEFAULT_PORT = 4333
M = TypeVar("M", SetupRequest, SetupResponse, KemRequest, KemResponse)
log = logging.getLogger("pdmv2.registration")


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
    lifetime: int = 86400
    """Seconds a SharedSecret is valid."""
    overlap: int = 300
    """Seconds an older registration stays valid after a new one."""
    timeout: float = 5.0
    """Seconds for each message to arrive whole."""
    max_clients: int = 128
    """Connections served at once; more are answered BUSY."""


class PrimaryServer:
    """The PS daemon: one ServerHandshake per connection."""

    def __init__(self, config: ServerConfig, *, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.config = config
        self._rand = random_bytes
        self._active = 0
        self._lock = asyncio.Lock()
        self.stats = {"ok": 0, "failed": 0, "busy": 0}
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the address and port actually bound (port 0 picks one)."""
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
        if self._active >= cfg.max_clients:
            self.stats["busy"] += 1
            try:
                await _send(writer, ErrorMessage(ErrorCode.BUSY, "too many registrations at once"), 1.0)
            except RegistrationError:
                pass
            writer.close()
            return
        self._active += 1
        hs = ServerHandshake(identities=cfg.identities, allow=cfg.allow, lifetime=cfg.lifetime, random_bytes=self._rand)
        try:
            setup = await _receive(reader, SetupRequest, cfg.timeout)
            await _send(writer, hs.on_setup_request(setup), cfg.timeout)
            kem = await _receive(reader, KemRequest, cfg.timeout)
            now = int(time.time())
            response, reg = hs.on_kem_request(kem, now=now)
            assert hs.client is not None
            path = cfg.state_dir / "registrations" / f"{_safe_name(hs.client.name)}.json"
            async with self._lock:  # one writer per file at a time
                await asyncio.to_thread(store_registration, path, reg, now=now, overlap=cfg.overlap)
            await _send(writer, response, cfg.timeout)
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
            log.warning("registration from %s failed: %s", where, exc)
            if exc.code != ErrorCode.CONNECTION and not isinstance(exc, PeerRefused):
                try:
                    await _send(writer, ErrorMessage(exc.code, exc.reason), 1.0)
                except RegistrationError:
                    pass
        except (PdmError, EncodeError) as exc:
            self.stats["failed"] += 1
            log.error("registration from %s failed: %s", where, exc)
        finally:
            self._active -= 1
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (TimeoutError, ConnectionError, OSError):
                pass


async def register(
    host: str,
    port: int,
    handshake: ClientHandshake,
    *,
    timeout: float = 5.0,
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
