"""A bare NFQUEUE accept loop (the ceiling of the transport), for the agent benchmark.

python bench/nfq_accept.py QUEUE     -> on SIGTERM prints "packets N"
"""

from __future__ import annotations

import sys

from pdmv2.agent.nfq import serve_until_sigterm

count = 0


def accept(pkt) -> None:  # type: ignore[no-untyped-def]
    global count
    count += 1
    pkt.accept()


serve_until_sigterm(int(sys.argv[1]), accept)
print(f"packets {count}", flush=True)
