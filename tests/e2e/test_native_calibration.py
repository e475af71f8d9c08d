"""The native path's transmit calibration on real kernel traffic (a — m — b, tests/e2e/topo.py)."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.e2e.test_agent import APPS, wait_line
from tests.e2e.topo import PY, AgentTopo, B


def test_native_path_calibrates_its_transmit_time_on_its_own_packets(
    topo: AgentTopo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tap (AF_PACKET, outgoing, kernel-stamped) sees the agent's own encrypted packets leave;
    the native path learns how long after its clock read that is, and adds it to egress times."""
    from pdmv2.native import AVAILABLE, UNAVAILABLE_REASON

    if not AVAILABLE:
        pytest.skip(UNAVAILABLE_REASON)
    monkeypatch.setenv("PDMV2_DATAPATH", "native")
    topo.start_agent("a")
    topo.start_agent("b")
    echo = topo.tb.spawn(topo.b, PY, APPS, "udp-echo", "5001", "0", stdout=subprocess.PIPE)
    wait_line(echo, "ready")
    assert topo.a.cmd(PY, APPS, "udp-client", B, "5001", "30", "20").stdout.strip() == "replies 30"
    time.sleep(0.3)
    for name in ("a", "b"):
        tx = topo.stats(name)["native"]["tx_compensation"]
        assert tx["on"] and tx["samples"] >= 20, (name, tx)
        assert 0 < tx["cold_us"] <= 500 and 0 <= tx["warm_us"] <= 500, (name, tx)
