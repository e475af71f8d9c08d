"""``pdmv2``: one subcommand table; every subcommand is listed and has --help."""

from __future__ import annotations

import argparse

import pytest

from pdmv2.cli.main import build_parser, main

COMMANDS = [
    "option",
    "wireshark",
    "keygen",
    "primary-server",
    "register",
    "secrets",
    "agent",
    "stats",
    "reload",
    "decode",
]


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


def test_every_subcommand_is_registered_in_help_order() -> None:
    assert subcommands(build_parser()) == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert f"pdmv2 {command}" in capsys.readouterr().out


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2 and "COMMAND" in capsys.readouterr().err
