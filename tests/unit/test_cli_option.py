"""``pdmv2 option decode``: fields on success, typed error and exit 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pdmv2 import PdmOption, encode_option
from pdmv2.cli.main import main


def test_decode_prints_fields(capsys: pytest.CaptureFixture[str]) -> None:
    raw = encode_option(PdmOption(14, 44, 0x1234, 7, 0xEE6B, 0xDE0B)).hex()
    assert main(["option", "decode", "--json", raw]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "pdm" and out["psntp"] == 0x1234 and out["psnlr"] == 7
    assert abs(out["delta_tlr_ns"] - 1.0) < 1e-4 and abs(out["delta_tls_ns"] - 1e9) < 1e9 * 2**-15


@pytest.mark.parametrize(
    ("arg", "text"), [("0f0a00", "option_length"), ("zz", "hex"), ("0f121000" + "00" * 16, "version")]
)
def test_decode_errors_exit_2(arg: str, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["option", "decode", arg]) == 2
    err = capsys.readouterr().err
    assert "DecodeError" in err and text in err and "Traceback" not in err


def test_console_script_help_and_error() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pdmv2.cli.main", "option", "decode", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0 and "hex" in run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "pdmv2.cli.main", "option", "decode", "0f"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "option_length" in bad.stderr
