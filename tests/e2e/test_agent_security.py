"""Issue 8 on the wire: nonces across agent restarts, receiver resync, replays after a restart, downgrade.

a (SC) — m (router, observer, attacker) — b (SS), agents with 2-second key epochs.  What the
observer captured is opened offline with b's keys; an attacker on m replays and injects packets.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from pdmv2.capture import decode_capture
from pdmv2.core.prseq import PRSEQ_PERIOD
from tests.e2e.topo import PY, A, AgentTopo, B

EPOCH_S = 2
APPS = str(Path(__file__).resolve().parent.parent.parent / "lab" / "servers.py")


def short_epochs(topo: AgentTopo, *names: str) -> None:
    for name in names:
        policy = topo.tmp / name / "config" / "policy.yaml"
        policy.write_text(policy.read_text() + f"key_epoch_s: {EPOCH_S}\n")


def opened_from(topo: AgentTopo, pcap: Path, src: str) -> list:
    opts = decode_capture(pcap, topo.tmp / "b" / "config" / "keys", epoch_ns=EPOCH_S * 10**9).options
    return [o for o in opts if o.src == src and o.format == "pdmv2-encrypted"]


def test_no_nonce_is_reused_across_sigterm_and_kill_9(topo: AgentTopo) -> None:
    short_epochs(topo, "a", "b")
    topo.start_agent("b")
    pcap = topo.tmp / "wan.pcap"
    cap = topo.capture("m", "eth0", pcap)
    for run in range(6):  # every ping between a and b is one 5-tuple (ICMPv6: ports 0)
        agent = topo.start_agent("a")
        topo.a.cmd("ping", "-6", "-c", "30", "-i", "0.01", B, check=False)
        if run % 2:
            agent.send_signal(signal.SIGKILL)
            agent.wait(5)
            topo.agents.pop("a")
        else:
            assert topo.stop_agent("a") == 0
    cap.stop(complete=True)
    mine = opened_from(topo, pcap, A)
    assert len(mine) >= 6 * 25, len(mine)
    # Every option a sent opened (no replay verdict from the offline reader either) ...
    assert Counter(o.status for o in mine) == {"opened": len(mine)}
    # ... and no (Kri, Random Number) pair, that is no (key, nonce) pair, came twice.
    uses = Counter((o.kri, o.random_number) for o in mine)
    assert max(uses.values()) == 1
    assert len({o.kri for o in mine}) >= 6  # each run moved to a key of its own


def test_receiver_restart_finds_the_sender_again(topo: AgentTopo) -> None:
    topo.write_config("a", 3)  # rotate every 3 packets: the sender is far along when b restarts
    topo.write_config("b", 3)
    short_epochs(topo, "a", "b")
    topo.start_agent("a")
    topo.start_agent("b")
    topo.a.cmd("ping", "-6", "-c", "60", "-i", "0.01", B, check=False)
    read_before = topo.stats("b")["counters"]["ingress_read"]
    assert read_before >= 55
    assert topo.stop_agent("b") == 0
    topo.start_agent("b")
    ping = topo.a.cmd("ping", "-6", "-c", "200", "-i", "0.025", B, check=False)  # 5 s, 2.5 epochs
    assert ping.returncode == 0
    c = topo.stats("b")["counters"]
    # Found again at the latest two epochs on (at once when the restart fell on an epoch boundary:
    # the sender's next epoch is above what the last run recorded as received).
    assert c.get("ingress_read", 0) >= 80, c
    failed = sum(c.get(k, 0) for k in ("ingress_auth_failed", "ingress_stale_key"))
    assert c.get("ingress_read", 0) + failed + c.get("ingress_rate_limited", 0) >= 190, c  # the rest: counted


def replay(topo: AgentTopo, pcap: Path, src: str) -> int:
    """Send again, from m towards b, every packet of ``src`` in the capture; returns how many."""
    script = (
        "import sys\n"
        "from scapy.all import rdpcap, IPv6, send\n"
        "pkts = [p[IPv6] for p in rdpcap(sys.argv[1])\n"
        "        if IPv6 in p and p[IPv6].src == sys.argv[2] and p[IPv6].nh == 60]  # the ones with options\n"
        "send(pkts, verbose=0)\n"
        "print(len(pkts))\n"
    )
    out = topo.m.cmd(PY, "-c", script, str(pcap), src)
    return int(out.stdout.strip())


def test_replays_after_a_restart_are_not_read(topo: AgentTopo) -> None:
    short_epochs(topo, "a", "b")
    topo.start_agent("a")
    topo.start_agent("b")
    pcap = topo.tmp / "genuine.pcap"
    cap = topo.capture("m", "eth0", pcap)
    topo.a.cmd("ping", "-6", "-c", "30", "-i", "0.02", B)
    cap.stop(complete=True)
    assert topo.stop_agent("a") == 0  # a is quiet from now on: whatever b reads is a replay
    assert topo.stop_agent("b") == 0
    topo.start_agent("b")
    sent = replay(topo, pcap, A)
    assert sent == 30
    time.sleep(0.3)
    c = topo.stats("b")["counters"]
    assert c.get("ingress_read", 0) == 0, c
    assert c.get("ingress_stale_key", 0) + c.get("ingress_auth_failed", 0) == sent, c
    assert topo.stats("b")["flows"] == []  # no bogus server delay


def test_downgrade_from_the_path_never_reaches_the_stats(topo: AgentTopo) -> None:
    topo.start_agent("a")
    topo.start_agent("b")
    echo = topo.tb.spawn(topo.b, PY, APPS, "udp-echo", "5001", "2", stdout=subprocess.PIPE)
    assert echo.stdout is not None and "ready" in echo.stdout.readline()
    udp = topo.a.cmd(PY, APPS, "udp-client", B, "5001", "20", "30")
    assert udp.stdout.strip() == "replies 20"
    before = topo.stats("b")
    # The attacker on m sends clear PDMv2 and RFC 8250 options in a's name on a's UDP flow, with a
    # 73.8 s DELTATLR and wrong checksums (the application never sees them).
    script = (
        "import sys\n"
        "from scapy.all import IPv6, UDP, IPv6ExtHdrDestOpt, HBHOptUnknown, send, Raw\n"
        "import pdmv2.scapy_ext  # noqa\n"
        "for data in (bytes.fromhex('2000' + '0a00' + '2c2c' + '00000001' + 'ffff' + '0000' + 'ffff' + '0000'),\n"
        "             bytes.fromhex('2c2c' + 'ffff' + '0000' + 'ffff' + '0000')):\n"
        "    o = HBHOptUnknown(otype=0x0f, optlen=len(data), optdata=data)\n"
        "    for _ in range(10):\n"
        f"        send(IPv6(src='{A}', dst='{B}')/IPv6ExtHdrDestOpt(options=[o])/UDP(sport=int(sys.argv[1]),"
        " dport=5001, chksum=0x1234)/Raw(b'x'), verbose=0)\n"
    )
    sport = next(f["sport"] for f in before["flows"] if f.get("proto") == 17) if before["flows"] else 40000
    topo.m.cmd(PY, "-c", script, str(sport))
    time.sleep(0.3)
    after = topo.stats("b")
    c = after["counters"]
    assert c.get("ingress_downgrade", 0) == 20, c
    assert c.get("ingress_read", 0) == before["counters"]["ingress_read"]
    assert after["flows"] == before["flows"]  # no sample changed, no 73.8 s client delay


FLOOD = str(Path(__file__).resolve().parent.parent.parent / "lab" / "flood.py")


def test_a_forged_flood_from_one_prefix_leaves_a_legitimate_flow_measured(topo: AgentTopo) -> None:
    # b holds keys for the whole lab, so every forged option from 2001:db8:66::/64 costs key
    # derivations: the expensive case.
    topo.write_config("b", PRSEQ_PERIOD, client_prefix="2001:db8::/32")
    topo.start_agent("a")
    topo.start_agent("b")
    topo.a.cmd("ping", "-6", "-c", "3", "-i", "0.05", B)  # the flow is established before the flood
    read0 = topo.stats("b")["counters"].get("ingress_read", 0)
    flood = topo.tb.spawn(topo.m, PY, FLOOD, B, "--pps", "20000", "--seconds", "4", stdout=subprocess.PIPE)
    try:
        ping = topo.a.cmd("ping", "-6", "-c", "100", "-i", "0.03", B, check=False)
    finally:
        out, _ = flood.communicate(timeout=30)
    assert ping.returncode == 0
    sent = int(out.split()[1])
    assert sent > 20_000, out
    c = topo.stats("b")["counters"]
    assert c["ingress_guarded"] > sent // 2, c  # most of the flood never reached the queue
    assert c.get("ingress_rate_limited", 0) > 0, c  # what did was mostly turned away before any derivation
    assert c.get("ingress_read", 0) - read0 >= 90, c  # the genuine echo requests were measured
    assert topo.agents["b"].poll() is None


def test_the_agent_runs_on_the_c_allocator_so_a_flood_s_memory_goes_back(topo: AgentTopo) -> None:
    agent = topo.start_agent("b")  # re-executed itself: the same pid answers
    environ = Path(f"/proc/{agent.pid}/environ").read_bytes().split(b"\0")
    assert b"PYTHONMALLOC=malloc" in environ and b"MALLOC_ARENA_MAX=1" in environ
