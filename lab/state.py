"""The lab's state file (an edge): what a running lab is made of, so anything can find or remove it."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["LAB_DIR", "STATE", "load", "save", "alive"]

LAB_DIR = Path(os.environ.get("PDMV2_LAB_DIR", "/var/lib/pdmv2-lab"))
STATE = LAB_DIR / "state.json"


def load() -> dict[str, Any] | None:
    """The state of the lab, or None when no lab is recorded."""
    try:
        doc: dict[str, Any] = json.loads(STATE.read_text())
        return doc
    except FileNotFoundError:
        return None
    except ValueError:
        return {"broken": True}


def save(state: dict[str, Any]) -> None:
    """Write the state atomically."""
    LAB_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = STATE.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer: no clash
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, STATE)


def alive(pid: int | None) -> bool:
    """True if a process with that pid exists."""
    if not pid:
        return False
    try:  # reap it if it is our own child (the demo starts the daemon itself), so a zombie is not "alive"
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
            return False
    except OSError:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
