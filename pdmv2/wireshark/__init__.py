"""The Wireshark/tshark Lua dissector for PDMv2, shipped as package data (docs/wireshark.md)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DISSECTOR", "personal_plugins_dir"]

DISSECTOR = Path(__file__).resolve().parent / "pdmv2.lua"
"""Absolute path of the dissector file."""


def personal_plugins_dir(tshark_folders: str | None, home: Path) -> Path:
    """The personal Lua plugins folder: from ``tshark -G folders`` output if given, else Wireshark's default.

    Wireshark 4.0 on Linux reads personal Lua plugins from ``~/.local/lib/wireshark/plugins``.
    """
    for line in (tshark_folders or "").splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == "Personal Lua Plugins" and value.strip():
            return Path(value.strip())
    return home / ".local" / "lib" / "wireshark" / "plugins"
