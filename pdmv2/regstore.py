"""Secret files on disk (an edge): atomic 0600 writes, and the registration lists of both primaries.

A registration file holds every registration with one peer that has not expired, newest first.
Registering again rotates: the new one goes first and every older one expires no later than
``overlap`` seconds from now (issue #4: the old secret stays valid for a configurable overlap).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .core.errors import ConfigError
from .core.registration import Registration

__all__ = ["write_secret_file", "read_text", "load_registrations", "store_registration", "current_registration"]

REGISTRATIONS_TYPE = "pdmv2-registrations"


def write_secret_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (created so, never widened)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_text(path: Path, what: str) -> str:
    """The file's text, or a ConfigError that says what is missing or unreadable."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), what, "file not found") from None
    except PermissionError:
        raise ConfigError(str(path), what, "permission denied") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), what, f"cannot read ({type(exc).__name__})") from None


def load_registrations(path: Path) -> list[Registration]:
    """All registrations in the file, newest first ([] if the file does not exist)."""
    if not Path(path).exists():
        return []
    text = read_text(path, "registrations")
    try:
        doc: Any = json.loads(text)
    except ValueError:
        raise ConfigError(str(path), "json", "not valid JSON") from None
    if (
        not isinstance(doc, dict)
        or doc.get("type") != REGISTRATIONS_TYPE
        or not isinstance(doc.get("registrations"), list)
    ):
        raise ConfigError(str(path), "type", "not a pdmv2 registrations file")
    return [Registration.from_dict(r, f"{path} registrations[{i}]") for i, r in enumerate(doc["registrations"])]


def store_registration(path: Path, reg: Registration, *, now: int, overlap: int) -> list[Registration]:
    """Put ``reg`` first, cut the older ones to ``now + overlap``, drop the expired; returns the list."""
    kept = [reg]
    for old in load_registrations(path):
        expires = min(old.expires, now + overlap)
        if expires > now and old.registration_id != reg.registration_id:
            kept.append(dataclasses.replace(old, expires=expires))
    doc = {"type": REGISTRATIONS_TYPE, "version": 1, "registrations": [r.to_dict() for r in kept]}
    write_secret_file(path, json.dumps(doc, indent=2) + "\n")
    return kept


def current_registration(path: Path, *, now: int) -> Registration:
    """The newest registration that has not expired."""
    for reg in load_registrations(path):
        if reg.expires > now:
            return reg
    raise ConfigError(str(path), "registrations", "no registration that is still valid (run pdmv2 register)")
