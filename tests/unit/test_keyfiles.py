"""Key files on disk: expiry, non-regular files, and the agent's reload and expiry rules."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

from pdmv2 import DEFAULT_SUITE, client_secret
from pdmv2.agent.daemon import Agent, AgentPaths
from pdmv2.core.errors import ConfigError
from pdmv2.core.keyring import dump_client_key_file, dump_server_key_file
from pdmv2.keyfiles import load_key_set, load_keys, read_key_file
from pdmv2.regstore import write_secret_file

A = "2001:db8:1::10"
SHARED, SALT = bytes(range(1, 33)), bytes(range(64, 96))
POLICY = "version: 1\ndefault: off\nrules:\n  - prefix: 2001:db8::/32\n    mode: pdmv2-encrypted\n"


def client_file(path: Path, expires: int, addr: str = A) -> Path:
    cs = client_secret(DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_addr=addr)
    text = dump_client_key_file(
        DEFAULT_SUITE, client_addr=addr, client_secret=cs, server_prefixes=[], registration_id="t", expires=expires
    )
    write_secret_file(path, text)
    return path


def server_file(path: Path, expires: int) -> Path:
    text = dump_server_key_file(
        DEFAULT_SUITE,
        shared_secret=SHARED,
        salt=SALT,
        client_prefixes=["2001:db8:1::/64"],
        registration_id="t",
        expires=expires,
    )
    write_secret_file(path, text)
    return path


def read_in_thread(fn: object, timeout: float = 5.0) -> tuple[bool, object]:
    """Run fn in a thread; (finished, result or exception)."""
    box: list[object] = []

    def run() -> None:
        try:
            box.append(fn())  # type: ignore[operator]
        except BaseException as exc:
            box.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return (not t.is_alive(), box[0] if box else None)


def unblock_fifo(path: Path) -> None:
    """If a reader is stuck in open() on the FIFO (the old code), let it go."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


def test_fifo_named_like_a_key_file_is_refused_without_blocking(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    client_file(keys / "a.json", 0)
    os.mkfifo(keys / "x.json", 0o600)
    try:
        finished, result = read_in_thread(lambda: load_keys(keys))
    finally:
        unblock_fifo(keys / "x.json")
    assert finished, "load_keys blocked on a FIFO"
    assert isinstance(result, ConfigError)
    assert "x.json" in str(result) and "FIFO" in str(result)


def test_directory_named_like_a_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d.json").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_key_file(tmp_path / "d.json")


def test_symlink_to_a_regular_key_file_is_read(tmp_path: Path) -> None:
    real = client_file(tmp_path / "real.json", 0)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "a.json").symlink_to(real)
    assert len(load_key_set(keys)) == 1


def test_expired_key_file_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = 1_800_000_000
    client_file(tmp_path / "old.json", now - 1)
    server_file(tmp_path / "new.json", now + 100)
    caplog.set_level(logging.WARNING, "pdmv2.keys")
    ks = load_key_set(tmp_path, now=now)
    assert ks.sources == (str(tmp_path / "new.json"),)
    assert ks.next_expiry == now + 100
    assert "old.json" in caplog.text and "expired" in caplog.text
    # Offline decoding (no clock given) still uses every file.
    assert len(load_key_set(tmp_path)) == 2


def test_expires_zero_never_expires_and_boundary_is_inclusive(tmp_path: Path) -> None:
    client_file(tmp_path / "forever.json", 0)
    server_file(tmp_path / "edge.json", 1000)
    ks = load_key_set(tmp_path)
    assert ks.next_expiry == 1000
    assert len(ks.active(999)) == 2
    assert ks.active(1000).sources == (str(tmp_path / "forever.json"),)
    assert ks.active(1000).next_expiry == 0
    assert load_keys(tmp_path, now=10**12) is not None


def make_agent(tmp_path: Path, expires: int = 0) -> Agent:
    conf = tmp_path / "config"
    (conf / "keys").mkdir(parents=True)
    (conf / "policy.yaml").write_text(POLICY)
    client_file(conf / "keys" / "a.json", expires)
    return Agent(AgentPaths(conf, tmp_path / "run"), install_rules=False)


def test_agent_stops_using_a_key_that_expires_while_running(tmp_path: Path) -> None:
    expires = int(time.time()) + 60
    agent = make_agent(tmp_path, expires)
    assert agent.engine.keys is not None
    agent._expire_keys(expires - 1)
    assert agent.engine.keys is not None
    agent._expire_keys(expires)
    assert agent.engine.keys is None and len(agent.keyset) == 0
    assert agent.stats()["key_files"] == 0


def test_agent_ignores_an_expired_key_file_at_start(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, int(time.time()) - 10)
    assert agent.engine.keys is None


def test_reload_that_would_leave_no_keys_is_refused(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    before = agent.engine.keys
    (tmp_path / "config" / "keys" / "a.json").unlink()
    why = agent.reload()
    assert why is not None and "no usable key file" in why
    assert agent.engine.keys is before and len(agent.keyset) == 1


def test_reload_with_only_expired_key_files_is_refused(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    client_file(tmp_path / "config" / "keys" / "a.json", int(time.time()) - 5)
    assert agent.reload() is not None
    assert agent.engine.keys is not None


def test_reload_refuses_a_fifo_and_keeps_the_keys(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    before = agent.engine.keys
    fifo = tmp_path / "config" / "keys" / "x.json"
    os.mkfifo(fifo, 0o600)
    try:
        finished, result = read_in_thread(agent.reload)
    finally:
        unblock_fifo(fifo)
    assert finished, "reload blocked on a FIFO"
    assert isinstance(result, str) and "FIFO" in result
    assert agent.engine.keys is before


def test_reload_with_a_new_key_file_is_applied(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    server_file(tmp_path / "config" / "keys" / "b.json", 0)
    assert agent.reload() is None
    assert len(agent.keyset) == 2
