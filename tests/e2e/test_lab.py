"""The Mininet lab end to end: enterprise topology, registration, Ansible, agents, observer."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import state as labstate
from pdmv2.capture import decode_capture
from pdmv2.core.keyring import dump_client_key_file, parse_key_file
from pdmv2.regstore import write_secret_file
from tests.e2e import sent_truth
from tests.e2e.labtest import (
    PY,
    capture,
    in_host,
    keys_of,
    lab,
    lab_up,
    skip_unless_a_lab_can_start,
    stats,
)

SC1, SC2, SS1 = "2001:db8:1::11", "2001:db8:1::12", "2001:db8:2::21"


@pytest.fixture(scope="module")
def up() -> Iterator[dict]:
    skip_unless_a_lab_can_start()
    try:
        with lab_up("--topo", "enterprise", "--rotate", "16") as state:
            yield state
    finally:  # lab-down leaves nothing behind
        assert labstate.load() is None and not labstate.LAB_DIR.exists()
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
        assert "pdmlan" not in links and "pdmwan" not in links
        assert (
            "mininet:" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        )


def test_lab_is_ready_ipv6_only_and_root_has_no_lab_address(up: dict) -> None:
    assert up["ready"] and up["up_seconds"] > 0
    status = lab("status").stdout
    assert status.count("keys loaded") == 6
    for host in up["hosts"]:
        assert in_host(host, "ip", "-4", "addr", "show", "scope", "global").stdout.strip() == ""
        assert "default" not in in_host(host, "ip", "-6", "route").stdout
    root = subprocess.run(["ip", "-6", "addr"], capture_output=True, text=True, check=True).stdout
    assert "2001:db8:" not in root


def test_global_pointer_separation(up: dict, tmp_path: Path) -> None:
    ll = (
        in_host("sc2", "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link").stdout.split()[3].split("/")[0]
    )
    pcap = tmp_path / "sc1.pcap"

    def run(*argv: str) -> str:
        return in_host("sc1", *argv).stdout

    sent_truth.install(run)
    before = sent_truth.snapshot(run, lambda: stats("sc1")["global_pointer"])
    cap = capture("sc1", pcap)
    for _ in range(3):
        in_host("sc1", "ping", "-6", "-c", "1", f"{ll}%eth0")
        in_host("sc1", "ping", "-6", "-c", "1", SS1)
    cap.stop(0.3, complete=True)
    sent = sent_truth.check(before, sent_truth.snapshot(run, lambda: stats("sc1")["global_pointer"]))
    assert sent["link_local"] >= 3 and sent["global"] >= 3
    opts = decode_capture(pcap, keys_of("ss1", tmp_path)).options
    mine_ll = [o for o in opts if o.src.startswith("fe80") and o.dst == ll]
    mine_gl = [o for o in opts if o.src == SC1]
    assert [o.format for o in mine_ll] == ["pdmv2-clear"] * 3
    assert [o.format for o in mine_gl] == ["pdmv2-encrypted"] * 3 and all(o.status == "opened" for o in mine_gl)
    ll_gp, gl_gp = [o.global_pointer for o in mine_ll], [o.global_pointer for o in mine_gl]
    assert ll_gp == sorted(ll_gp) and gl_gp == sorted(gl_gp)
    # independent counters: each moved by its own type's packets only (sent_truth.check above)
    assert ll_gp[-1] - ll_gp[0] < sent["link_local"] and gl_gp[-1] - gl_gp[0] < sent["global"]


def test_observer_sees_only_ciphertext_and_sc2_cannot_open_sc1(up: dict, tmp_path: Path) -> None:
    pcap = tmp_path / "wan.pcap"
    cap = capture("obs", pcap)
    assert in_host("sc1", "ping", "-6", "-c", "5", "-i", "0.2", SS1).returncode == 0
    cap.stop(0.3, complete=True)
    blind = [o for o in decode_capture(pcap, None).options if SC1 in (o.src, o.dst)]
    assert len(blind) == 10 and all(o.status == "encrypted" and o.psntp is None for o in blind)
    opened = [o for o in decode_capture(pcap, keys_of("ss1", tmp_path)).options if SC1 in (o.src, o.dst)]
    assert all(o.status == "opened" for o in opened)
    seq = [o.psntp for o in opened if o.src == SC1]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seq))
    # SC2's secret, claiming SC1's address, opens nothing of SC1's.
    sc2 = parse_key_file(in_host("sc2", "cat", "/etc/pdmv2/keys/client.json").stdout)
    fake = tmp_path / "fake"
    fake.mkdir(mode=0o700)
    write_secret_file(
        fake / "client.json",
        dump_client_key_file(
            sc2.suite,
            client_addr=SC1,
            client_secret=sc2.secret,
            server_prefixes=[],  # type: ignore[union-attr]
            registration_id="fake",
            expires=0,
        ),
    )
    forged = [o for o in decode_capture(pcap, fake).options if SC1 in (o.src, o.dst)]
    assert forged and all(o.status == "auth_failed" for o in forged)


def test_forgery_from_observer_is_counted_and_traffic_flows(up: dict) -> None:
    before = stats("ss1")["counters"].get("ingress_auth_failed", 0)
    forge = (
        "from scapy.all import IPv6, UDP, IPv6ExtHdrDestOpt, HBHOptUnknown, send\nimport os\n"
        "for i in range(3):\n"
        "    o = HBHOptUnknown(otype=0x0f, optlen=0x22, optdata=bytes([0x20, 0, 0, 2 + 2 * i]) + os.urandom(30))\n"
        f"    send(IPv6(src='{SC1}', dst='{SS1}')/IPv6ExtHdrDestOpt(options=[o])/UDP(sport=4242, dport=9),"
        " verbose=0)\n"
    )
    assert in_host("obs", PY, "-c", forge).returncode == 0
    time.sleep(0.3)
    assert stats("ss1")["counters"].get("ingress_auth_failed", 0) == before + 3
    assert in_host("sc1", "ping", "-6", "-c", "2", "-i", "0.2", SS1).returncode == 0


def test_rotation_across_f_flips_in_a_long_flow(up: dict) -> None:
    before = stats("ss2")["counters"]
    assert in_host("sc3", "ping", "-6", "-c", "100", "-i", "0.01", "2001:db8:2::22", timeout=120).returncode == 0
    after = stats("ss2")["counters"]
    assert after.get("ingress_read", 0) - before.get("ingress_read", 0) == 100
    assert after.get("ingress_auth_failed", 0) == before.get("ingress_auth_failed", 0)
    time.sleep(1.5)  # records are flushed once a second
    records = in_host("ss2", "cat", "/run/pdmv2/records.jsonl").stdout.splitlines()
    kris = {json.loads(r)["kri"] for r in records if '"direction": "ingress"' in r}
    assert max(k for k in kris if k is not None) >= 5  # rotation every 16 packets: F flipped at least 5 times


def test_secrets_isolation(up: dict) -> None:
    mine = parse_key_file(in_host("sc1", "cat", "/etc/pdmv2/keys/client.json").stdout)
    theirs = parse_key_file(in_host("sc2", "cat", "/etc/pdmv2/keys/client.json").stdout)
    assert mine.client_addr != theirs.client_addr  # type: ignore[union-attr]
    secret = mine.secret.hex()  # type: ignore[union-attr]
    for host in ("sc2", "ss1", "obs", "r1"):
        found = in_host(
            host, "grep", "-rl", secret, "/etc/pdmv2", "/run/pdmv2", "/var/lib/pdmv2", "/root/.ssh", "/root/.ansible"
        )
        assert found.returncode == 1 and found.stdout == "", host
    mode = in_host("sc1", "stat", "-c", "%a", "/etc/pdmv2/keys/client.json").stdout.strip()
    assert mode == "600"
    assert not Path("/etc/pdmv2/keys").exists()  # nothing of the lab's secrets in the root namespace's view


def test_ansible_second_run_reports_no_change(up: dict) -> None:
    # The same playbooks/site.yml with the inventory the lab wrote: keys and agents are in place.
    run = in_host("pc", PY, "-m", "lab.ansible_push", "/var/lib/pdmv2/lab-inventory.json", timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("changed 0, failed 0")
    assert up["push"]["pc"] == {"hosts": 3, "done": 3, "status": "done"}
    assert up["push"]["ps"] == {"hosts": 3, "done": 3, "status": "done"}
    status = lab("status").stdout
    assert "pc: ansible done, agents and keys on 3/3 secondaries" in status, status


def test_lab_cli_messages(up: dict) -> None:
    again = lab("up", "--topo", "enterprise")
    assert again.returncode == 0 and "already up" in again.stdout
    bad = lab("exec", "nohost", "--", "true")
    assert bad.returncode == 2 and "no host" in bad.stderr
    assert lab("exec", "sc1", "--", "true").returncode == 0
