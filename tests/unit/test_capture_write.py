"""``pdmv2 decode --write``: the decrypted pcapng copy, on synthetic captures (no root, no namespaces).

The captures are built here from two engines (a secondary client and a secondary server with
their key files), so every field is known; scapy is the independent reader of the copy.
Helpers shared with the tshark tests (test_capture_write_wireshark.py, tests/e2e/test_wireshark.py)
live here too.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt
from scapy.layers.l2 import CookedLinuxV2, Ether
from scapy.utils import PcapWriter, RawPcapNgReader

from pdmv2 import DEFAULT_SUITE, client_secret
from pdmv2.capture import decode_capture, write_decrypted
from pdmv2.core.doh import build_dest_opts, insert_option, parse_packet
from pdmv2.core.errors import ConfigError
from pdmv2.core.flow import Mode, PdmEngine
from pdmv2.core.keyring import dump_client_key_file, dump_server_key_file
from pdmv2.core.keys import FiveTuple
from pdmv2.keyfiles import load_keys
from pdmv2.regstore import write_secret_file

A, B, C = "2001:db8:1::10", "2001:db8:2::20", "2001:db8:3::30"  # C: a client nobody has keys for
LLA, LLB = "fe80::a", "fe80::b"
SHARED, SALT = bytes(range(1, 33)), bytes(range(64, 96))
MS = 1_000_000
PY = sys.executable


# -- a synthetic capture --------------------------------------------------------------------------


def write_keys(root: Path) -> tuple[Path, Path]:
    """(client keys dir for A, server keys dir for 2001:db8:1::/64), files 0600."""
    cs = client_secret(DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_addr=A)
    client, server = root / "client-keys", root / "server-keys"
    write_secret_file(
        client / "client.json",
        dump_client_key_file(
            DEFAULT_SUITE, client_addr=A, client_secret=cs, server_prefixes=[], registration_id="t", expires=0
        ),
    )
    write_secret_file(
        server / "server.json",
        dump_server_key_file(
            DEFAULT_SUITE,
            shared_secret=SHARED,
            salt=SALT,
            client_prefixes=["2001:db8:1::/64"],
            registration_id="t",
            expires=0,
        ),
    )
    return client, server


@dataclass
class Synthetic:
    """A capture and what it holds."""

    pcap: Path
    client_keys: Path
    server_keys: Path
    frames: list[bytes]
    """Every IPv6 packet written, in order."""
    expect: dict[int, str]
    """Frame number -> expected status of its option when decoded with the client keys."""


class _Side:
    def __init__(self, keys: Path | None, seed: int) -> None:
        self.engine = PdmEngine(keys=load_keys(keys) if keys else None, rng=random.Random(seed))


def build_synthetic(root: Path, linktype: str = "ether") -> Synthetic:
    """Clear link-local and encrypted global traffic (UDP, ICMPv6, TCP) plus every way an option fails."""
    ck, sk = write_keys(root)
    a, b = _Side(ck, 1), _Side(sk, 2)
    other = PdmEngine(keys=load_keys(ck), rng=random.Random(3))
    frames: list[tuple[int, bytes]] = []
    expect: dict[int, str] = {}
    now = 1_700_000_000_000_000_000 // 10**9 * 10**9  # whole seconds: exact in a microsecond pcap

    def send(side: PdmEngine, receiver: PdmEngine | None, pkt: Any, mode: Mode, status: str) -> bytes:
        nonlocal now
        raw = bytes(pkt)
        info = parse_packet(raw)
        sent = side.outgoing(info.flow, mode, now)
        out = insert_option(raw, sent.option)
        frames.append((now, out))
        expect[len(frames)] = status
        if receiver is not None:
            receiver.incoming(info.flow, sent.option, now + 50_000)
        return out

    def step(ns: int) -> None:
        nonlocal now
        now += ns

    for i in range(3):  # UDP echo with a 5 ms server: deltas are non-zero from the second packet on
        send(
            a.engine,
            b.engine,
            IPv6(src=A, dst=B) / UDP(sport=4000, dport=5001) / (b"ping %d" % i),
            Mode.PDMV2_ENCRYPTED,
            "opened",
        )
        step(5 * MS + 123_000)
        send(
            b.engine,
            a.engine,
            IPv6(src=B, dst=A) / UDP(sport=5001, dport=4000) / (b"pong %d" % i),
            Mode.PDMV2_ENCRYPTED,
            "opened",
        )
        step(20 * MS)
    for seq in range(2):  # ICMPv6 echo, encrypted
        send(a.engine, b.engine, IPv6(src=A, dst=B) / ICMPv6EchoRequest(id=7, seq=seq), Mode.PDMV2_ENCRYPTED, "opened")
        step(300_000)
        send(b.engine, a.engine, IPv6(src=B, dst=A) / ICMPv6EchoReply(id=7, seq=seq), Mode.PDMV2_ENCRYPTED, "opened")
        step(MS)
    for _ in range(2):  # link-local, clear (readable without keys)
        send(a.engine, b.engine, IPv6(src=LLA, dst=LLB) / UDP(sport=546, dport=547) / b"ll", Mode.PDMV2_CLEAR, "clear")
        step(2 * MS)
        send(b.engine, a.engine, IPv6(src=LLB, dst=LLA) / UDP(sport=547, dport=546) / b"ll", Mode.PDMV2_CLEAR, "clear")
        step(2 * MS)
    # A Destination Options header that already holds another option: PDM is merged after it.
    send(
        a.engine,
        b.engine,
        IPv6(src=A, dst=B) / IPv6ExtHdrDestOpt(options=[]) / TCP(sport=4001, dport=5002, flags="S"),
        Mode.PDMV2_ENCRYPTED,
        "opened",
    )
    frames[-1] = (frames[-1][0], _with_experimental_option(frames[-1][1]))
    step(MS)
    # A forged tag, a replay of frame 1, a client nobody holds keys for, two malformed options.
    forged = bytearray(frames[0][1])
    forged[parse_packet(bytes(forged)).pdm_offset + 35] ^= 0x01  # last tag octet
    frames.append((now, bytes(forged)))
    expect[len(frames)] = "auth_failed"
    step(MS)
    frames.append((now, frames[0][1]))
    expect[len(frames)] = "replay"
    step(MS)
    raw = bytes(IPv6(src=C, dst=B) / UDP(sport=4000, dport=5001) / b"x")
    # sealed for A's key but sent from C: nobody holds C's client_secret
    sent = other.outgoing(FiveTuple.from_text(A, 4000, B, 5001, 17), Mode.PDMV2_ENCRYPTED, now)
    frames.append((now, insert_option(raw, sent.option)))
    expect[len(frames)] = "encrypted"
    step(MS)
    bad_version = bytearray(sent.option)
    bad_version[2] = 0x30  # version 3
    frames.append(
        (now, insert_option(bytes(IPv6(src=A, dst=B) / UDP(sport=4000, dport=5001) / b"v3"), bytes(bad_version)))
    )
    expect[len(frames)] = "malformed"
    step(MS)
    odd = bytes((0x0F, 0x16)) + bytes(0x16)  # Option Length 0x16: none of PDM's
    frames.append((now, insert_option(bytes(IPv6(src=A, dst=B) / UDP(sport=4000, dport=5001) / b"len"), odd)))
    expect[len(frames)] = "malformed"
    step(MS)
    frames.append((now, bytes(IPv6(src=A, dst=B) / UDP(sport=4000, dport=5001) / b"no option")))

    pcap = root / ("synthetic.pcap" if linktype == "ether" else f"synthetic-{linktype}.pcap")
    dlt = {"ether": 1, "sll2": 276}[linktype]
    with PcapWriter(str(pcap), linktype=dlt, sync=True) as w:
        for ts, pkt in frames:
            if linktype == "ether":
                frame = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x86DD) / IPv6(pkt)
            else:
                frame = CookedLinuxV2(
                    proto=0x86DD, ifindex=2, lladdrtype=1, pkttype=0, lladdrlen=6, src=b"\x02\0\0\0\0\x01"
                ) / IPv6(pkt)
            frame.time = ts / 1e9
            w.write(frame)
    return Synthetic(pcap, ck, sk, [p for _, p in frames], expect)


def _with_experimental_option(packet: bytes) -> bytes:
    """The packet with an experimental option (0x1E, RFC 4727) in front of PDM in its header."""
    info = parse_packet(packet)
    off = info.dest_opts_offset
    assert off is not None and info.pdm_option is not None
    header = build_dest_opts(packet[off], [bytes((0x1E, 2, 0xAB, 0xCD)), info.pdm_option])
    old_len = (packet[off + 1] + 1) * 8
    new = packet[:off] + header + packet[off + old_len :]
    plen = len(new) - 40
    return new[:4] + plen.to_bytes(2, "big") + new[6:]


# -- tshark helpers (shared with the tshark tests) -------------------------------------------------

DISSECTOR = Path(__file__).resolve().parents[2] / "pdmv2" / "wireshark" / "pdmv2.lua"
CLEAR_FIELDS = (
    "scale_dtlr",
    "scale_dtls",
    "global_pointer",
    "psntp",
    "psnlr",
    "delta_tlr",
    "delta_tls",
    "delta_tlr_ns",
    "delta_tls_ns",
)
ALL_FIELDS = ("version", "reserved", "random_number", "f", *CLEAR_FIELDS, "ciphertext", "tag")


def tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        pytest.fail("tshark is not installed (make deps installs it)")
    return path


def tshark_rows(
    pcap: Path, *extra: str, display: str = "pdmv2", check_checksums: bool = False
) -> dict[int, dict[str, str]]:
    """Frame number -> {field: value} for every pdmv2.* field (and ``extra`` fields), with the dissector."""
    fields = [f"pdmv2.{f}" for f in ALL_FIELDS] + list(extra)
    args = [tshark(), "-n", "-r", str(pcap), "-X", f"lua_script:{DISSECTOR}", "-Y", display, "-T", "fields"]
    if check_checksums:
        args += ["-o", "udp.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE"]
    args += ["-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=|", "-e", "frame.number"]
    for f in fields:
        args += ["-e", f]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "Lua" not in done.stderr and "lua" not in done.stderr, done.stderr  # the script loaded cleanly
    rows = {}
    for line in done.stdout.splitlines():
        cells = line.split("\t")
        rows[int(cells[0])] = dict(zip([f.removeprefix("pdmv2.") for f in fields], cells[1:], strict=True))
    return rows


def _int(text: str) -> int:
    return int(text, 0)


def _close(text: str, value: float) -> bool:
    return abs(float(text) - value) <= 1e-12 * max(1.0, abs(value))  # tshark prints 15 digits


def assert_row_matches(row: dict[str, str], opt: dict[str, Any], *, as_clear: bool = False) -> None:
    """Every pdmv2.* field tshark shows equals the decode's (``as_clear``: a decrypted copy of ``opt``)."""
    where = f"frame {opt['index']}"
    assert _int(row["version"]) == 2 and _int(row["reserved"]) == 0, where
    assert _int(row["random_number"]) == opt["random_number"] and _int(row["f"]) == opt["f"], where
    clear = as_clear or opt["format"] == "pdmv2-clear"
    if clear:
        for name in CLEAR_FIELDS:
            assert opt[name] is not None, (where, name)
            if name.endswith("_ns"):
                assert _close(row[name], opt[name]), (where, name, row[name], opt[name])
            else:
                assert _int(row[name]) == opt[name], (where, name, row[name], opt[name])
        assert row["ciphertext"] == "" and row["tag"] == "", where
    else:
        assert row["ciphertext"] == opt["ciphertext"] and row["tag"] == opt["tag"], where
        assert all(row[name] == "" for name in CLEAR_FIELDS), where


def decode_json(pcap: Path, keys: Path | None) -> dict[str, Any]:
    """``pdmv2 decode --format json``, the command users run."""
    args = [PY, "-m", "pdmv2.cli.main", "decode", str(pcap), "--format", "json"]
    if keys is not None:
        args += ["--keys", str(keys)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- the decrypted copy, read back with scapy -----------------------------------------------------


@pytest.fixture
def syn(tmp_path: Path) -> Synthetic:
    return build_synthetic(tmp_path)


def _read_ng(path: Path) -> list[tuple[bytes, Any]]:
    with RawPcapNgReader(str(path)) as reader:
        return [(bytes(data), meta) for data, meta in reader]


def test_decode_reports_what_the_capture_holds(syn: Synthetic) -> None:
    opts = decode_capture(syn.pcap, syn.client_keys).options
    assert {o.index: o.status for o in opts} == syn.expect
    by = {o.index: o for o in opts}
    assert by[1].ciphertext is not None and len(bytes.fromhex(by[1].ciphertext)) == 14
    assert by[1].tag is not None and len(bytes.fromhex(by[1].tag)) == 16
    assert by[2].delta_tlr_ns == pytest.approx(5.073e6, rel=3.1e-5)  # 5.123 ms - 50 us, to the encoding's 30 ppm
    assert by[2].delta_tlr is not None and by[2].delta_tlr >> 15 == 1  # 16 significant bits
    assert by[len(syn.frames) - 2].error and "version" in by[len(syn.frames) - 2].error


def test_every_option_that_opens_is_rewritten_clear_and_the_rest_is_untouched(syn: Synthetic, tmp_path: Path) -> None:
    out = tmp_path / "decrypted.pcapng"
    summary = write_decrypted(syn.pcap, syn.client_keys, out)
    opened = [n for n, s in syn.expect.items() if s == "opened"]
    assert summary.frames == len(syn.frames)
    assert summary.decrypted == len(opened)
    assert summary.left == {"auth_failed": 1, "replay": 1, "encrypted": 1, "malformed": 2}
    assert not list(tmp_path.glob("*.partial"))

    before = {o.index: o for o in decode_capture(syn.pcap, syn.client_keys).options}
    after = {o.index: o for o in decode_capture(out, None).options}  # no keys needed any more
    assert set(after) == set(before)
    for n, o in before.items():
        a = after[n]
        if o.status == "opened":
            assert (a.format, a.status) == ("pdmv2-clear", "clear"), n
            for name in ("psntp", "psnlr", "global_pointer", "random_number", "f", "delta_tlr_ns", "delta_tls_ns"):
                assert getattr(a, name) == getattr(o, name), (n, name)
            for name in ("scale_dtlr", "scale_dtls", "delta_tlr", "delta_tls"):
                assert getattr(a, name) == getattr(o, name), (n, name)
        elif o.format == "pdmv2-clear":
            assert a == o
        else:  # left as captured
            assert (a.format, a.ciphertext, a.tag) == (o.format, o.ciphertext, o.tag), n

    rows = _read_ng(out)
    assert len(rows) == len(syn.frames)
    for n, ((data, meta), original) in enumerate(zip(rows, syn.frames, strict=True), start=1):
        ip = data[14:]
        assert data[:14] == bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x86DD))[:14]
        assert meta.wirelen == len(data)
        comments = [c.decode() for c in meta.comments or []]
        status = syn.expect.get(n)
        if status == "opened":
            assert len(ip) == len(original) - 16
            assert comments and "decrypted" in comments[0] and "authenticated" in comments[0]
            assert "Option Length 0x22, 36 octets" in comments[0] and "Option Length 0x12" in comments[0]
        elif status in ("auth_failed", "replay", "encrypted", "malformed"):
            assert ip == original, n
            assert comments and "left as captured" in comments[0], n
        else:
            assert ip == original and not comments, n
    why = {n: (rows[n - 1][1].comments or [b""])[0].decode() for n, s in syn.expect.items() if s != "opened"}
    assert any("did not authenticate" in t for t in why.values())
    assert any("replay" in t for t in why.values())
    assert any("no key for this flow" in t for t in why.values())
    assert any("malformed" in t and "version" in t for t in why.values())


def test_the_copy_is_valid_ipv6_with_valid_checksums(syn: Synthetic, tmp_path: Path) -> None:
    out = tmp_path / "decrypted.pcapng"
    write_decrypted(syn.pcap, syn.client_keys, out)
    checked = 0
    for (data, _), original in zip(_read_ng(out), syn.frames, strict=True):
        ip = data[14:]
        if ip == original:
            continue
        info = parse_packet(ip)  # Payload Length, Hdr Ext Len and every option length agree
        assert info.pdm_option is not None and info.pdm_option[1] == 0x12
        pkt = IPv6(ip)
        assert pkt.plen == len(ip) - 40
        doh = pkt[IPv6ExtHdrDestOpt]
        assert (doh.len + 1) * 8 == len(bytes(doh)) - len(bytes(doh.payload))
        # The upper layer is byte for byte the one captured, and scapy computes the same checksum.
        upper = doh.payload
        assert bytes(upper) == bytes(IPv6(original)[IPv6ExtHdrDestOpt].payload)
        recomputed = pkt.copy()
        layer = recomputed[IPv6ExtHdrDestOpt].payload
        delattr(layer, "cksum" if "cksum" in layer.fields else "chksum")
        assert bytes(recomputed) == ip
        checked += 1
    assert checked == sum(1 for s in syn.expect.values() if s == "opened")


def test_the_clear_header_is_the_one_a_clear_sender_builds_and_other_options_stay(
    syn: Synthetic, tmp_path: Path
) -> None:
    out = tmp_path / "decrypted.pcapng"
    write_decrypted(syn.pcap, syn.client_keys, out)
    rows = _read_ng(out)
    first = rows[0][0][14:]
    info = parse_packet(first)
    assert info.dest_opts_offset == 40 and first[41] == 2  # 24 octets: 2 + 20 + PadN 2, as the agent sends clear
    merged_index = next(n for n in sorted(syn.expect) if syn.expect[n] == "opened" and TCP in IPv6(syn.frames[n - 1]))
    ip = rows[merged_index - 1][0][14:]
    opts = IPv6(ip)[IPv6ExtHdrDestOpt].options
    assert bytes(opts[0])[:4] == bytes((0x1E, 2, 0xAB, 0xCD))  # the other option kept, first
    assert parse_packet(ip).pdm_option is not None and parse_packet(ip).pdm_option[1] == 0x12


def test_timestamps_and_link_layer_are_kept_for_linux_cooked_captures(tmp_path: Path) -> None:
    syn = build_synthetic(tmp_path, linktype="sll2")
    out = tmp_path / "decrypted.pcapng"
    summary = write_decrypted(syn.pcap, syn.client_keys, out)
    assert summary.decrypted == sum(1 for s in syn.expect.values() if s == "opened")
    rows = _read_ng(out)
    assert {meta.linktype for _, meta in rows} == {276}
    original = decode_capture(syn.pcap, syn.client_keys).options
    copy = decode_capture(out, None).options
    assert [o.time for o in copy] == [o.time for o in original]
    assert [o.psntp for o in copy] == [o.psntp for o in original]


def test_write_errors_are_typed_and_leave_nothing(syn: Synthetic, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no \*\.json key files"):
        write_decrypted(syn.pcap, tmp_path / "empty", tmp_path / "x.pcapng")
    with pytest.raises(ConfigError, match="overwrite"):
        write_decrypted(syn.pcap, syn.client_keys, syn.pcap)
    with pytest.raises(ConfigError, match="write"):
        write_decrypted(syn.pcap, syn.client_keys, tmp_path / "no" / "such" / "dir" / "x.pcapng")
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\xd4\xc3\xb2\xa1" + bytes(10))
    with pytest.raises(ConfigError, match="capture"):
        write_decrypted(bad, syn.client_keys, tmp_path / "y.pcapng")
    assert not (tmp_path / "y.pcapng").exists() and not list(tmp_path.glob("*.partial"))


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "pdmv2.cli.main", *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def test_cli_decode_write(syn: Synthetic, tmp_path: Path) -> None:
    out = tmp_path / "copy.pcapng"
    done = _cli("decode", str(syn.pcap), "--keys", str(syn.server_keys), "--write", str(out))
    assert done.returncode == 0, done.stderr
    opened = sum(1 for s in syn.expect.values() if s == "opened")
    assert f"{opened} option(s) decrypted" in done.stdout and str(out) in done.stdout
    assert out.exists()
    missing = _cli("decode", str(syn.pcap), "--write", str(tmp_path / "z.pcapng"))
    assert missing.returncode == 2 and "--keys" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "z.pcapng").exists()
    helptext = _cli("decode", "--help")
    assert "--write" in helptext.stdout


def test_cli_wireshark_path_and_install(tmp_path: Path) -> None:
    done = _cli("wireshark", "path")
    assert done.returncode == 0
    path = Path(done.stdout.strip())
    assert path.is_absolute() and path.is_file() and path.read_text().startswith("-- PDMv2 for Wireshark")
    assert path == DISSECTOR
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    first = _cli("wireshark", "install", env=env)
    assert first.returncode == 0, first.stderr
    dest = tmp_path / "home" / ".local" / "lib" / "wireshark" / "plugins" / "pdmv2.lua"
    assert f"installed {dest}" in first.stdout
    assert dest.read_bytes() == path.read_bytes() and (dest.stat().st_mode & 0o777) == 0o644
    again = _cli("wireshark", "install", env=env)
    assert "already up to date" in again.stdout
    other = _cli("wireshark", "install", "--dir", str(tmp_path / "elsewhere"))
    assert other.returncode == 0 and (tmp_path / "elsewhere" / "pdmv2.lua").is_file()
    blocked = tmp_path / "file"
    blocked.write_text("")
    refused = _cli("wireshark", "install", "--dir", str(blocked))
    assert refused.returncode == 2 and "install" in refused.stderr and "Traceback" not in refused.stderr
    assert "install" in _cli("wireshark", "--help").stdout


def test_personal_plugins_dir_follows_tshark() -> None:
    from pdmv2.wireshark import personal_plugins_dir

    folders = (
        "Temp:\t/tmp\nPersonal Lua Plugins:\t/home/u/.local/lib/wireshark/plugins\nGlobal Lua Plugins:\t/usr/lib\n"
    )
    assert personal_plugins_dir(folders, Path("/x")) == Path("/home/u/.local/lib/wireshark/plugins")
    assert personal_plugins_dir(None, Path("/x")) == Path("/x/.local/lib/wireshark/plugins")


def test_an_option_before_a_routing_header_is_overwritten_in_place() -> None:
    from scapy.layers.inet6 import IPv6ExtHdrRouting

    from pdmv2.capture import _replace_option

    raw = bytes(IPv6(src=A, dst=B) / IPv6ExtHdrRouting(addresses=["2001:db8:2::21"]) / UDP(sport=1, dport=2) / b"x")
    sealed = bytes((0x0F, 0x22, 0x20, 0, 0, 2)) + bytes(range(30))
    pkt = raw[:6] + b"\x3c" + raw[7:40] + build_dest_opts(43, [sealed]) + raw[40:]
    pkt = pkt[:4] + (len(pkt) - 40).to_bytes(2, "big") + pkt[6:]
    info = parse_packet(pkt)
    assert info.refuse == "routing header"  # insert_option refuses: the in-place fallback runs
    clear = bytes((0x0F, 0x12, 0x20, 0, 0, 2)) + bytes(range(14))
    new = _replace_option(pkt, info, clear)
    assert len(new) == len(pkt) and parse_packet(new).pdm_option == clear
    assert new[info.pdm_offset + 20 : info.pdm_offset + 22] == bytes((0x01, 14))  # PadN over the freed 16 octets
    assert IPv6(new)[UDP].chksum == IPv6(pkt)[UDP].chksum and bytes(IPv6(new)[UDP]) == bytes(IPv6(pkt)[UDP])


def _cut(src: Path, dst: Path, snaplen: int) -> None:
    """A copy of ``src`` as tcpdump -s ``snaplen`` would have captured it (original lengths kept)."""
    from scapy.utils import RawPcapReader, RawPcapWriter

    reader = RawPcapReader(str(src))
    writer = RawPcapWriter(str(dst), linktype=reader.linktype, snaplen=snaplen)
    writer.write_header(None)
    for data, meta in reader:
        writer.write_packet(
            data[:snaplen], sec=meta.sec, usec=meta.usec, caplen=min(len(data), snaplen), wirelen=len(data)
        )
    writer.close()
    reader.close()


def test_a_capture_cut_by_its_snaplen_decodes_like_the_whole_one(syn: Synthetic, tmp_path: Path) -> None:
    whole = decode_capture(syn.pcap, syn.client_keys).options
    snaplen = 14 + 40 + 40 + 8 + 8  # Ethernet, IPv6, the largest Destination Options header here, ports
    assert any(len(f) + 14 > snaplen for f in syn.frames)  # some frames really are cut
    cut = tmp_path / "cut.pcap"
    _cut(syn.pcap, cut, snaplen)
    assert decode_capture(cut, syn.client_keys).options == whole
    # the decrypted copy of a cut capture: options overwritten in place, lengths as on the wire
    out = tmp_path / "cut-decrypted.pcapng"
    summary = write_decrypted(cut, syn.client_keys, out)
    assert summary.decrypted == sum(s == "opened" for s in syn.expect.values())
    after = {o.index: o for o in decode_capture(out, None).options}
    for o in whole:
        if o.status == "opened":
            assert (after[o.index].status, after[o.index].psntp) == ("clear", o.psntp)
    for (data, meta), original in zip(_read_ng(out), syn.frames, strict=True):
        if len(original) + 14 > snaplen:  # cut: rewritten in place, the length on the wire kept
            assert meta.wirelen == len(original) + 14 and len(data) == snaplen
