"""A bare NFQUEUE accept loop (the ceiling of the transport), for the agent benchmark.

python bench/nfq_accept.py QUEUE     -> on SIGTERM prints "packets N"
"""

from __future__ import annotations

import signal
import sys

from pdmv2.agent.nfq import open_queue

count = 0


def accept(pkt) -> None:  # type: ignore[no-untyped-def]
    global count
    count += 1
    pkt.accept()


nfq = open_queue(int(sys.argv[1]), accept)
signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
print("ready", flush=True)
try:
    nfq.run()
except KeyboardInterrupt:
    pass
finally:
    nfq.unbind()
print(f"packets {count}", flush=True)
