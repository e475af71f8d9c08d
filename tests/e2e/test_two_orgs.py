"""Two organisations in one lab (topologies/two-orgs.yaml): each PC/PS pair registers on its own,
each organisation's keys open only its own flows, a flow between organisations is handled as the
policy says (no rule for the other organisation: no option), and the observer on the shared WAN
sees only ciphertext."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import control
from lab import state as labstate
from pdmv2.capture import decode_capture
from tests.e2e.labtest import capture, keys_of, lab, lab_up, skip_unless_a_lab_can_start, stats

SCA1, SSA1 = "2001:db8:a1::11", "2001:db8:a2::11"
SCB1, SSB1 = "2001:db8:b1::11", "2001:db8:b2::11"


@pytest.fixture(scope="module")
def up() -> Iterator[dict]:
    skip_unless_a_lab_can_start()
    try:
        with lab_up("--topo", "two-orgs", timeout=400) as state:
            yield state
    finally:
        assert labstate.load() is None


def wan_capture(tmp: Path, *pings: tuple[str, str]) -> Path:
    """The observer's capture of the WAN while each (host, destination) pings 4 times."""
    pcap = tmp / "wan.pcap"
    cap = capture("obs", pcap)
    try:
        for host, dst in pings:
            assert control.host(host).run("ping", "-6", "-c", "4", "-i", "0.2", dst).returncode == 0, (host, dst)
    finally:
        dropped = cap.stop(settle_s=0.3)
    assert dropped == 0, "the observer's capture dropped packets"
    return pcap


def test_each_organisation_registered_with_its_own_primary(up: dict) -> None:
    assert up["ready"]
    fps = up["fingerprints"]
    assert set(fps) == {"pca", "psa", "pcb", "psb"} and len(set(fps.values())) == 4
    steps = "\n".join(up["steps"])
    assert "registered pca with psa" in steps and "registered pcb with psb" in steps
    assert {k: v["done"] for k, v in up["push"].items()} == {"pca": 2, "psa": 2, "pcb": 2, "psb": 2}
    assert lab("status").stdout.count("keys loaded") == 8
    # one primary server per PS, each with only its own PC allowed
    for ps, pc in (("psa", "pca"), ("psb", "pcb")):
        allow = control.host(ps).run("cat", "/etc/pdmv2/allow.yaml").stdout
        assert f"name: {pc}" in allow and fps[pc] in allow
        other = "pcb" if pc == "pca" else "pca"
        assert other not in allow and fps[other] not in allow


def test_each_organisations_keys_open_only_its_own_flows(up: dict, tmp_path: Path) -> None:
    pcap = wan_capture(tmp_path, ("sca1", SSA1), ("scb1", SSB1))
    for server, mine, theirs in (("ssa1", SCA1, SCB1), ("ssb1", SCB1, SCA1)):
        opts = decode_capture(pcap, keys_of(server, tmp_path)).options
        own = [o for o in opts if mine in (o.src, o.dst)]
        other = [o for o in opts if theirs in (o.src, o.dst)]
        assert len(own) == 8 and all(o.status == "opened" for o in own), (server, [o.status for o in own])
        assert len(other) == 8 and all(o.status != "opened" and o.psntp is None for o in other), server


def test_cross_organisation_flow_carries_no_option_as_the_policy_says(up: dict, tmp_path: Path) -> None:
    # sca1's policy encrypts towards its own organisation's server site only; the default is off.
    policy = control.host("sca1").run("cat", "/etc/pdmv2/policy.yaml").stdout
    assert "2001:db8:a2::/64" in policy and "2001:db8:b2::/64" not in policy
    before_sc, before_ss = stats("sca1")["counters"], stats("ssb1")["counters"]
    pcap = wan_capture(tmp_path, ("sca1", SSB1))
    after_sc, after_ss = stats("sca1")["counters"], stats("ssb1")["counters"]
    cross = [o for o in decode_capture(pcap, None).options if SCA1 in (o.src, o.dst)]
    assert cross == []  # the traffic flowed (ping succeeded) with no PDM option either way
    assert after_sc.get("egress_inserted", 0) == before_sc.get("egress_inserted", 0)
    assert after_sc.get("egress_off", 0) >= before_sc.get("egress_off", 0) + 4
    assert after_ss.get("ingress_auth_failed", 0) == before_ss.get("ingress_auth_failed", 0)


def test_observer_on_the_shared_wan_sees_only_ciphertext(up: dict, tmp_path: Path) -> None:
    pcap = wan_capture(tmp_path, ("sca2", "2001:db8:a2::12"), ("scb2", "2001:db8:b2::12"))
    opts = [o for o in decode_capture(pcap, None).options if not o.src.startswith("fe80")]
    assert len(opts) == 16
    assert all(o.format == "pdmv2-encrypted" and o.status == "encrypted" and o.psntp is None for o in opts)
