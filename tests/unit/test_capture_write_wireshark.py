"""The Lua dissector in the real tshark, on synthetic captures (no root): every pdmv2.* field equals
what ``pdmv2 decode --format json`` says, for the captured options and for the decrypted copy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pdmv2.capture import write_decrypted
from tests.unit.test_capture_write import (
    DISSECTOR,
    Synthetic,
    assert_row_matches,
    build_synthetic,
    decode_json,
    tshark,
    tshark_rows,
)


@pytest.fixture(scope="module")
def syn(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    return build_synthetic(tmp_path_factory.mktemp("syn"))


def test_installed_dissector_is_loaded_by_tshark_and_registers_its_fields(tmp_path: Path) -> None:
    env = dict(os.environ, HOME=str(tmp_path))
    installed = subprocess.run(
        [sys.executable, "-m", "pdmv2.cli.main", "wireshark", "install"], env=env, capture_output=True, text=True
    )
    assert installed.returncode == 0, installed.stderr
    # -G ignores -X lua_script: the fields come from the personal plugins folder `install` wrote.
    done = subprocess.run([tshark(), "-G", "fields"], env=env, capture_output=True, text=True, timeout=60)
    names = {line.split("\t")[2] for line in done.stdout.splitlines() if line.startswith("F\t")}
    for name in (
        "version",
        "reserved",
        "random_number",
        "f",
        "scale_dtlr",
        "scale_dtls",
        "global_pointer",
        "psntp",
        "psnlr",
        "delta_tlr",
        "delta_tls",
        "delta_tlr_ns",
        "delta_tls_ns",
        "ciphertext",
        "tag",
    ):
        assert f"pdmv2.{name}" in names


def test_every_field_of_every_option_equals_pdmv2_decode(syn: Synthetic) -> None:
    decoded = decode_json(syn.pcap, syn.client_keys)["options"]
    rows = tshark_rows(syn.pcap)
    readable = [o for o in decoded if o["status"] != "malformed"]
    assert {o["format"] for o in readable} == {"pdmv2-clear", "pdmv2-encrypted"}
    assert set(rows) == {o["index"] for o in decoded}  # malformed ones show too (with the expert note)
    for opt in readable:
        assert_row_matches(rows[opt["index"]], opt)
    # The clear options carry real times (the link-local exchange runs every 2 ms), not only zeros.
    assert any(float(rows[o["index"]]["delta_tlr_ns"]) > 1e6 for o in readable if o["format"] == "pdmv2-clear")


def test_the_decrypted_copy_shows_the_opened_fields_in_the_clear(syn: Synthetic, tmp_path: Path) -> None:
    out = tmp_path / "decrypted.pcapng"
    write_decrypted(syn.pcap, syn.client_keys, out)
    original = {o["index"]: o for o in decode_json(syn.pcap, syn.client_keys)["options"]}
    rows = tshark_rows(
        out,
        "frame.comment",
        "udp.checksum.status",
        "icmpv6.checksum.status",
        "tcp.checksum.status",
        check_checksums=True,
    )
    opened = [o for o in original.values() if o["status"] == "opened"]
    assert len(opened) >= 10
    server_delays = []
    for opt in opened:
        row = rows[opt["index"]]
        assert_row_matches(row, opt, as_clear=True)
        assert "decrypted" in row["frame.comment"] and "authenticated" in row["frame.comment"]
        status = row["udp.checksum.status"] or row["icmpv6.checksum.status"] or row["tcp.checksum.status"]
        assert status == "1", (opt["index"], status)  # 1 = Good: tshark verified the checksum
        if opt["src"] == "2001:db8:2::20" and opt["proto"] == 17:
            server_delays.append(float(row["delta_tlr_ns"]))
    assert server_delays and all(abs(d - 5.073e6) < 200 for d in server_delays), server_delays
    for n, opt in original.items():
        if opt["status"] in ("auth_failed", "replay", "encrypted"):
            assert_row_matches(rows[n], opt)  # left as captured: still the encrypted layout
            assert "left as captured" in rows[n]["frame.comment"]


def test_malformed_options_raise_the_expert_note(syn: Synthetic) -> None:
    malformed = [n for n, s in syn.expect.items() if s == "malformed"]
    done = subprocess.run(
        [
            tshark(),
            "-n",
            "-r",
            str(syn.pcap),
            "-X",
            f"lua_script:{DISSECTOR}",
            "-Y",
            "pdmv2.malformed",
            "-T",
            "fields",
            "-E",
            "aggregator=|",
            "-e",
            "frame.number",
            "-e",
            "_ws.expert.message",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    flagged = {int(line.split("\t")[0]): line.split("\t")[1] for line in done.stdout.splitlines()}
    assert sorted(flagged) == malformed  # exactly the malformed ones: no false alarm on good options
    messages = list(flagged.values())
    assert any("Malformed PDMv2 option: version 3" in m for m in messages), messages
    assert any("Malformed PDMv2 option: Option Length 0x16" in m for m in messages), messages
    # The built-in RFC 8250 dissector still runs and still warns (docs/wireshark.md says so).
    assert all("PDM: Invalid length" in m for m in messages)


def test_a_truncated_option_is_flagged_not_a_lua_error(tmp_path: Path) -> None:
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    # A header of 8 octets whose PDMv2 option says 0x12 octets: runs past the header end.
    ip = bytes(IPv6(src="2001:db8:1::10", dst="2001:db8:2::20", nh=60) / (bytes((17, 0, 0x0F, 0x12, 0x20, 0, 0, 2))))
    ip += bytes(UDP(sport=1, dport=2))
    ip = ip[:4] + (len(ip) - 40).to_bytes(2, "big") + ip[6:]
    pcap = tmp_path / "trunc.pcap"
    wrpcap(str(pcap), [Ether(type=0x86DD) / IPv6(ip)])
    done = subprocess.run(
        [tshark(), "-r", str(pcap), "-X", f"lua_script:{DISSECTOR}", "-T", "fields", "-e", "_ws.expert.message"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "Lua" not in done.stderr, done.stderr
    assert "Malformed PDMv2 option: option of 20 octets runs past the header end" in done.stdout


def test_the_info_column_names_each_option(syn: Synthetic) -> None:
    decoded = {o["index"]: o for o in decode_json(syn.pcap, syn.client_keys)["options"]}
    args = [tshark(), "-n", "-r", str(syn.pcap), "-X", f"lua_script:{DISSECTOR}", "-T", "fields"]
    done = subprocess.run(
        [*args, "-e", "frame.number", "-e", "_ws.col.Info"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    info = {int(n): text for n, text in (line.split("\t", 1) for line in done.stdout.splitlines())}
    for n, opt in decoded.items():
        if opt["format"] == "pdmv2-encrypted":
            assert info[n].endswith(f"[PDMv2 encrypted RN={opt['random_number']} F={opt['f']}]"), info[n]
        elif opt["format"] == "pdmv2-clear":
            assert f"[PDMv2 PSNTP={opt['psntp']} PSNLR={opt['psnlr']} GP={opt['global_pointer']} DTLR=" in info[n]
        else:
            assert "[PDMv2 malformed: " in info[n], info[n]
    assert "PDMv2" not in info[len(syn.frames)]  # the last frame has no option
