"""Registration over TCP on loopback: success, refusals, hostile clients, concurrency, no secrets in logs."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from pdmv2 import RegistrationError
from pdmv2.core.keyring import ServerKeyring, parse_key_file
from pdmv2.core.keys import AeadId, KdfId, KemId
from pdmv2.core.registration import AllowEntry, AllowList, ClientHandshake, Identity
from pdmv2.core.regmsg import ErrorCode, ErrorMessage, KemRequest, decode_body, decode_header, encode_message
from pdmv2.regnet import PrimaryServer, ServerConfig, read_message, register
from pdmv2.regstore import load_registrations, store_registration

X = KemId.DHKEM_X25519_HKDF_SHA256
PREFIX = (ipaddress.IPv6Network("2001:db8:1::/64"),)


def ident(kem: KemId = X) -> Identity:
    return Identity.generate(kem, ikm=os.urandom(64))


PS, PC = ident(), ident()


def client(pin: str | None = None, pc: Identity = PC, **kw: object) -> ClientHandshake:
    return ClientHandshake(
        identities={pc.kem: pc}, pin=pin or PS.fingerprint, prefixes=PREFIX, random_bytes=os.urandom, **kw
    )  # type: ignore[arg-type]


@asynccontextmanager
async def running(tmp: Path, **kw: object) -> AsyncIterator[tuple[PrimaryServer, int]]:
    allow = AllowList((AllowEntry("pc1", PC.fingerprint, (ipaddress.IPv6Network("2001:db8:1::/48"),)),))
    cfg = ServerConfig({PS.kem: PS}, allow, tmp, **kw)  # type: ignore[arg-type]
    server = PrimaryServer(cfg)
    _, port = await server.start("::1", 0)
    task = asyncio.create_task(server.serve_forever())
    try:
        yield server, port
    finally:
        task.cancel()
        await server.close()


def run(coro_fn: Callable[[], object]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 60))  # type: ignore[arg-type]


def test_registration_both_ends_agree_and_files_are_0600(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (server, port):
            reg = await register("::1", port, client())
            stored = load_registrations(tmp_path / "registrations" / "pc1.json")
            assert stored[0].shared_secret == reg.shared_secret and stored[0].salt == reg.salt
            assert stored[0].registration_id == reg.registration_id and len(reg.shared_secret) == 32
            assert reg.peer == PS.fingerprint and stored[0].peer == PC.fingerprint
            assert server.stats["ok"] == 1
            mode = stat.S_IMODE((tmp_path / "registrations" / "pc1.json").stat().st_mode)
            assert mode == 0o600

    run(main)


@pytest.mark.parametrize(
    ("kdf", "aead", "nh"),
    [(KdfId.HKDF_SHA384, AeadId.CHACHA20_POLY1305, 48), (KdfId.HKDF_SHA512, AeadId.AES_256_GCM, 64)],
)
def test_suite_is_pc_preference_and_secret_is_nh(tmp_path: Path, kdf: KdfId, aead: AeadId, nh: int) -> None:
    async def main() -> None:
        async with running(tmp_path) as (_, port):
            reg = await register("::1", port, client(kdfs=(kdf, KdfId.HKDF_SHA256), aeads=(aead,)))
            assert (reg.suite.kdf, reg.suite.aead, len(reg.shared_secret)) == (kdf, aead, nh)

    run(main)


def test_p256_identities(tmp_path: Path) -> None:
    ps, pc = ident(KemId.DHKEM_P256_HKDF_SHA256), ident(KemId.DHKEM_P256_HKDF_SHA256)

    async def main() -> None:
        cfg = ServerConfig({ps.kem: ps}, AllowList((AllowEntry("p", pc.fingerprint),)), tmp_path)
        server = PrimaryServer(cfg)
        _, port = await server.start("::1", 0)
        task = asyncio.create_task(server.serve_forever())
        try:
            hs = ClientHandshake(
                identities={pc.kem: pc}, pin=ps.fingerprint, prefixes=PREFIX, kems=(pc.kem,), random_bytes=os.urandom
            )
            reg = await register("::1", port, hs)
            assert reg.suite.kem == KemId.DHKEM_P256_HKDF_SHA256
        finally:
            task.cancel()
            await server.close()

    run(main)


def test_pc_refuses_ps_whose_key_does_not_match_pin(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (server, port):
            with pytest.raises(RegistrationError) as exc:
                await register("::1", port, client(pin=ident().fingerprint))
            assert exc.value.code == ErrorCode.PIN_MISMATCH
            await asyncio.sleep(0.05)
            assert server.stats["ok"] == 0 and not (tmp_path / "registrations").exists()

    run(main)


def test_ps_rejects_pc_not_on_allow_list(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (_, port):
            with pytest.raises(RegistrationError) as exc:
                await register("::1", port, client(pc=ident()))
            assert exc.value.code == ErrorCode.UNAUTHORIZED

    run(main)


def test_prefix_outside_allow_list(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (_, port):
            hs = ClientHandshake(
                identities={PC.kem: PC},
                pin=PS.fingerprint,
                prefixes=(ipaddress.IPv6Network("2001:db8:99::/64"),),
                random_bytes=os.urandom,
            )
            with pytest.raises(RegistrationError) as exc:
                await register("::1", port, hs)
            assert exc.value.code == ErrorCode.PREFIX_NOT_ALLOWED

    run(main)


class Tamper(ClientHandshake):
    """A PC whose KEM request is changed in flight (enc or salt)."""

    def __init__(self, what: str) -> None:
        super().__init__(identities={PC.kem: PC}, pin=PS.fingerprint, prefixes=PREFIX, random_bytes=os.urandom)
        self.what = what

    def on_setup_response(self, resp):  # type: ignore[no-untyped-def]
        req = super().on_setup_response(resp)
        if self.what == "enc":
            return KemRequest(bytes([req.enc[0] ^ 1]) + req.enc[1:], req.salt, req.confirm)
        return dataclasses.replace(req, salt=bytes([req.salt[0] ^ 1]) + req.salt[1:])


@pytest.mark.parametrize("what", ["enc", "salt"])
def test_tampered_enc_or_salt_fails_cleanly_on_both_ends(tmp_path: Path, what: str) -> None:
    async def main() -> None:
        async with running(tmp_path) as (server, port):
            with pytest.raises(RegistrationError) as exc:
                await register("::1", port, Tamper(what))
            assert exc.value.code == ErrorCode.AUTH_FAILED
            await asyncio.sleep(0.05)
            assert server.stats == {"ok": 0, "failed": 1, "busy": 0}
            assert not (tmp_path / "registrations").exists()
            await register("::1", port, client())  # and it still serves

    run(main)


async def raw_exchange(port: int, data: bytes, *, close: bool = True, timeout: float = 5) -> bytes:
    reader, writer = await asyncio.open_connection("::1", port)
    writer.write(data)
    await writer.drain()
    if close:
        writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def error_of(frame: bytes) -> ErrorMessage:
    h = decode_header(frame[:6])
    msg = decode_body(h.type, frame[6 : 6 + h.length])
    assert isinstance(msg, ErrorMessage)
    return msg


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ErrorCode.MALFORMED),
        (b"PR\x09\x01\x00\x00", ErrorCode.UNSUPPORTED_VERSION),
        (b"PR\x01\x01\xff\xff" + b"A" * 100, ErrorCode.TOO_LARGE),
        (b"PR\x01\x01\x00\x03abc", ErrorCode.MALFORMED),
        (encode_message(KemRequest(b"e" * 32, b"s" * 32, b"c" * 32)), ErrorCode.UNEXPECTED_MESSAGE),
    ],
    ids=["http", "version", "oversized", "garbage-body", "unexpected"],
)
def test_hostile_clients_get_error_codes_and_server_keeps_serving(tmp_path: Path, data: bytes, code: ErrorCode) -> None:
    async def main() -> None:
        async with running(tmp_path) as (_server, port):
            answer = await raw_exchange(port, data)
            assert error_of(answer).code == code
            assert (await register("::1", port, client())).registration_id

    run(main)


def test_error_from_client_is_not_answered(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (server, port):
            assert await raw_exchange(port, encode_message(ErrorMessage(1, "bye"))) == b""
            assert server.stats["failed"] == 1

    run(main)


def test_truncated_message_and_slowloris(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, timeout=0.5) as (server, port):
            assert await raw_exchange(port, b"PR\x01\x01\x00\x40" + b"x" * 10) == b""  # closed mid-message
            slow_r, slow_w = await asyncio.open_connection("::1", port)
            t0 = time.monotonic()
            for b in b"PR\x01":  # one octet at a time, then silence
                slow_w.write(bytes([b]))
                await slow_w.drain()
                await asyncio.sleep(0.1)
            # meanwhile another PC registers
            assert (await register("::1", port, client())).registration_id
            answer = await asyncio.wait_for(slow_r.read(), 5)
            assert error_of(answer).code == ErrorCode.TIMEOUT and time.monotonic() - t0 < 3
            slow_w.close()
            assert server.stats["ok"] == 1

    run(main)


def test_client_timeout_and_unreachable(tmp_path: Path) -> None:
    async def main() -> None:
        silent = await asyncio.start_server(lambda r, w: None, "::1", 0)
        port = silent.sockets[0].getsockname()[1]
        with pytest.raises(RegistrationError) as exc:
            await register("::1", port, client(), timeout=0.3)
        assert exc.value.code == ErrorCode.TIMEOUT
        silent.close()
        await silent.wait_closed()
        with pytest.raises(RegistrationError) as exc:
            await register("::1", port, client(), timeout=0.3)
        assert exc.value.code == ErrorCode.CONNECTION

    run(main)


def test_50_concurrent_registrations(tmp_path: Path) -> None:
    pcs = [ident() for _ in range(50)]

    async def main() -> None:
        allow = AllowList(tuple(AllowEntry(f"pc{i}", p.fingerprint) for i, p in enumerate(pcs)))
        server = PrimaryServer(ServerConfig({PS.kem: PS}, allow, tmp_path))
        _, port = await server.start("::1", 0)
        task = asyncio.create_task(server.serve_forever())
        try:
            regs = await asyncio.gather(*(register("::1", port, client(pc=p)) for p in pcs))
        finally:
            task.cancel()
            await server.close()
        assert len({r.shared_secret for r in regs}) == 50  # a secret per PC
        for i, r in enumerate(regs):
            assert load_registrations(tmp_path / "registrations" / f"pc{i}.json")[0].shared_secret == r.shared_secret
        assert server.stats["ok"] == 50

    run(main)


def test_reregistration_rotates_with_overlap(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, overlap=30) as (_, port):
            first = await register("::1", port, client())
            second = await register("::1", port, client())
            assert first.registration_id != second.registration_id and first.shared_secret != second.shared_secret
            stored = load_registrations(tmp_path / "registrations" / "pc1.json")
            assert [r.registration_id for r in stored] == [second.registration_id, first.registration_id]
            assert stored[1].expires <= int(time.time()) + 30

    run(main)
    path = tmp_path / "registrations" / "pc1.json"
    newest = load_registrations(path)[0]
    kept = store_registration(
        path, dataclasses.replace(newest, registration_id="ff" * 16), now=int(time.time()) + 31, overlap=30
    )
    assert [r.registration_id for r in kept] == ["ff" * 16, newest.registration_id]  # the first has expired


def test_no_secret_in_logs_exceptions_or_reprs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []

    async def main() -> None:
        async with running(tmp_path) as (_, port):
            reg = await register("::1", port, client(), progress=texts.append)
            texts.append(repr(reg))
            for what in ("enc", "salt"):
                try:
                    await register("::1", port, Tamper(what), progress=texts.append)
                except RegistrationError as exc:
                    texts.append(str(exc) + repr(exc))
            stored = load_registrations(tmp_path / "registrations" / "pc1.json")[0]
            secrets = [reg.shared_secret, reg.salt, stored.shared_secret, PC.private_bytes(), PS.private_bytes()]
            everything = "\n".join(texts) + caplog.text + repr(PS) + repr(PC)
            for s in secrets:
                assert s.hex() not in everything and repr(s) not in everything

    run(main)


def test_server_keyring_from_registration_matches(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (_, port):
            reg = await register("::1", port, client())
            from pdmv2.core.keyring import dump_server_key_file

            ring = parse_key_file(
                dump_server_key_file(
                    reg.suite,
                    shared_secret=reg.shared_secret,
                    salt=reg.salt,
                    client_prefixes=[str(p) for p in reg.prefixes],
                    registration_id=reg.registration_id,
                    expires=reg.expires,
                )
            )
            assert isinstance(ring, ServerKeyring)
            doc = json.loads((tmp_path / "registrations" / "pc1.json").read_text())
            assert doc["registrations"][0]["registration_id"] == reg.registration_id

    run(main)


def test_read_message_reports_closed_connection() -> None:
    async def main() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b"PR\x01")
        reader.feed_eof()
        with pytest.raises(RegistrationError) as exc:
            await read_message(reader, 1)
        assert exc.value.code == ErrorCode.CONNECTION

    run(main)
