"""Run inside a primary (PC or PS): deploy keys and agents to its secondaries with playbooks/site.yml.

    python -m lab.ansible_push INVENTORY.json

The inventory is the one the lab daemon wrote into the primary's private /var/lib/pdmv2 (the same
shape as playbooks/inventory.example.yml, with the lab's settings: no install, supervised agents).
Progress goes to stderr, one line per task and host (secrets never reach it: the tasks that touch
them are no_log); stdout gets "host-done NAME" when a host's agent runs, then one summary line.
Exit status 0 when the play succeeded.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ansible_runner

REPO = Path(__file__).resolve().parent.parent
PLAYBOOK = REPO / "playbooks" / "site.yml"
# The last task of playbooks/site.yml for a host (roles/pdmv2_agent/tasks/supervised.yml).
LAST_TASK = "Start the supervised agent unless it is running"
# Hosts worked on at once by each primary (two primaries share the machine's cores).
FORKS = int(os.environ.get("PDMV2_LAB_FORKS", "25"))


def _strategy() -> dict[str, str]:
    """Mitogen's free strategy when it is installed (one persistent interpreter per host), else free."""
    try:
        import ansible_mitogen
    except ImportError:
        return {"ANSIBLE_STRATEGY": "free"}
    plugins = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"
    return {"ANSIBLE_STRATEGY_PLUGINS": str(plugins), "ANSIBLE_STRATEGY": "mitogen_free"}


def _hosts(inventory: dict[str, Any]) -> list[str]:
    return [h for group in inventory["all"].get("children", {}).values() for h in group.get("hosts", {})]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    # ansible-runner looks ansible-playbook up on PATH: make it this venv's.
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    inventory = json.loads(Path(sys.argv[1]).read_text())
    hosts = _hosts(inventory)
    counts = {"ok": 0, "changed": 0, "failed": 0}

    def on_event(event: dict[str, Any]) -> bool:
        data = event.get("event_data", {})
        kind = event.get("event")
        if kind in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            status = "failed" if kind != "runner_on_ok" else ("changed" if data.get("res", {}).get("changed") else "ok")
            counts[status] += 1
            print(
                f"{time.strftime('%H:%M:%S')} {data.get('host')}: {data.get('task')}: {status}",
                file=sys.stderr,
                flush=True,
            )
            if kind != "runner_on_ok":  # why (tasks that touch secrets are no_log: their message is censored)
                res = data.get("res", {})
                why = res.get("msg") or res.get("stderr") or ""
                print(f"    {str(why)[-600:]}", file=sys.stderr, flush=True)
            if kind == "runner_on_ok" and data.get("task") == LAST_TASK:
                print(f"host-done {data.get('host')}", flush=True)
        return True

    with tempfile.TemporaryDirectory(dir="/var/lib/pdmv2") as tmp:
        result = ansible_runner.run(
            private_data_dir=tmp,
            playbook=str(PLAYBOOK),
            inventory=inventory,
            quiet=True,
            envvars={
                "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
                "ANSIBLE_HOST_KEY_CHECKING": "True",
                "ANSIBLE_TIMEOUT": "60",
                "ANSIBLE_TASK_TIMEOUT": "300",
                "ANSIBLE_FORKS": str(max(5, min(FORKS, len(hosts)))),
                **_strategy(),
                "ANSIBLE_SSH_CONTROL_PATH_DIR": "/root/.ansible/cp",
                "ANSIBLE_PIPELINING": "True",
                "ANSIBLE_LOCAL_TEMP": f"{tmp}/local",
                "ANSIBLE_REMOTE_TEMP": "/var/lib/pdmv2/ansible-tmp",
            },
            event_handler=on_event,
        )
        if result.status != "successful":
            # The play's own output (tasks that touch secrets are no_log): what went wrong.
            print(result.stdout.read()[-3000:], file=sys.stderr)
    print(f"{result.status}: ok {counts['ok']}, changed {counts['changed']}, failed {counts['failed']}")
    return 0 if result.status == "successful" and result.rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
