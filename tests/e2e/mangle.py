"""A hostile middle box for the e2e tests (runs on the router m): flip an octet, or drop at the flip.

    python tests/e2e/mangle.py QUEUE flip        # change one octet of every PDM option it forwards
    python tests/e2e/mangle.py QUEUE drop-flip   # drop the first packet of each new F value per flow

Stops on SIGTERM.  Prints one line per packet it changed, for the test to count.
"""

from __future__ import annotations

import sys

from pdmv2.agent.nfq import serve_until_sigterm
from pdmv2.core.doh import parse_packet

queue, mode = int(sys.argv[1]), sys.argv[2]
if mode not in ("flip", "drop-flip"):
    sys.exit(f"mangle.py: unknown mode {mode!r} (flip | drop-flip)")
last_f: dict[tuple[bytes, bytes], int] = {}


def handle(pkt) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(pkt.get_payload())
    try:
        info = parse_packet(bytes(data))
    except Exception:
        pkt.accept()
        return
    if info.pdm_offset is None or info.pdm_option is None or len(info.pdm_option) != 36:
        pkt.accept()
        return
    if mode == "flip":
        data[info.pdm_offset + 20] ^= 0x40  # inside the ciphertext
        pkt.set_payload(bytes(data))
        print("flipped", flush=True)
        pkt.accept()
        return
    if mode == "drop-flip":
        key = (info.flow.src, info.flow.dst)
        f = info.pdm_option[5] & 1
        if key in last_f and last_f[key] != f:
            last_f[key] = f
            print("dropped", flush=True)
            pkt.drop()
            return
        last_f[key] = f
    pkt.accept()


serve_until_sigterm(queue, handle)
