"""The web view's data layer, without a lab: topology picture, live decoding, agent counters, the server."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import re
from pathlib import Path

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from lab.control import load_topology
from lab.web.collect import COUNTERS, agent_view
from lab.web.packets import LiveDecoder, keyring_from_texts
from lab.web.server import STATIC, make_app
from lab.web.topoview import MAX_SHOWN, graph
from pdmv2 import DEFAULT_SUITE, client_secret
from pdmv2.core.errors import ConfigError
from pdmv2.core.flow import PdmEngine
from pdmv2.core.keyring import ClientKeyring, ServerKeyring, dump_server_key_file
from pdmv2.core.packetproc import PacketProcessor
from pdmv2.core.policy import parse_policy

C, S = "2001:db8:1::10", "2001:db8:2::20"
SHARED, SALT = bytes(range(32)), bytes(32)
POLICY = (
    "rules:\n  - prefix: 2001:db8:2::/64\n    mode: pdmv2-encrypted\n"
    "  - prefix: 2001:db8:1::/64\n    mode: pdmv2-encrypted\n"
)
KEY_TEXT = dump_server_key_file(
    DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_prefixes=["2001:db8:1::/64"], registration_id="t", expires=0
)
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x86DD)


# -- topology picture -----------------------------------------------------------------------------


def test_graph_enterprise_every_host_placed_and_the_observed_segment_named() -> None:
    topo, _ = load_topology("enterprise")
    g = graph(topo)
    assert {h["name"] for h in g["hosts"]} == {n.name for n in topo.hosts}
    assert [s["name"] for s in g["segments"]] == ["lan1", "wan", "lan2"]  # client site first, then outwards
    assert g["observer"] == {"host": "obs", "segment": "wan"}
    assert g["capture"] == {"host": "obs", "ifname": "eth0", "segment": "wan", "stand_in": False}
    assert [s["observed"] for s in g["segments"]] == [False, True, False]
    pos = {(h["x"], h["y"]) for h in g["hosts"]}
    assert len(pos) == len(g["hosts"]), "two hosts drawn on the same spot"
    byname = {h["name"]: h for h in g["hosts"]}
    seg_x = {s["name"]: s["x"] for s in g["segments"]}
    assert seg_x["lan1"] < byname["r1"]["x"] < seg_x["wan"] < byname["r2"]["x"] < seg_x["lan2"]
    assert byname["ss1"]["addresses"] == ["2001:db8:2::21"] and byname["ss1"]["role"] == "ss"
    assert {"host": "obs", "ifname": "eth0", "segment": "wan"} in g["links"]
    assert all(0 <= h["x"] <= g["width"] and 0 <= h["y"] <= g["height"] for h in g["hosts"])


def test_graph_without_observer_captures_on_a_router_away_from_the_client_site() -> None:
    g = graph(load_topology("minimal")[0])
    assert g["observer"] is None
    assert g["capture"] == {"host": "r1", "ifname": "eth1", "segment": "lan2", "stand_in": True}
    assert not any(s["observed"] for s in g["segments"]) and [s["captured"] for s in g["segments"]] == [False, True]


def test_graph_of_a_scaled_lab_draws_a_bounded_number_of_hosts() -> None:
    g = graph(load_topology("enterprise", 40)[0])
    lan1 = next(s for s in g["segments"] if s["name"] == "lan1")
    assert lan1["more"] == 41 - MAX_SHOWN  # pc + 40 SCs, MAX_SHOWN drawn
    assert g["height"] < 1200


# -- live decoding ----------------------------------------------------------------------------------


def pair() -> tuple[PacketProcessor, PacketProcessor]:
    cs = client_secret(DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_addr=C)
    sc = PdmEngine(keys=ClientKeyring(DEFAULT_SUITE, ipaddress.IPv6Address(C).packed, cs), rng=random.Random(1))
    ss = PdmEngine(
        keys=ServerKeyring(
            DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_prefixes=(ipaddress.IPv6Network("2001:db8:1::/64"),)
        ),
        rng=random.Random(2),
    )
    return PacketProcessor(sc, parse_policy(POLICY)), PacketProcessor(ss, parse_policy(POLICY))


def exchange(n: int, server_ms: list[float], t0: float = 1000.0) -> list[tuple[bytes, float]]:
    """n UDP request/response pairs through two agents; frames as an observer between them sees them."""
    client, server = pair()
    frames = []
    t = t0
    for i in range(n):
        req = bytes(IPv6(src=C, dst=S) / UDP(sport=40000, dport=5353) / Raw(b"ping %d" % i))
        v = client.egress(req, int(t * 1e9))
        assert v.packet is not None
        frames.append((bytes(ETH / Raw(v.packet)), t + 0.0005))
        assert server.ingress(v.packet, int((t + 0.001) * 1e9)).received is not None
        t_reply = t + 0.001 + server_ms[i % len(server_ms)] / 1000
        rep = bytes(IPv6(src=S, dst=C) / UDP(sport=5353, dport=40000) / Raw(b"pong %d" % i))
        w = server.egress(rep, int(t_reply * 1e9))
        assert w.packet is not None
        frames.append((bytes(ETH / Raw(w.packet)), t_reply + 0.0005))
        assert client.ingress(w.packet, int((t_reply + 0.001) * 1e9)).received is not None
        t = t_reply + 0.2
    return frames


def test_decoder_shows_ciphertext_and_opens_it_with_the_server_key_file() -> None:
    frames = exchange(20, [5.0, 5.2, 4.9])
    dec = LiveDecoder(keyring_from_texts({"ss1": KEY_TEXT}), keep_packets=10)
    for frame, ts in frames:
        dec.feed(frame, 1, ts)
    assert dec.frames == 40 and dec.options == 40 and dec.opened == 40
    assert len(dec.packets) == 10  # bounded
    last = dec.packets[-1]
    assert last["src"] == S and last["dst"] == C and last["proto"] == "UDP" and last["sport"] == 5353
    assert last["wire"]["format"] == "pdmv2-encrypted" and last["wire"]["length"] == "0x22"
    assert re.fullmatch(r"[0-9a-f]{28}", last["wire"]["ciphertext"]) and re.fullmatch(
        r"[0-9a-f]{32}", last["wire"]["tag"]
    )
    assert "psntp" not in last["wire"], "the wire view must not show what only the keys reveal"
    o = last["opened"]
    assert o["status"] == "opened" and o["psntp"] >= 1 and o["psnlr"] >= 1
    assert o["server_delay_ns"] == pytest.approx(5.2e6, rel=0.01)  # reply 19 (from 0) of the 5.0, 5.2, 4.9 cycle
    flows = dec.flows(now=frames[-1][1] + 1)
    assert len(flows) == 1
    f = flows[0]
    assert f["flow"] == f"[{C}]:40000 > [{S}]:5353 UDP"
    assert f["server_delay"]["count"] == 20 and f["server_delay"]["p50_ms"] == pytest.approx(5.0, abs=0.01)
    # RFC 8250's round-trip delay leaves the server's time out: 1 ms of wire each way
    assert f["rtt"]["count"] >= 19 and f["rtt"]["p50_ms"] == pytest.approx(2.0, abs=0.05)
    assert len(f["server_delay"]["points"]) == 20 and all(-60 <= t <= 0 for t, _ in f["server_delay"]["points"])


def test_decoder_without_keys_shows_only_the_wire_and_no_metrics() -> None:
    dec = LiveDecoder(None)
    for frame, ts in exchange(5, [5.0]):
        dec.feed(frame, 1, ts)
    assert dec.options == 10 and dec.opened == 0
    assert all(p["opened"]["status"] == "no keys loaded" and "ciphertext" in p["wire"] for p in dec.packets)
    assert dec.flows(now=2000.0) == []


def test_decoder_flags_a_forged_option_and_forgets_old_samples() -> None:
    frames = exchange(3, [5.0])
    forged = bytearray(frames[-1][0])
    forged[-20] ^= 0xFF  # the payload... keep the option intact, then break the tag instead
    opt_at = bytes(forged).find(bytes([0x0F, 0x22]))
    forged[opt_at + 2 + 4 + 20] ^= 1
    dec = LiveDecoder(keyring_from_texts({"ss1": KEY_TEXT}), window_s=60)
    for frame, ts in frames[:-1]:
        dec.feed(frame, 1, ts)
    row = dec.feed(bytes(forged), 1, frames[-1][1])
    assert row is not None and row["opened"]["status"] == "auth failed"
    assert dec.flows(now=frames[-1][1])[0]["server_delay"]["count"] == 2
    assert dec.flows(now=frames[-1][1] + 61) == []  # a minute later nothing is left


def test_decoder_ignores_what_is_not_a_pdm_packet() -> None:
    dec = LiveDecoder(None)
    assert dec.feed(bytes(ETH / IPv6(src=C, dst=S) / UDP()), 1, 1.0) is None
    assert dec.feed(b"\x00" * 10, 1, 1.0) is None
    assert dec.feed(bytes(ETH / Raw(b"\x60" + b"\x00" * 10)), 1, 1.0) is None
    assert dec.frames == 3 and dec.options == 0 and not dec.packets


def test_bad_key_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        keyring_from_texts({"ss1": "{not json"})
    assert keyring_from_texts({}) is None


# -- agents -----------------------------------------------------------------------------------------


def test_agent_view_counters_with_missing_ones_as_zero() -> None:
    stats = {"keys": "ServerKeyring(...)", "counters": {"egress_inserted": 7, "ingress_read": 5}, "flows": []}
    v = agent_view("ss1", "ss", stats)
    assert v["status"] == "up"
    assert v["counters"] == {"inserted": 7, "read": 5, "auth_failures": 0, "downgrades": 0, "replays": 0}
    counters = {"ingress_replay": 2, "ingress_downgrade": 1, "ingress_auth_failed": 3, "egress_off": 9}
    v = agent_view("ss1", "ss", {"keys": None, "counters": counters})
    assert v["status"] == "no keys"
    assert v["counters"] == {"inserted": 0, "read": 0, "auth_failures": 3, "downgrades": 1, "replays": 2}
    down = agent_view("sc1", "sc", None, "no agent socket")
    assert down["status"] == "down" and down["detail"] == "no agent socket" and down["counters"] == {}


def test_counter_names_are_the_agents_outcomes() -> None:
    from pdmv2.core.packetproc import Outcome

    outcomes = {f"{d}_{o.value}" for o in Outcome for d in ("egress", "ingress")}
    assert set(COUNTERS.values()) <= outcomes


def test_agent_view_never_shows_key_material() -> None:
    v = agent_view("ss1", "ss", {"keys": "ServerKeyring(shared_secret=<hidden>)", "counters": {}})
    assert "keys" not in v and "ServerKeyring" not in json.dumps(v)


# -- the server -------------------------------------------------------------------------------------


class FakeCollector:
    def __init__(self) -> None:
        self.calls = 0

    def snapshot(self) -> dict[str, object]:
        self.calls += 1
        return {"now": 1.0, "n": self.calls}


def test_server_routes_read_only_and_offline() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    async def run() -> None:
        fake = FakeCollector()
        async with TestClient(TestServer(make_app(fake, interval=0.2))) as client:
            r = await client.get("/")
            assert r.status == 200 and "default-src 'self'" in r.headers["Content-Security-Policy"]
            assert "/static/app.js" in await r.text()
            r = await client.get("/static/app.js")
            assert r.status == 200 and "EventSource" in await r.text()
            r = await client.get("/api/snapshot")
            assert r.status == 200 and (await r.json())["now"] == 1.0
            for method in ("POST", "PUT", "DELETE"):
                assert (await client.request(method, "/api/snapshot")).status == 405
            assert (await client.get("/static/../collect.py")).status in (403, 404)
            assert (await client.get("/nothing")).status == 404
            r = await client.get("/api/events")
            assert r.headers["Content-Type"].startswith("text/event-stream")
            seen = []
            while len(seen) < 2:
                line = (await r.content.readline()).decode()
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:])["n"])
            assert seen[1] > seen[0]
            r.close()

    asyncio.run(run())


def test_static_files_load_nothing_from_elsewhere() -> None:
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I) or path.suffix == ".js", path
        assert "cdn" not in text.lower(), path
        if path.suffix in (".html", ".css"):
            assert "http://" not in text and "https://" not in text, path
    js = (STATIC / "app.js").read_text()
    assert re.findall(r"https?://[^\"' ]+", js) == ["http://www.w3.org/2000/svg"]  # a namespace name, not fetched
    assert "innerHTML" not in js


def test_main_refuses_what_it_must_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from lab.web import server

    def args(**kw: object) -> argparse.Namespace:
        return argparse.Namespace(**{"port": 0, "bind": "::1", "interval": 1.0, **kw})

    for bad, words in (
        (args(bind="0.0.0.0"), "loopback only"),
        (args(bind="2001:db8::1"), "loopback only"),
        (args(bind="localhost"), "give ::1 or 127.0.0.1"),
        (args(port=70000), "0..65535"),
        (args(interval=5.0), "between 0.2 and 1"),
    ):
        with pytest.raises(server.WebError, match=words):
            server.main(bad)
    monkeypatch.setattr(server.os, "geteuid", lambda: 1000)
    with pytest.raises(server.WebError, match="run it as root"):
        server.main(args())
    monkeypatch.setattr(server.os, "geteuid", lambda: 0)
    monkeypatch.setattr(server.control, "running_lab", lambda: None)
    with pytest.raises(server.WebError, match="no lab is up"):
        server.main(args())
    monkeypatch.setattr(server.control, "running_lab", lambda: {"ready": False, "hosts": {}})
    with pytest.raises(server.WebError, match="still starting"):
        server.main(args())


def test_agentwatch_streams_the_agents_stats_and_says_when_there_is_none(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys
    import threading

    repo = Path(__file__).resolve().parent.parent.parent
    run = tmp_path / "run"
    run.mkdir()
    watch = subprocess.Popen(
        [sys.executable, "-m", "lab.web.agentwatch", str(run), "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=repo,
    )
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())
        assert "no agent socket" in first["error"]
        # a stand-in agent on the control socket: answers "stats" with one JSON line
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(run / "agent.sock"))
        server.listen(4)
        asked = []

        def serve() -> None:
            for n in range(3):
                conn, _ = server.accept()
                with conn:
                    asked.append(conn.recv(64))
                    conn.sendall(json.dumps({"counters": {"ingress_read": n}, "keys": "k"}).encode() + b"\n")

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        reads = []
        while len(reads) < 3:
            doc = json.loads(watch.stdout.readline())
            if "stats" in doc:
                reads.append(doc["stats"]["counters"]["ingress_read"])
        assert reads == [0, 1, 2] and asked[0] == b"stats\n"
        server.close()
    finally:
        watch.terminate()
        watch.wait(10)
    bad = subprocess.run(
        [sys.executable, "-m", "lab.web.agentwatch"], capture_output=True, text=True, cwd=repo, check=False
    )
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_collector_snapshot_before_any_reading_has_what_the_page_draws() -> None:
    from lab.web.collect import Collector

    topo, _ = load_topology("enterprise")
    st = {"hosts": {n.name: {"pid": 1000 + i} for i, n in enumerate(topo.hosts)}, "started": 1.0}
    snap = Collector(st, topo).snapshot()  # no thread started: nothing entered, nothing read
    assert snap["lab"] == {"up": True, "topology": "enterprise", "started": 1.0}
    assert [a["host"] for a in snap["agents"]] == ["sc1", "sc2", "sc3", "ss1", "ss2", "ss3"]
    assert all(a["status"] == "?" for a in snap["agents"]) and snap["agents_polled_s_ago"] is None
    assert snap["flows"] == [] and snap["packets"] == []
    assert snap["capture"]["host"] == "obs" and snap["capture"]["keys_from"] == [] and snap["capture"]["frames"] == 0
    assert {h["name"] for h in snap["graph"]["hosts"]} == set(st["hosts"])
    json.dumps(snap)  # what the event stream sends
