"""Run inside a lab host: what ``pdmv2 stats --json`` prints, once per interval, one JSON line each.

    python -m lab.web.agentwatch /run/pdmv2 1.0

The web view starts one per secondary (through lab.control) instead of running ``pdmv2 stats``
every second: the same query of the agent's control socket, without a Python start-up (≈0.3 s
of CPU) per host per second.  It ends when its reader goes away (a closed pipe) or on SIGTERM.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m lab.web.agentwatch RUN_DIR INTERVAL_S", file=sys.stderr)
        return 2
    run_dir, interval = Path(argv[0]), max(0.2, float(argv[1]))
    from pdmv2.agent.daemon import query
    from pdmv2.core.errors import ConfigError

    while True:
        try:
            line = json.dumps({"stats": query(run_dir)})
        except ConfigError as exc:
            line = json.dumps({"error": str(exc)})
        try:
            print(line, flush=True)
        except BrokenPipeError:
            return 0
        time.sleep(interval)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
