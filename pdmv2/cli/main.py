"""``pdmv2``: entry point and subcommand table.

Every subcommand turns a PdmError into one line on stderr and exit status 2; nothing prints a
traceback to the user.  ``PDMV2_DEBUG=1`` shows tracebacks of unexpected errors for developers.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from ..core.errors import PdmError
from . import agent_cmd, option_cmd, registration_cmd, wireshark_cmd

EXIT_ERROR = 2
EXIT_INTERNAL = 70

Register = Callable[[argparse._SubParsersAction], None]  # type: ignore[type-arg]

# In the order `pdmv2 --help` lists them.
_SUBCOMMANDS: list[Register] = [
    option_cmd.register,
    wireshark_cmd.register,
    registration_cmd.register_commands,
    agent_cmd.register_commands,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the whole command."""
    parser = argparse.ArgumentParser(
        prog="pdmv2",
        description="IPv6 PDMv2 (draft-ietf-ippm-encrypted-pdmv2-03): codec, registration and tools.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _SUBCOMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PdmError as exc:
        print(f"pdmv2 {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"pdmv2 {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one line, not a traceback
        if os.environ.get("PDMV2_DEBUG"):
            raise
        print(
            f"pdmv2 {args.command}: internal error: {type(exc).__name__} (set PDMV2_DEBUG=1 for details)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
