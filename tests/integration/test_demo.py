"""The walkthrough runs, registers for real, and shows the numbers it promises."""

from __future__ import annotations

import pytest

from pdmv2.demo import main


def test_demo_walkthrough(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--packets", "3"]) == 0
    out = capsys.readouterr().out
    assert "PS confirmation OK" in out
    assert out.count("server_delay 5.000 ms") == 3 and "rtt 2.000 ms" in out
    assert "AuthenticationError" in out and "accepted" not in out
    assert "link-local GP 1" in out
