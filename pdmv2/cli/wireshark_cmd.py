"""``pdmv2 wireshark path`` and ``pdmv2 wireshark install``: the Lua dissector for Wireshark/tshark."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from ..core.errors import ConfigError
from ..wireshark import DISSECTOR, personal_plugins_dir


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``wireshark`` and its actions."""
    p = sub.add_parser(
        "wireshark",
        help="the PDMv2 dissector for Wireshark and tshark",
        description="The Lua dissector that shows PDMv2 options (pdmv2.* fields) in Wireshark and "
        "tshark 4.0. Use it once with: tshark -X lua_script:$(pdmv2 wireshark path) -r CAPTURE, "
        "or install it for every run. See docs/wireshark.md.",
    )
    wsub = p.add_subparsers(dest="wireshark_command", metavar="ACTION", required=True)
    path = wsub.add_parser(
        "path",
        help="print the dissector file's absolute path",
        description="Print the absolute path of the Lua dissector shipped with this package.",
    )
    path.set_defaults(func=_path)
    inst = wsub.add_parser(
        "install",
        help="copy the dissector into your personal Lua plugins folder",
        description="Copy the dissector into Wireshark's personal Lua plugins folder (as tshark -G "
        "folders reports it; ~/.local/lib/wireshark/plugins without tshark) and say where. "
        "Wireshark and tshark then load it on every start.",
    )
    inst.add_argument("--dir", type=Path, help="install into this folder instead")
    inst.set_defaults(func=_install)


def _dissector() -> Path:
    if not DISSECTOR.is_file():
        raise ConfigError(str(DISSECTOR), "dissector", "missing from this installation of pdmv2")
    return DISSECTOR


def _path(args: argparse.Namespace) -> int:
    print(_dissector())
    return 0


def _tshark_folders() -> str | None:
    """``tshark -G folders``, or None when tshark is not installed or fails."""
    tshark = shutil.which("tshark")
    if tshark is None:
        return None
    try:
        done = subprocess.run(  # noqa: S603  (a fixed argument list, no shell)
            [tshark, "-G", "folders"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _install(args: argparse.Namespace) -> int:
    src = _dissector()
    folder = args.dir if args.dir is not None else personal_plugins_dir(_tshark_folders(), Path.home())
    dest = folder / src.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if dest.is_file() and dest.read_bytes() == src.read_bytes():
            print(f"{dest} is already up to date")
            return 0
        shutil.copyfile(src, dest)
        dest.chmod(0o644)
    except OSError as exc:
        raise ConfigError(str(dest), "install", exc.strerror or "cannot write") from None
    print(f"installed {dest}")
    print("Wireshark and tshark load it at start: restart Wireshark, or check with `tshark -G protocols | grep pdmv2`")
    return 0
