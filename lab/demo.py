"""``make demo``: the walkthrough a teacher shows on the default topology, step by step.

Up; registration; key push; SC->SS traffic (ping6, and curl to an HTTP server on an SS that waits
5 ms); the observer's capture showing only ciphertext; the decrypted metrics with server delay
(~5 ms) and round-trip delay; a packet forged by the observer and refused by the SS's agent; a
plot of the delays; down.  Each step says what it shows and why.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab import control, tcpdump
from pdmv2.capture import write_decrypted

PDMV2 = control.PDMV2
PY = sys.executable
OUT = Path.cwd() / "demo-output"


def say(n: int, title: str, why: str) -> None:
    print(f"\n=== {n}. {title}\n    {why}", flush=True)


def host_run(host: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return control.host(host).run(*argv)


def spawn(host: str, *argv: str) -> subprocess.Popen[bytes]:
    return control.host(host).popen(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_observer_capture(pcap: Path) -> tcpdump.Capture:
    """tcpdump on the observer's WAN interface into ``pcap``; returns once it is listening."""
    return control.host("obs").capture(pcap)


def show_observer_capture(pcap: Path) -> None:
    """What the observer sees without keys: option statuses, and tshark's reading as a second opinion."""
    plain = subprocess.run([PDMV2, "decode", str(pcap), "--format", "json"], capture_output=True, text=True, check=True)
    opts = json.loads(plain.stdout)["options"]
    statuses = sorted({o["status"] for o in opts})
    print(
        f"    {len(opts)} PDM options on the WAN; readable without keys: "
        f"{sum(o['psntp'] is not None for o in opts)} (statuses: {', '.join(statuses)})"
    )
    tshark = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "ipv6.opt.type == 0x0f", "-T", "fields", "-e", "_ws.expert.message"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    if tshark.strip():
        print(f"    tshark (an independent reader): {tshark.splitlines()[0].split(',')[0]}")


def side_by_side_command(pcap: Path, decrypted: Path) -> str:
    """One bash line: per option, what the observer sees (source, tag) beside the decrypted fields."""
    lua = f"$({_rel(Path(PDMV2))} wireshark path)"
    left = f"tshark -X lua_script:{lua} -r {_rel(pcap)} -Y pdmv2 -T fields -e frame.number -e ipv6.src -e pdmv2.tag"
    right = (
        f"tshark -X lua_script:{lua} -r {_rel(decrypted)} -Y pdmv2 -T fields "
        "-e pdmv2.psntp -e pdmv2.psnlr -e pdmv2.global_pointer -e pdmv2.delta_tlr_ns"
    )
    return f"paste <({left} 2>/dev/null) <({right} 2>/dev/null) | column -t -s $'\\t'"


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run(*, keep: bool = False) -> int:
    OUT.mkdir(exist_ok=True)
    say(
        1,
        "Bring the lab up (enterprise topology)",
        "Mininet hosts: a PC and 3 SCs, a PS and 3 SSs, two routers and an observer on the WAN; IPv6 only.",
    )
    st = control.running_lab()
    started_here = st is None
    if st is not None and not st.get("ready"):
        print("a lab is starting or stuck: `make lab-down` first", file=sys.stderr)
        return 2
    if st is None:
        st = control.up("enterprise")
        for line in control.status_table(st):
            print(line)
    procs: list[subprocess.Popen[Any]] = []
    try:
        say(
            2,
            "Registration (PC <-> PS over the WAN, HPKE Auth mode)",
            "The PC pinned the PS key; the PS allowed the PC key; both exported the same SharedSecret.",
        )
        print(f"    PS key {st['fingerprints']['ps']}\n    PC key {st['fingerprints']['pc']}")
        for line in st["steps"]:
            if "registered" in line or "ansible" in line:
                print(f"    {line}")
        say(
            3,
            "Key push (Ansible from each primary to its secondaries)",
            "The SCs hold their client_secret, the SSs SharedSecret + salt; files are 0600 and private to each host.",
        )
        for h in ("sc1", "ss1"):
            print(f"    {h}: " + host_run(h, "ls", "-l", "/etc/pdmv2/keys").stdout.strip().splitlines()[-1])
        say(
            4,
            "Traffic SC1 -> SS1: ping6, and curl to an HTTP server that waits 5 ms",
            "The applications are unchanged; the agents add and read PDMv2 on the kernel's packets.",
        )
        pcap = OUT / "observer.pcap"
        cap = start_observer_capture(pcap)
        procs.append(cap.proc)
        procs.append(spawn("ss1", PY, "-m", "lab.httpd", "8080", "5"))
        time.sleep(0.5)
        print(
            "    "
            + host_run("sc1", "ping", "-6", "-c", "5", "-i", "0.2", "2001:db8:2::21").stdout.strip().splitlines()[-1]
        )
        times = []
        for _ in range(20):
            out = host_run(
                "sc1", "curl", "-s", "-o", "/dev/null", "-w", "%{time_total}", "http://[2001:db8:2::21]:8080/"
            ).stdout
            times.append(float(out or 0) * 1000)
            time.sleep(0.05)
        print(f"    curl: 20 requests, median {sorted(times)[10]:.1f} ms each (5 ms of it is the server waiting)")
        procs.append(spawn("ss1", PY, "-m", "lab.servers", "udp-echo", "5353", "5"))
        time.sleep(0.5)
        udp = host_run("sc1", PY, "-m", "lab.servers", "udp-client", "2001:db8:2::21", "5353", "40", "20").stdout
        print(f"    UDP request/response to a server that answers 5 ms after each request: {udp.strip()} of 40")
        dropped = cap.stop(settle_s=0.3)
        if dropped:
            print(f"    (the observer's capture missed {dropped} packets: tcpdump could not keep up)")
        say(
            5,
            "What the observer on the WAN sees",
            "Option type 0x0F with length 0x22: version and Random Number in clear, 30 octets of ciphertext.",
        )
        show_observer_capture(pcap)
        say(
            6,
            "The same capture decrypted with the secondary server's keys",
            "Sequence numbers, Global Pointer, and the RFC 8250 metrics: server delay and round-trip delay.",
        )
        keys = Path(tempfile.mkdtemp())
        keys.chmod(0o700)
        (keys / "server.json").write_text(host_run("ss1", "cat", "/etc/pdmv2/keys/server.json").stdout)
        (keys / "server.json").chmod(0o600)
        decoded = subprocess.run(
            [PDMV2, "decode", str(pcap), "--keys", str(keys)], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        for line in [*decoded[:6], "    ...", *decoded[-6:]]:
            print(f"    {line}")
        copy = write_decrypted(pcap, keys, OUT / "observer-decrypted.pcapng")
        print(f"    {copy}")
        print("    the capture and its decrypted copy side by side, with the PDMv2 dissector (docs/wireshark.md):")
        command = side_by_side_command(pcap, copy.out)
        print(f"    {command}")
        shown = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=False).stdout
        for line in shown.splitlines()[:4]:
            print(f"      {line}")
        stats = json.loads(host_run("sc1", PDMV2, "stats", "--json", "--run", "/run/pdmv2").stdout)
        udp_flows = [f for f in stats["flows"] if f["proto"] == 17 and f["dport"] == 5353 and f.get("server_delay")]
        for f in udp_flows:
            sd, rtt = f["server_delay"], f.get("rtt") or {}
            print(
                f"    sc1's agent, UDP to port 5353: server delay p50 {sd['p50_ns'] / 1e6:.2f} ms "
                f"(min {sd['min_ns'] / 1e6:.2f}, max {sd['max_ns'] / 1e6:.2f}, {sd['count']} samples); "
                f"round-trip delay p50 {rtt.get('p50_ns', 0) / 1e6:.2f} ms"
            )
        http = [f for f in stats["flows"] if f["proto"] == 6 and f["dport"] == 8080 and f.get("server_delay")]
        if http:
            answers = sorted(f["server_delay"]["max_ns"] / 1e6 for f in http)
            print(
                f"    HTTP over TCP, {len(http)} connections: the largest server delay per connection, median "
                f"{answers[len(answers) // 2]:.2f} ms. RFC 8250 times the next packet the server sends, and "
                "for TCP that is often the kernel's ACK or SYN-ACK rather than the answer."
            )
        say(
            7,
            "A packet forged by the observer, claiming to come from SC1",
            "Its option does not authenticate: SS1's agent drops the option (draft §7), counts it, "
            "delivers the packet.",
        )
        before = json.loads(host_run("ss1", PDMV2, "stats", "--json", "--run", "/run/pdmv2").stdout)["counters"]
        forge = (
            "from scapy.all import IPv6, UDP, IPv6ExtHdrDestOpt, HBHOptUnknown, send\n"
            "import os\n"
            "o = HBHOptUnknown(otype=0x0f, optlen=0x22, optdata=bytes([0x20, 0, 0, 2]) + os.urandom(30))\n"
            "send(IPv6(src='2001:db8:1::11', dst='2001:db8:2::21')/IPv6ExtHdrDestOpt(options=[o])"
            "/UDP(sport=4242, dport=9), verbose=0)\n"
        )
        host_run("obs", PY, "-c", forge)
        time.sleep(0.3)
        after = json.loads(host_run("ss1", PDMV2, "stats", "--json", "--run", "/run/pdmv2").stdout)["counters"]
        print(f"    ss1 auth failures: {before.get('ingress_auth_failed', 0)} -> {after.get('ingress_auth_failed', 0)}")
        say(
            8,
            "A plot of the delays over time",
            "From sc1's per-packet records: the UDP server's 5 ms shows as a line; TCP's kernel answers sit near 0.",
        )
        plot = plot_delays(host_run("sc1", "cat", "/run/pdmv2/records.jsonl").stdout, OUT / "delays.png")
        print(f"    wrote {plot}")
        print("    to watch a lab live in a browser: `make lab-up`, then `make lab-web` (docs/web.md)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        if started_here and not keep:
            say(9, "Down", "Every namespace, bridge, link and process the lab made is removed.")
            print(control.down())
    return 0


def plot_delays(records_text: str, path: Path) -> Path:
    """PNG of server delay and RTT per request, from an SC agent's records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pdmv2.core.keys import FiveTuple
    from pdmv2.core.metrics import Metric, MetricsTracker, PacketRecord

    tracker = MetricsTracker()
    series: dict[Metric, list[tuple[float, float]]] = {Metric.SERVER_DELAY: [], Metric.RTT: []}
    t0 = None
    for line in records_text.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "psntp" not in r or r.get("proto") not in (6, 17):
            continue
        t0 = t0 or r["t"]
        flow = FiveTuple.from_text(r["src"], r["sport"], r["dst"], r["dport"], r["proto"])
        rec = PacketRecord(
            flow=flow,
            psntp=r["psntp"],
            psnlr=r["psnlr"],
            delta_tlr_as=int(r["delta_tlr_ns"] * 1e9),
            delta_tls_as=int(r["delta_tls_ns"] * 1e9),
        )
        for m in tracker.feed(rec):
            if m.metric in series and not m.ambiguous:
                series[m.metric].append((r["t"] - t0, m.value_ns / 1e6))
    fig, ax = plt.subplots(figsize=(8, 4))
    for metric, pts in series.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", ms=3, label=metric.value.replace("_", " "))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("ms")
    ax.set_title("PDMv2 metrics seen by sc1's agent (UDP and TCP to ss1)")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
