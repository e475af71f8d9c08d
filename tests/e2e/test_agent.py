"""The agent on real kernel traffic in namespaces: a (SC) — m (router/observer) — b (SS)."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pdmv2.capture import decode_capture
from tests.e2e import sent_truth
from tests.e2e.topo import PY, A, AgentTopo, B

APPS = str(Path(__file__).resolve().parent.parent.parent / "lab" / "servers.py")
MANGLE = str(Path(__file__).parent / "mangle.py")


@pytest.fixture(autouse=True, params=["python", "native"])
def datapath(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both data paths (the agents inherit PDMV2_DATAPATH)."""
    from pdmv2.native import AVAILABLE, UNAVAILABLE_REASON

    if request.param == "native" and not AVAILABLE:
        pytest.skip(UNAVAILABLE_REASON)
    monkeypatch.setenv("PDMV2_DATAPATH", request.param)
    return str(request.param)


def decode(topo: AgentTopo, pcap: Path, keys_of: str | None = "b") -> list:
    keys = topo.tmp / keys_of / "config" / "keys" if keys_of else None
    return decode_capture(pcap, keys).options


def consecutive(values: list[int]) -> bool:
    return all((y - x) & 0xFFFF == 1 for x, y in itertools.pairwise(values))


def wait_line(proc: subprocess.Popen[str], text: str, timeout: float = 10) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"process exited before printing {text!r}")
    raise AssertionError(f"no {text!r} within {timeout} s")


def test_ping_udp_tcp_carry_the_option_and_decode(topo: AgentTopo, datapath: str) -> None:
    topo.start_agent("a")
    topo.start_agent("b")
    assert topo.stats("a")["datapath"] == topo.stats("b")["datapath"] == datapath
    pcap = topo.tmp / "wan.pcap"
    cap = topo.capture("m", "eth0", pcap)
    ping = topo.a.cmd("ping", "-6", "-c", "5", "-i", "0.2", B, check=False)
    assert ping.returncode == 0, ping.stdout
    echo = topo.tb.spawn(topo.b, PY, APPS, "udp-echo", "5001", "0", stdout=subprocess.PIPE)
    wait_line(echo, "ready")
    udp = topo.a.cmd(PY, APPS, "udp-client", B, "5001", "10", "20")
    assert udp.stdout.strip() == "replies 10"
    sink = topo.tb.spawn(topo.b, PY, APPS, "tcp-sink", "5002", stdout=subprocess.PIPE)
    wait_line(sink, "ready")
    src = topo.a.cmd(PY, APPS, "tcp-source", B, "5002", "2")  # 2 MB: full-size segments need the MSS clamp
    assert sink.stdout is not None
    assert sink.stdout.readline().strip() == src.stdout.strip()
    cap.stop(complete=True)

    opts = decode(topo, pcap)
    assert opts and all(o.format == "pdmv2-encrypted" and o.status == "opened" for o in opts)
    by_proto = {p: [o for o in opts if o.proto == p] for p in (58, 17, 6)}
    assert len(by_proto[58]) == 10 and len(by_proto[17]) == 20 and len(by_proto[6]) > 100
    for proto, items in by_proto.items():
        for src_addr in (A, B):
            seq = [o.psntp for o in items if o.src == src_addr]
            gaps = [(x, y) for x, y in itertools.pairwise(seq) if (y - x) & 0xFFFF != 1]
            assert not gaps, (
                proto,
                src_addr,
                gaps[:5],
                len(seq),
                topo.stats("a")["counters"],
                topo.stats("b")["counters"],
            )
    # PSNLR echoes the peer (ICMPv6 echo: each reply echoes its request).
    icmp = by_proto[58]
    for req, rep in zip(icmp[::2], icmp[1::2], strict=True):
        assert rep.psnlr == req.psntp
    # One Global Pointer per source-address type, shared by all flows of a's global address; it
    # counts every packet a sends (neighbour discovery too), so it rises by at least one per option.
    gps = [o.global_pointer for o in opts if o.src == A]
    assert gps[0] >= 1 and all(y > x for x, y in itertools.pairwise(gps))
    # Every TCP/UDP/ICMPv6 data packet a sent carries it: compare with the agent's counter.
    stats = topo.stats("a")["counters"]
    assert stats["egress_inserted"] == len([o for o in opts if o.src == A])
    assert stats.get("egress_too_big", 0) == 0


def test_link_local_is_clear_and_global_pointers_are_separate(topo: AgentTopo) -> None:
    topo.start_agent("a")
    topo.start_agent("b")
    pcap = topo.tmp / "lan.pcap"
    cap = topo.capture("m", "eth0", pcap)
    ll = topo.m.link_local("eth0")
    for _ in range(3):  # interleave link-local and global traffic
        topo.a.cmd("ping", "-6", "-c", "1", f"{ll}%eth0")
        topo.a.cmd("ping", "-6", "-c", "1", B)
    cap.stop(complete=True)
    opts = [o for o in decode(topo, pcap) if o.src in (A,) or o.src.startswith("fe80")]
    clear = [o for o in opts if o.src.startswith("fe80")]
    enc = [o for o in opts if o.src == A]
    assert [o.format for o in clear] == ["pdmv2-clear"] * 3
    assert all(o.format == "pdmv2-encrypted" for o in enc) and len(enc) == 3
    # Two counters: each rises by the packets of its own source type only.  Between two of a's
    # global echo requests a sent a link-local one (and perhaps neighbour discovery): a single
    # counter would have moved by at least 2, these move by 1 unless a sent more from that type.
    sent = gp_by_type(topo, "a")
    ll_gp, gl_gp = [o.global_pointer for o in clear], [o.global_pointer for o in enc]  # clear: readable without keys
    assert all(y > x for x, y in itertools.pairwise(ll_gp)) and all(y > x for x, y in itertools.pairwise(gl_gp))
    assert ll_gp[-1] <= sent["link_local"] and gl_gp[-1] <= sent["global"]
    assert (
        min(y - x for x, y in itertools.pairwise(gl_gp)) == 1 or min(y - x for x, y in itertools.pairwise(ll_gp)) == 1
    )
    nokeys = decode(topo, pcap, keys_of=None)
    assert all(o.status == "encrypted" and o.psntp is None for o in nokeys if o.src in (A, B))


def gp_by_type(topo: AgentTopo, name: str) -> dict[str, int]:
    return topo.stats(name)["global_pointer"]


def test_global_pointer_counts_every_packet_the_kernel_sends(topo: AgentTopo) -> None:
    """Draft §6.2: GP "increments for every packet sent" from its source-address type.

    The truth is the kernel's own count of IPv6 packets sent (Ip6OutRequests in the namespace),
    split by source type with counting rules in the raw table (which runs before the agent's).
    """

    def run(*argv: str) -> str:
        return topo.a.cmd(*argv).stdout

    sent_truth.install(run)
    topo.start_agent("a")
    topo.start_agent("b")
    echo = topo.tb.spawn(topo.b, PY, APPS, "udp-echo", "5001", "0", stdout=subprocess.PIPE)
    wait_line(echo, "ready")
    ll = topo.m.link_local("eth0")
    before = sent_truth.snapshot(run, lambda: gp_by_type(topo, "a"))
    for _ in range(3):
        assert topo.a.cmd("ping", "-6", "-c", "2", "-i", "0.2", B, check=False).returncode == 0
        assert topo.a.cmd("ping", "-6", "-c", "2", "-i", "0.2", f"{ll}%eth0", check=False).returncode == 0
    assert topo.a.cmd(PY, APPS, "udp-client", B, "5001", "20", "20").stdout.strip() == "replies 20"
    sent = sent_truth.check(before, sent_truth.snapshot(run, lambda: gp_by_type(topo, "a")))
    assert sent["global"] >= 26 and sent["link_local"] >= 6, sent  # 6 + 20 requests, 6 link-local ones


def test_ready_file_says_the_agent_serves_and_how_many_key_files_it_has(topo: AgentTopo) -> None:
    """What the role's supervisor waits for, without starting a Python process to ask."""
    ready = topo.run_dir("a") / "ready"
    ready.parent.mkdir(parents=True, exist_ok=True)
    ready.write_text("keys 7\n")  # an earlier run's, left by a crash: gone before the agent serves
    topo.start_agent("a")
    assert ready.read_text() == "keys 1\n"
    assert topo.stop_agent("a") == 0
    assert not ready.exists()


def test_server_delay_of_5ms_shows_in_stats(topo: AgentTopo) -> None:
    topo.start_agent("a")
    topo.start_agent("b")
    echo = topo.tb.spawn(topo.b, PY, APPS, "udp-echo", "5001", "5", stdout=subprocess.PIPE)
    wait_line(echo, "ready")
    topo.a.cmd(PY, APPS, "udp-client", B, "5001", "40", "10")
    out = subprocess.run(
        [PY, "-m", "pdmv2.cli.main", "stats", "--run", str(topo.run_dir("a"))],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    assert "server_delay" in out
    flows = topo.stats("a")["flows"]
    udp = next(f for f in flows if f["proto"] == 17)
    sd = udp["server_delay"]
    assert sd["count"] >= 35
    assert abs(sd["p50_ns"] / 1e6 - 5.0) <= 0.5, sd
    assert udp["rtt"]["count"] >= 30 and 0 < udp["rtt"]["p50_ns"] < 5e6


def start_mangle(topo: AgentTopo, mode: str) -> subprocess.Popen[str]:
    topo.m.cmd(
        "ip6tables",
        "-A",
        "FORWARD",
        "-m",
        "ipv6header",
        "--header",
        "ipv6-opts",
        "--soft",
        "-j",
        "NFQUEUE",
        "--queue-num",
        "9",
    )
    proc = topo.tb.spawn(topo.m, PY, MANGLE, "9", mode, stdout=subprocess.PIPE)
    wait_line(proc, "ready")
    return proc


def test_tampered_option_is_counted_and_packet_delivered(topo: AgentTopo) -> None:
    topo.start_agent("a")
    topo.start_agent("b")
    start_mangle(topo, "flip")
    ping = topo.a.cmd("ping", "-6", "-c", "5", "-i", "0.2", B, check=False)
    assert "5 received" in ping.stdout  # delivered despite the forged option
    stats = topo.stats("b")
    assert stats["counters"]["ingress_auth_failed"] == 5
    assert "ingress_read" not in stats["counters"]
    assert topo.agents["b"].poll() is None  # still running
    assert "ingress_auth_failed" in (topo.tmp / "agent-b.log").read_text()


@pytest.mark.parametrize("topo", [3], indirect=True)
def test_rotation_every_3_packets_with_the_flip_packet_dropped(topo: AgentTopo) -> None:
    topo.start_agent("a")
    topo.start_agent("b")
    mangle = start_mangle(topo, "drop-flip")
    echo = topo.tb.spawn(topo.b, PY, APPS, "udp-echo", "5001", "0", stdout=subprocess.PIPE)
    wait_line(echo, "ready")
    out = topo.a.cmd(PY, APPS, "udp-client", B, "5001", "30", "5").stdout
    replies = int(out.split()[1])
    assert replies >= 10  # flip packets are dropped both ways (about 1 in 3 each way); the rest go through
    mangle.terminate()
    mangle.wait(10)
    dropped = (mangle.stdout.read() if mangle.stdout else "").count("dropped")
    assert dropped >= 5  # a flip every 3 packets
    cb, ca = topo.stats("b")["counters"], topo.stats("a")["counters"]
    for c in (ca, cb):
        assert c.get("ingress_auth_failed", 0) == 0 and c.get("ingress_stale_key", 0) == 0
    assert cb["ingress_read"] >= 15 and ca["ingress_read"] == replies
    records = [json.loads(x) for x in (topo.run_dir("b") / "records.jsonl").read_text().splitlines()]
    kris = {r["kri"] for r in records if r["direction"] == "ingress" and r.get("proto") == 17}
    assert max(kris) >= 5


def test_kill_9_during_tcp_transfer_loses_nothing(topo: AgentTopo) -> None:
    agent_a = topo.start_agent("a")
    topo.start_agent("b")
    sink = topo.tb.spawn(topo.b, PY, APPS, "tcp-sink", "5002", stdout=subprocess.PIPE)
    wait_line(sink, "ready")
    source = topo.tb.spawn(topo.a, PY, APPS, "tcp-source", B, "5002", "30", stdout=subprocess.PIPE)
    time.sleep(0.5)
    agent_a.send_signal(signal.SIGKILL)  # leaves its chains behind: --queue-bypass must carry on
    agent_a.wait(5)
    topo.agents.pop("a")
    assert source.stdout is not None and sink.stdout is not None
    sent = source.stdout.readline().strip()
    got = sink.stdout.readline().strip()
    assert sent.startswith("bytes 30000000 ") and got == sent
    assert "PDMV2_OUT" in topo.a.cmd("ip6tables", "-S").stdout  # the crash left them
    topo.start_agent("a")  # the next start cleans up and reinstalls
    assert topo.a.cmd("ip6tables", "-S", "OUTPUT").stdout.count("PDMV2_OUT") == 1
    assert topo.stop_agent("a") == 0
    assert "PDMV2" not in topo.a.cmd("ip6tables", "-S").stdout + topo.a.cmd("ip6tables", "-t", "mangle", "-S").stdout


def test_malformed_options_never_hurt(topo: AgentTopo) -> None:
    topo.start_agent("b")
    script = (
        "from scapy.all import IPv6, UDP, IPv6ExtHdrDestOpt, HBHOptUnknown, send\n"
        f"for ln in (0, 5, 10, 0x12, 0x22, 0x30):\n"
        f"    o = HBHOptUnknown(otype=0x0f, optlen=ln, optdata=bytes([0x20, 0]) + bytes(max(0, ln - 2)))\n"
        f"    send(IPv6(src='{A}', dst='{B}')/IPv6ExtHdrDestOpt(options=[o])/UDP(sport=1, dport=9), verbose=0)\n"
    )
    topo.a.cmd(PY, "-c", script)
    time.sleep(0.3)
    stats = topo.stats("b")
    c = stats["counters"]
    # Lengths 10 and 0x12 are RFC 8250 and clear PDMv2 where policy expects encryption: downgrades.
    assert c.get("ingress_downgrade", 0) == 2
    handled = ("ingress_bad_option", "ingress_auth_failed", "ingress_read", "ingress_downgrade")
    assert sum(c.get(k, 0) for k in handled) >= 5
    assert c.get("ingress_bad_option", 0) >= 3
    assert stats["internal_errors"] == {}
    assert topo.agents["b"].poll() is None
    assert topo.a.cmd("ping", "-6", "-c", "1", B).returncode == 0


def test_sighup_reloads_without_losing_flow_state(topo: AgentTopo) -> None:
    agent_a = topo.start_agent("a")
    topo.start_agent("b")
    pcap = topo.tmp / "hup.pcap"
    cap = topo.capture("m", "eth0", pcap)
    topo.a.cmd("ping", "-6", "-c", "2", "-i", "0.2", "-p", "01", B)
    agent_a.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    topo.a.cmd("ping", "-6", "-c", "2", "-i", "0.2", "-p", "01", B)
    cap.stop(complete=True)
    seq = [o.psntp for o in decode(topo, pcap) if o.src == A and o.proto == 58]
    assert len(seq) == 4 and consecutive(seq)
    assert "reloaded" in (topo.tmp / "agent-a.log").read_text()


def test_stats_without_agent_is_a_clear_error(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pdmv2.cli.main", "stats", "--run", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2 and "is the agent running" in run.stderr and "Traceback" not in run.stderr
