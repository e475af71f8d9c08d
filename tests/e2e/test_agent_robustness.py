"""The agent when things go wrong around it: a second agent, a full disk, fd exhaustion, bad key files.

Topology and keys as in test_agent.py (a — m — b, see topo.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pdmv2 import DEFAULT_SUITE, client_secret
from pdmv2.agent.daemon import query
from pdmv2.core.errors import ConfigError
from pdmv2.core.keyring import dump_client_key_file
from pdmv2.regstore import write_secret_file
from tests.e2e.topo import PY, SALT, SHARED, A, AgentTopo, B


def client_file(path: Path, expires: int, addr: str = A) -> None:
    cs = client_secret(DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_addr=addr)
    text = dump_client_key_file(
        DEFAULT_SUITE, client_addr=addr, client_secret=cs, server_prefixes=[], registration_id="t", expires=expires
    )
    write_secret_file(path, text)


def pdmv2(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "pdmv2.cli.main", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def our_rules(topo: AgentTopo, name: str) -> str:
    """Every ip6tables line of ours (filter and mangle) in host ``name``."""
    out = []
    for table in ("filter", "mangle"):
        text = topo.host(name).cmd("ip6tables", "-w", "5", "-t", table, "-S").stdout
        out += [f"{table}: {line}" for line in text.splitlines() if "PDMV2" in line]
    return "\n".join(out)


def ping(topo: AgentTopo, count: int = 3, *flags: str) -> None:
    """``count`` echo requests a -> b, 50 ms apart (``-f``: as fast as replies come, bounded by count)."""
    pace = flags if flags else ("-i", "0.05")
    out = topo.a.cmd("ping", "-6", "-c", str(count), *pace, B, check=False, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def measured(topo: AgentTopo, name: str = "a") -> int:
    c = topo.stats(name)["counters"]
    return int(c.get("egress_inserted", 0)) + int(c.get("ingress_read", 0))


def spawn_agent(topo: AgentTopo, name: str, run: Path, *extra: str) -> subprocess.Popen[str]:
    return topo.tb.spawn(
        topo.host(name),
        PY,
        "-m",
        "pdmv2.cli.main",
        "agent",
        "--config",
        str(topo.tmp / name / "config"),
        "--run",
        str(run),
        *extra,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


# -- item 9: one agent per network namespace ------------------------------------------------------


@pytest.mark.parametrize(("same_run_dir", "queue"), [(True, "7"), (False, "7"), (False, "8")])
def test_second_agent_is_refused_and_changes_nothing(topo: AgentTopo, same_run_dir: bool, queue: str) -> None:
    first = topo.start_agent("a")
    topo.start_agent("b")
    rules_before = our_rules(topo, "a")
    assert "NFQUEUE" in rules_before
    ping(topo)
    before = measured(topo)

    run = topo.run_dir("a") if same_run_dir else topo.tmp / "a" / "run2"
    second = spawn_agent(topo, "a", run, "--queue", queue)
    out, _ = second.communicate(timeout=20)
    assert second.returncode == 2, out
    assert our_rules(topo, "a") == rules_before
    assert query(topo.run_dir("a"))["pid"] == first.pid
    assert (topo.run_dir("a") / "agent.pid").read_text().strip() == str(first.pid)
    ping(topo)
    assert measured(topo) > before
    assert first.poll() is None
    assert "another agent" in out and f"pid {first.pid}" in out, out
    assert not (topo.tmp / "a" / "run2").exists()
    # The lock goes with the first agent: a new one starts once it is stopped.
    assert topo.stop_agent("a") == 0
    topo.start_agent("a")
    ping(topo)


def test_lock_is_released_by_kill_9(topo: AgentTopo) -> None:
    first = topo.start_agent("a")
    first.kill()
    first.wait(10)
    topo.agents.pop("a")
    topo.start_agent("a")  # cleans up what the killed one left and takes the lock
    topo.start_agent("b")
    ping(topo)
    assert measured(topo) > 0


# -- item 10: control thread, key files, reload ---------------------------------------------------


def test_control_socket_survives_emfile(topo: AgentTopo) -> None:
    agent = topo.start_agent("a")
    hard = subprocess.run(
        ["prlimit", "--pid", str(agent.pid), "--nofile", "--raw", "--noheadings", "--output", "HARD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run(["prlimit", "--pid", str(agent.pid), f"--nofile=0:{hard}"], check=True)
    try:
        for _ in range(3):  # accept() fails with EMFILE while the limit is 0
            with pytest.raises(ConfigError):
                query(topo.run_dir("a"), timeout=0.5)
    finally:
        subprocess.run(["prlimit", "--pid", str(agent.pid), f"--nofile={hard}:{hard}"], check=True)
    stats = query(topo.run_dir("a"), timeout=5)
    assert stats["pid"] == agent.pid
    assert pdmv2("reload", "--run", str(topo.run_dir("a"))).returncode == 0
    assert stats["control_errors"] >= 1
    assert topo.stop_agent("a") == 0


def test_fifo_key_file_blocks_neither_reload_nor_sigterm(topo: AgentTopo) -> None:
    agent = topo.start_agent("a")
    fifo = topo.tmp / "a" / "config" / "keys" / "x.json"
    os.mkfifo(fifo, 0o600)
    try:
        t0 = time.monotonic()
        out = pdmv2("reload", "--run", str(topo.run_dir("a")))
        assert out.returncode == 2, out.stdout + out.stderr
        assert "x.json" in out.stderr and "FIFO" in out.stderr
        assert time.monotonic() - t0 < 10
        agent.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        assert query(topo.run_dir("a"))["keys"] is not None
        agent.terminate()
        assert agent.wait(10) == 0
        topo.agents.pop("a")
    finally:
        try:  # the old code sat in open() on the FIFO: let it go so the test can clean up
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert "FIFO" in (topo.tmp / "agent-a.log").read_text()


def test_reload_that_would_leave_no_keys_is_refused(topo: AgentTopo) -> None:
    agent = topo.start_agent("a")
    topo.start_agent("b")
    ping(topo, 5)  # the flow is keyed and measured
    before = topo.stats("a")["counters"].get("egress_inserted", 0)
    for key in (topo.tmp / "a" / "config" / "keys").glob("*.json"):
        key.unlink()
    out = pdmv2("reload", "--run", str(topo.run_dir("a")))
    assert out.returncode == 2 and "no usable key file" in out.stderr, out.stdout + out.stderr
    agent.send_signal(signal.SIGHUP)
    time.sleep(1.5)
    ping(topo, 5)
    stats = topo.stats("a")
    assert stats["keys"] is not None
    assert stats["counters"].get("egress_no_key", 0) == 0
    assert stats["counters"].get("egress_inserted", 0) >= before + 4
    assert stats["key_files"] == 1
    assert "reload refused" in (topo.tmp / "agent-a.log").read_text()


def test_key_that_expires_while_running_stops_being_used(topo: AgentTopo) -> None:
    keys = topo.tmp / "a" / "config" / "keys"
    for key in keys.glob("*.json"):
        key.unlink()
    expires = int(time.time()) + 4
    client_file(keys / "a.json", expires, A)
    client_file(keys / "old.json", int(time.time()) - 1, A)  # expired already: ignored at start
    topo.start_agent("a")
    topo.start_agent("b")
    ping(topo, 5)
    stats = topo.stats("a")
    assert stats["counters"].get("egress_inserted", 0) >= 3
    while time.time() < expires + 1.5:  # expiry plus one housekeeping tick
        time.sleep(0.2)
    ping(topo, 3)
    stats = topo.stats("a")
    assert stats["keys"] is None
    assert stats["counters"].get("egress_no_key", 0) >= 3
    assert stats["key_files"] == 0
    log = (topo.tmp / "agent-a.log").read_text()
    assert "old.json expired" in log and "a.json expired" in log


# -- item 7: records bounded, rotated, and a full disk is not fatal -------------------------------


def test_records_are_rotated_within_the_bound(topo: AgentTopo) -> None:
    topo.start_agent("a", "--records-max-mb", "0.0625", "--records-files", "2")
    topo.start_agent("b")
    ping(topo, 1500, "-f", "-q")
    time.sleep(1.5)  # one housekeeping flush
    run = topo.run_dir("a")
    files = sorted(p.name for p in run.iterdir() if p.name.startswith("records"))
    assert files == ["records.jsonl", "records.jsonl.1"], files
    for name in files:
        size = (run / name).stat().st_size
        assert 0 < size <= 65536, (name, size)
    stats = topo.stats("a")["records"]
    assert stats["rotations"] >= 2 and stats["dropped"] == 0 and stats["written"] >= 3000


def test_full_disk_drops_and_counts_records_and_the_agent_keeps_measuring(topo: AgentTopo) -> None:
    """Run directory on a 1 MiB tmpfs in a private mount namespace (gone with the agent)."""
    run = topo.tmp / "a" / "run"
    run.mkdir(parents=True)
    script = (
        'mount -t tmpfs -o size=1m,mode=0700 pdmv2-e2e "$1" && '
        'exec ip netns exec "$2" "$3" -m pdmv2.cli.main agent --config "$4" --run "$1"'
    )
    log = open(topo.tmp / "agent-a.log", "a")
    agent = subprocess.Popen(
        [
            *("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"),
            *(str(run), topo.a.name, PY, str(topo.tmp / "a" / "config")),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        full_disk_run(topo, agent, run)
    finally:
        if agent.poll() is None:
            agent.kill()
        agent.wait(10)
        log.close()


def full_disk_run(topo: AgentTopo, agent: subprocess.Popen[str], run: Path) -> None:
    seen = Path(f"/proc/{agent.pid}/root{run}")  # the run directory as the agent sees it
    deadline = time.monotonic() + 15
    while True:
        try:
            if query(seen, timeout=0.5).get("pid") == agent.pid:
                break
        except ConfigError:
            pass
        assert agent.poll() is None, (topo.tmp / "agent-a.log").read_text()
        assert time.monotonic() < deadline, "agent not ready"
        time.sleep(0.1)
    assert not any(run.iterdir())  # the tmpfs is not visible outside the agent's mount namespace
    topo.start_agent("b")

    ping(topo, 6000, "-f", "-q")  # about 12 000 records, 3 MB: the 1 MiB disk fills
    time.sleep(1.5)
    assert agent.poll() is None, (topo.tmp / "agent-a.log").read_text()
    stats = query(seen)
    assert stats["records"]["dropped"] > 0 and stats["records_dropped"] == stats["records"]["dropped"]
    assert stats["records"]["written"] > 0
    before = stats["counters"]["egress_inserted"]
    ping(topo, 20)
    time.sleep(1.2)
    stats = query(seen)
    assert stats["counters"]["egress_inserted"] >= before + 20
    assert stats["records"]["dropped"] > 0
    assert not stats["internal_errors"], stats["internal_errors"]
    agent.terminate()
    assert agent.wait(15) == 0
    assert "record(s) dropped" in (topo.tmp / "agent-a.log").read_text()
