"""The protocol core (the folder pdmv2/core) does no I/O and reaches no edge.

Every module in the folder is checked, whatever its name: absolute imports must not name an I/O
module, and relative imports are resolved, so ``from ..regnet import x`` (an edge) fails too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE_DIR = Path(__file__).parent.parent.parent / "pdmv2" / "core"
CORE_PACKAGE = "pdmv2.core"
# Modules that open sockets or files, start processes or threads, read clocks or signal.
FORBIDDEN = {
    "asyncio",
    "io",
    "mininet",
    "os",
    "pathlib",
    "select",
    "shutil",
    "signal",
    "socket",
    "subprocess",
    "tempfile",
    "threading",
    "time",
    "netfilterqueue",
    "scapy",
}
MODULES = sorted(CORE_DIR.glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, relative imports resolved against the core package."""
    package = CORE_PACKAGE.split(".")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.add(node.module or "")
                continue
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                found.add(".".join([*base, node.module]))
            else:  # from . import x, y
                found |= {".".join([*base, alias.name]) for alias in node.names}
    return found


def violations(path: Path) -> set[str]:
    bad = set()
    for name in imported_modules(path):
        top = name.split(".")[0]
        if top in FORBIDDEN:
            bad.add(name)
        elif top == "pdmv2" and not (name == CORE_PACKAGE or name.startswith(CORE_PACKAGE + ".")):
            bad.add(name)
    return bad


def test_the_core_folder_is_not_empty() -> None:
    names = {p.stem for p in MODULES}
    assert {"option", "doh", "flow", "keys", "crypto", "packetproc", "registration"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_core_module_is_pure(path: Path) -> None:
    assert not violations(path), f"{path.name} imports {violations(path)}"


def test_the_check_catches_an_edge_reached_by_a_relative_import(tmp_path: Path) -> None:
    for text in (
        "from ..regnet import PrimaryServer\n",
        "from .. import capture\n",
        "import time\n",
        "from os import path\n",
        "from ..agent.daemon import Agent\n",
    ):
        probe = tmp_path / "probe.py"
        probe.write_text(text)
        assert violations(probe), text
    ok = tmp_path / "ok.py"
    ok.write_text("from .errors import DecodeError\nfrom . import option\nimport struct\n")
    assert not violations(ok)
