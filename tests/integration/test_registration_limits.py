"""The Primary Server under slowloris and descriptor exhaustion, on loopback only.

Distinct sources are distinct loopback addresses: the hostile source is 127.0.0.2, the legitimate
PC 127.0.0.1 (both on lo).  Connection counts are bounded; every socket and process is closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest

from pdmv2.core.registration import AllowEntry, AllowList, ClientHandshake, Identity, dump_identity
from pdmv2.core.regmsg import ErrorCode, ErrorMessage, KemResponse, SetupResponse, encode_message
from pdmv2.regnet import PrimaryServer, ServerConfig, read_message, register, source_key
from pdmv2.regstore import write_secret_file

CMD = [sys.executable, "-m", "pdmv2.cli.main"]
PS, PC = (Identity.generate(0x0020, ikm=os.urandom(64)) for _ in range(2))  # type: ignore[arg-type]
PREFIX = "2001:db8:1::/64"
HOSTILE = "127.0.0.2"


def client() -> ClientHandshake:
    return ClientHandshake(
        identities={PC.kem: PC},
        pin=PS.fingerprint,
        prefixes=(ipaddress.IPv6Network(PREFIX),),
        random_bytes=os.urandom,
    )


@contextmanager
def primary_server(tmp: Path, *extra: str, prefix: tuple[str, ...] = ()) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`pdmv2 primary-server` on 127.0.0.1 (``prefix``: a command put in front, e.g. prlimit)."""
    write_secret_file(tmp / "ps.key", dump_identity(PS))
    write_secret_file(tmp / "pc.key", dump_identity(PC))
    (tmp / "allow.yaml").write_text(f"clients:\n  - name: pc1\n    fingerprint: {PC.fingerprint}\n")
    ready = tmp / "ready"
    log = open(tmp / "server.log", "w")
    server = subprocess.Popen(
        [
            *prefix,
            *CMD,
            "primary-server",
            "--listen",
            "127.0.0.1",
            "--port",
            "0",
            "--key",
            str(tmp / "ps.key"),
            "--allow",
            str(tmp / "allow.yaml"),
            "--state",
            str(tmp / "ps"),
            "--ready-file",
            str(ready),
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (ready.exists() and ready.read_text().strip()):
            assert server.poll() is None, (tmp / "server.log").read_text()
            assert time.monotonic() < deadline, "primary-server not ready"
            time.sleep(0.05)
        yield server, int(ready.read_text().split()[1])
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
        log.close()


@contextmanager
def hostile_connections(port: int, count: int, source: str = HOSTILE) -> Iterator[list[socket.socket]]:
    """``count`` connections from ``source`` that send 3 octets of a header and then nothing."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.settimeout(5)
            s.bind((source, 0))
            s.connect(("127.0.0.1", port))
            s.send(b"PR\x01")
        yield socks
    finally:
        for s in socks:
            s.close()


def register_cli(tmp: Path, port: int, state: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [
            *CMD,
            "register",
            "--server",
            "127.0.0.1",
            "--port",
            str(port),
            "--key",
            str(tmp / "pc.key"),
            "--pin",
            PS.fingerprint,
            "--prefix",
            PREFIX,
            "--state",
            str(tmp / state),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return out, time.perf_counter() - t0


def registration_ms(out: subprocess.CompletedProcess[str]) -> float:
    """The time `pdmv2 register` reports for the exchange itself (without interpreter start-up)."""
    return float(out.stdout.rsplit(",", 1)[1].split("ms")[0])


def test_source_key_groups_ipv6_by_prefix_and_ipv4_by_address() -> None:
    assert source_key("2001:db8:1::5") == "2001:db8:1::/64"
    assert source_key("2001:db8:1::5", 48) == "2001:db8:1::/48"
    assert source_key("2001:db8:1::5", 128) == "2001:db8:1::5/128"
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("127.0.0.2") == "127.0.0.2"
    assert source_key("::ffff:127.0.0.2") == "127.0.0.2"
    assert source_key("not an address") == "not an address"


def test_one_source_holding_500_connections_does_not_keep_another_out(tmp_path: Path) -> None:
    # Defaults (128 at once, half of them per source), and a per-message timeout long enough that
    # the hostile connections hold their slots for the whole test.
    with primary_server(tmp_path, "--timeout", "30") as (server, port):
        with hostile_connections(port, 500):
            time.sleep(0.5)  # the server has taken them all in
            times = []
            for i in range(3):
                out, wall = register_cli(tmp_path, port, f"pc{i}")
                assert out.returncode == 0, out.stderr + (tmp_path / "server.log").read_text()[-2000:]
                times.append((wall, registration_ms(out)))
            assert server.poll() is None
        server.send_signal(signal.SIGTERM)
        server.wait(10)
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log
    assert "436 over the per-source limit" in log, log[-1000:]  # 500 - 64 held
    walls = ", ".join(f"{w:.2f} s" for w, _ in times)
    exchanges = ", ".join(f"{ms:.1f} ms" for _, ms in times)
    print(f"\nregister with 500 hostile connections held: wall {walls} (exchange {exchanges})")


def test_register_in_process_timing_under_500_held_connections(tmp_path: Path) -> None:
    """The exchange alone (no interpreter start-up), 20 times, while one source holds 500 connections."""

    async def main() -> list[float]:
        allow = AllowList((AllowEntry("pc1", PC.fingerprint),))
        server = PrimaryServer(ServerConfig({PS.kem: PS}, allow, tmp_path, timeout=30.0))
        _, port = await server.start("127.0.0.1", 0)
        task = asyncio.create_task(server.serve_forever())
        try:
            held = await asyncio.to_thread(_hold, port)
            try:
                await asyncio.sleep(0.5)
                spent = []
                for _ in range(20):
                    t0 = time.perf_counter()
                    assert (await register("127.0.0.1", port, client(), timeout=5.0)).registration_id
                    spent.append(time.perf_counter() - t0)
                assert server.limits["source_limited"] == 436
                return spent
            finally:
                for s in held:
                    s.close()
        finally:
            task.cancel()
            await server.close()

    spent = asyncio.run(asyncio.wait_for(main(), 120))
    print(
        f"\nin-process register, 500 hostile connections held: median {1000 * statistics.median(spent):.1f} ms, "
        f"max {1000 * max(spent):.1f} ms over {len(spent)}"
    )


def test_per_source_limit_answers_busy_at_once_and_others_are_served(tmp_path: Path) -> None:
    async def main() -> None:
        allow = AllowList((AllowEntry("pc1", PC.fingerprint),))
        server = PrimaryServer(ServerConfig({PS.kem: PS}, allow, tmp_path, timeout=30.0, max_per_source=2))
        _, port = await server.start("127.0.0.1", 0)
        task = asyncio.create_task(server.serve_forever())
        held = []
        try:
            for _ in range(2):  # the source's two slots, held
                r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(HOSTILE, 0))
                w.write(b"PR\x01")
                held.append(w)
            await asyncio.sleep(0.2)
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(HOSTILE, 0))
            t0 = time.monotonic()
            answer = await read_message(r, 5)
            assert isinstance(answer, ErrorMessage) and answer.code == ErrorCode.BUSY
            assert time.monotonic() - t0 < 2  # at once, not after the 30 s timeout
            w.close()
            assert server.limits["source_limited"] == 1 and server.stats["busy"] == 0
            # Another loopback address is another source.
            assert (await register("127.0.0.1", port, client())).registration_id
        finally:
            for w in held:
                w.close()
            task.cancel()
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def _hold(port: int) -> list[socket.socket]:
    socks = []
    for _ in range(500):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        socks.append(s)
        s.bind((HOSTILE, 0))
        s.connect(("127.0.0.1", port))
        s.send(b"PR\x01")
    return socks


def test_whole_handshake_deadline(tmp_path: Path) -> None:
    """Each message arrives within the per-message timeout (1.5 s), but the handshake takes longer
    than the deadline (2 s): the server answers TIMEOUT at the deadline."""

    async def trickle(writer: asyncio.StreamWriter, data: bytes, seconds: float, until: object = None) -> None:
        step = seconds / len(data)
        for b in data:
            if isinstance(until, asyncio.Task) and until.done():
                return  # the server has answered: stop sending into a closed connection
            writer.write(bytes([b]))
            await writer.drain()
            await asyncio.sleep(step)

    async def main() -> None:
        allow = AllowList((AllowEntry("pc1", PC.fingerprint),))
        server = PrimaryServer(ServerConfig({PS.kem: PS}, allow, tmp_path, timeout=1.5, deadline=2.0))
        _, port = await server.start("127.0.0.1", 0)
        task = asyncio.create_task(server.serve_forever())
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            hs = client()
            t0 = time.monotonic()
            await trickle(writer, encode_message(hs.start()), 1.1)
            setup = await read_message(reader, 5)
            assert isinstance(setup, SetupResponse)
            kem = encode_message(hs.on_setup_response(setup))
            answer_task = asyncio.create_task(read_message(reader, 5))
            await trickle(writer, kem, 1.1, until=answer_task)
            answer = await answer_task
            elapsed = time.monotonic() - t0
            writer.close()
            assert not isinstance(answer, KemResponse), "the handshake outlived the deadline"
            assert isinstance(answer, ErrorMessage) and answer.code == ErrorCode.TIMEOUT, answer
            assert 1.9 < elapsed < 5.0, elapsed  # cut at the 2 s deadline, not before
            # An ordinary registration is not affected.
            assert (await register("127.0.0.1", port, client())).registration_id
        finally:
            task.cancel()
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_accept_emfile_is_counted_and_logged_quietly(tmp_path: Path) -> None:
    """--max-clients far above a 40-descriptor limit, and a burst of 300 connections."""
    limit = ("prlimit", "--nofile=40:40", "--")
    with primary_server(tmp_path, "--max-clients", "500", "--timeout", "30", prefix=limit) as (server, port):
        with hostile_connections(port, 300):
            time.sleep(3)
            assert server.poll() is None
        time.sleep(1.5)  # the accept retry (1 s) takes in what is left, then the slots free up
        out, _ = register_cli(tmp_path, port, "pc")
        assert out.returncode == 0, out.stderr + (tmp_path / "server.log").read_text()[-2000:]
        server.send_signal(signal.SIGTERM)
        server.wait(10)
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log, log[:3000]
    assert len(log) < 20_000, len(log)
    accept_lines = [line for line in log.splitlines() if "cannot accept a connection" in line]
    assert accept_lines
    stamps = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in accept_lines]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    assert all(g >= 0.99 for g in gaps), gaps  # at most one line a second
    assert "does not fit the file descriptor limit" in log
    assert "at most 8 at once and 4 per source" in log  # the per-source share follows the fitted limit
    stopped = next(line for line in log.splitlines() if "primary-server: stopped" in line)
    errors = int(stopped.split(" accept errors")[0].rsplit(" ", 1)[1])
    assert errors >= 1, stopped
    print(f"\n{stopped}; log {len(log)} octets")


@pytest.mark.parametrize("flag", ["--max-per-source=-1", "--source-prefix=129", "--deadline=0", "--max-clients=0"])
def test_bad_limits_are_refused(tmp_path: Path, flag: str) -> None:
    out = subprocess.run(
        [*CMD, "primary-server", "--key", "k", "--allow", "a", "--state", str(tmp_path), flag],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert flag.split("=")[0] in out.stderr, out.stderr
