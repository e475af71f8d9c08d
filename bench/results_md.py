"""bench/results.md: each benchmark owns one marked section and rewrites only that one."""

from __future__ import annotations

import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results.md"


def write_section(name: str, text: str, results: Path = RESULTS) -> None:
    """Replace the ``name`` section of ``results`` with ``text`` (appended when it is not there yet)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    old = results.read_text() if results.exists() else "# Benchmark results\n"
    stamp = f"_measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on this machine_\n"
    block = f"{start}\n{text.rstrip()}\n\n{stamp}{end}"
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    results.write_text(new)
