"""Key files on disk (an edge): a keys directory read into one keyring, 0600 enforced."""

from __future__ import annotations

from pathlib import Path

from .core.errors import ConfigError
from .core.keyring import CombinedKeyring, KeyProvider, parse_key_file
from .regstore import read_text

__all__ = ["load_keys"]


def load_keys(keys_dir: Path) -> KeyProvider | None:
    """Every *.json key file in the directory (0600 enforced), or None when there is none."""
    if not keys_dir.exists():
        return None
    rings = []
    for path in sorted(keys_dir.glob("*.json")):
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(str(path), "mode", f"is {mode:04o}; key files must be 0600")
        rings.append(parse_key_file(read_text(path, "key file"), str(path)))
    if not rings:
        return None
    return CombinedKeyring(rings) if len(rings) > 1 else rings[0]
