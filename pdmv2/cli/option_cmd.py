"""``pdmv2 option decode HEX``: print the fields of one PDM/PDMv2 option."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from ..core.errors import DecodeError
from ..core.option import PdmOption, Pdmv2ClearOption, Pdmv2EncryptedOption, decode_option
from ..core.timing import decode_delta_ns


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``option`` and its subcommands."""
    p = sub.add_parser("option", help="decode PDM / PDMv2 options", description="Work on single options.")
    osub = p.add_subparsers(dest="option_command", metavar="ACTION", required=True)
    d = osub.add_parser(
        "decode",
        help="print the fields of one option given in hex",
        description="Decode one whole option (Option Type octet first) given in hex. "
        "Exit status 2 and the typed error on malformed input.",
    )
    d.add_argument("hex", help="the option in hex, e.g. 0f0a... (spaces and colons allowed)")
    d.add_argument("--json", action="store_true", help="print JSON instead of a table")
    d.set_defaults(func=_decode)


def option_to_dict(opt: PdmOption | Pdmv2ClearOption | Pdmv2EncryptedOption) -> dict[str, Any]:
    """A JSON-ready view of a decoded option, deltas also in nanoseconds."""
    if isinstance(opt, PdmOption):
        out: dict[str, Any] = {"format": "pdm", **dataclasses.asdict(opt)}
        fields: Any = opt
    elif isinstance(opt, Pdmv2ClearOption):
        out = {
            "format": "pdmv2-clear",
            "random_number": opt.random_number,
            "f": opt.f,
            **dataclasses.asdict(opt.fields),
        }
        fields = opt.fields
    else:
        return {"format": "pdmv2-encrypted", "random_number": opt.random_number, "f": opt.f, "sealed": opt.sealed.hex()}
    out["delta_tlr_ns"] = decode_delta_ns(fields.delta_tlr, fields.scale_dtlr)
    out["delta_tls_ns"] = decode_delta_ns(fields.delta_tls, fields.scale_dtls)
    return out


def _decode(args: argparse.Namespace) -> int:
    text = "".join(args.hex.replace(":", "").split())
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise DecodeError("hex", 0, "not a hexadecimal string") from None
    view = option_to_dict(decode_option(data))
    if args.json:
        print(json.dumps(view))
    else:
        width = max(len(k) for k in view)
        for key, value in view.items():
            print(f"{key:<{width}}  {value}")
    return 0
