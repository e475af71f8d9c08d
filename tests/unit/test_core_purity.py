"""The protocol core imports no socket, subprocess, clock, thread or mininet (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = [
    "option",
    "doh",
    "timing",
    "prseq",
    "keys",
    "crypto",
    "flow",
    "metrics",
    "keyring",
    "errors",
    "regmsg",
    "registration",
    "policy",
    "packetproc",
    "config",
]
FORBIDDEN = {"socket", "subprocess", "time", "threading", "asyncio", "mininet", "select", "os", "signal"}
ROOT = Path(__file__).parent.parent.parent / "pdmv2"


@pytest.mark.parametrize("name", CORE)
def test_core_module_is_pure(name: str) -> None:
    path = ROOT / f"{name}.py"
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"{name}.py imports {imported & FORBIDDEN}"
