"""The registration commands as a user runs them: keygen, primary-server, register, secrets."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pdmv2.core.keyring import ClientKeyring, ServerKeyring, parse_key_file

CMD = [sys.executable, "-m", "pdmv2.cli.main"]


def pdmv2(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([*CMD, *args], capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in run.stderr, run.stderr
    if check:
        assert run.returncode == 0, run.stderr
    return run


@pytest.mark.parametrize(
    "sub",
    [["keygen"], ["primary-server"], ["register"], ["secrets", "client"], ["secrets", "server"], ["option", "decode"]],
)
def test_help(sub: list[str]) -> None:
    assert "usage:" in pdmv2(*sub, "--help").stdout


def test_register_and_secrets_end_to_end(tmp_path: Path) -> None:
    ps_fp = pdmv2("keygen", "--out", str(tmp_path / "ps.key")).stdout.strip()
    pc_fp = pdmv2("keygen", "--out", str(tmp_path / "pc.key")).stdout.strip()
    assert stat.S_IMODE((tmp_path / "ps.key").stat().st_mode) == 0o600
    assert pdmv2("keygen", "--out", str(tmp_path / "ps.key"), check=False).returncode == 2  # no silent overwrite
    (tmp_path / "allow.yaml").write_text(f"clients:\n  - name: pc1\n    fingerprint: {pc_fp}\n")
    ready = tmp_path / "ready"
    server = subprocess.Popen(
        [
            *CMD,
            "primary-server",
            "--listen",
            "::1",
            "--port",
            "0",
            "--key",
            str(tmp_path / "ps.key"),
            "--allow",
            str(tmp_path / "allow.yaml"),
            "--state",
            str(tmp_path / "ps"),
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(200):
            if ready.exists() and ready.read_text().strip():
                break
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            time.sleep(0.05)
        port = ready.read_text().split()[1]
        out = pdmv2(
            "register",
            "--server",
            "::1",
            "--port",
            port,
            "--key",
            str(tmp_path / "pc.key"),
            "--pin",
            ps_fp,
            "--prefix",
            "2001:db8:1::/64",
            "--state",
            str(tmp_path / "pc"),
        )
        assert "registration" in out.stdout and "->" in out.stderr  # progress shown
        bad_pin = pdmv2(
            "register",
            "--server",
            "::1",
            "--port",
            port,
            "--key",
            str(tmp_path / "pc.key"),
            "--pin",
            pc_fp,
            "--prefix",
            "2001:db8:1::/64",
            "--state",
            str(tmp_path / "pc2"),
            check=False,
        )
        assert bad_pin.returncode == 2 and "error 9" in bad_pin.stderr and not (tmp_path / "pc2").exists()
        pdmv2(
            "secrets",
            "client",
            "--registrations",
            str(tmp_path / "pc" / "registrations.json"),
            "--client",
            "2001:db8:1::10",
            "--out",
            str(tmp_path / "sc"),
        )
        pdmv2(
            "secrets",
            "server",
            "--registrations",
            str(tmp_path / "ps" / "registrations" / "pc1.json"),
            "--out",
            str(tmp_path / "ss" / "server.json"),
        )
        outside = pdmv2(
            "secrets",
            "client",
            "--registrations",
            str(tmp_path / "pc" / "registrations.json"),
            "--client",
            "2001:db8:9::1",
            "--out",
            str(tmp_path / "sc"),
            check=False,
        )
        assert outside.returncode == 2 and "outside" in outside.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode == 0
    client_file = tmp_path / "sc" / "2001_db8_1__10.json"
    for f in (client_file, tmp_path / "ss" / "server.json", tmp_path / "pc" / "registrations.json"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    sc = parse_key_file(client_file.read_text())
    ss = parse_key_file((tmp_path / "ss" / "server.json").read_text())
    assert isinstance(sc, ClientKeyring) and isinstance(ss, ServerKeyring)
    assert ss.client_secret_for(local=bytes(16), remote=sc.client_addr) == sc.secret  # same secret on both sides
    pc_doc = json.loads((tmp_path / "pc" / "registrations.json").read_text())
    assert pc_doc["registrations"][0]["shared_secret"] not in server.stdout.read() + server.stderr.read()  # type: ignore[union-attr]


def test_clear_errors_for_missing_and_broken_files(tmp_path: Path) -> None:
    def serve(key: Path, allow: str) -> subprocess.CompletedProcess[str]:
        return pdmv2("primary-server", "--key", str(key), "--allow", allow, "--state", str(tmp_path), check=False)

    missing = serve(tmp_path / "nope.key", "x")
    assert missing.returncode == 2 and "file not found" in missing.stderr
    pdmv2("keygen", "--out", str(tmp_path / "ps.key"))
    (tmp_path / "allow.yaml").write_text("clients: [unclosed\n")
    broken = serve(tmp_path / "ps.key", str(tmp_path / "allow.yaml"))
    assert broken.returncode == 2 and "line" in broken.stderr and "YAML" in broken.stderr
    (tmp_path / "allow.yaml").write_text("clients:\n  - name: a\n    fingerprint: nope\n")
    wrong = serve(tmp_path / "ps.key", str(tmp_path / "allow.yaml"))
    assert wrong.returncode == 2 and "clients[0].fingerprint" in wrong.stderr
    nokey = pdmv2(
        "register",
        "--server",
        "::1",
        "--key",
        str(tmp_path / "ps.key"),
        "--pin",
        "sha256:00",
        "--prefix",
        "2001:db8::/64",
        "--kem",
        "rsa",
        "--state",
        str(tmp_path / "s"),
        check=False,
    )
    assert nokey.returncode == 2 and "--kem" in nokey.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    pdmv2("keygen", "--out", str(tmp_path / "ps.key"))
    (tmp_path / "allow.yaml").write_text("clients: []\n")
    import socket

    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        s.listen()
        port = s.getsockname()[1]
        busy = pdmv2(
            "primary-server",
            "--listen",
            "::1",
            "--port",
            str(port),
            "--key",
            str(tmp_path / "ps.key"),
            "--allow",
            str(tmp_path / "allow.yaml"),
            "--state",
            str(tmp_path),
            check=False,
        )
    assert busy.returncode == 2 and "listen" in busy.stderr
