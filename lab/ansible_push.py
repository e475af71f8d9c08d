"""Run inside a primary (PC or PS): push its secondaries' key files with Ansible through ansible-runner.

    python -m lab.ansible_push client|server PRIMARY_NAME '[{"name": "sc1", "address": "2001:db8:1::11"}]'

The event stream is shown as progress (one line per task and host); secrets never reach it
(the tasks that touch them are no_log).  Exit status 0 when the play succeeded.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import ansible_runner

REPO = Path(__file__).resolve().parent.parent
PLAYBOOK = REPO / "lab" / "playbooks" / "push_keys.yml"


def main() -> int:
    # ansible-runner looks ansible-playbook up on PATH: make it this venv's.
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    side, primary, hosts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    src_dir = "/var/lib/pdmv2/pc/secondaries" if side == "client" else "/var/lib/pdmv2/ps/secondaries"
    inventory: dict[str, Any] = {
        "all": {
            "hosts": {},
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": "/root/.ssh/id_ed25519",
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_ssh_common_args": "-o UserKnownHostsFile=/root/.ssh/known_hosts -o StrictHostKeyChecking=yes",
                "pdmv2_keys_pdmv2_bin": str(Path(sys.executable).parent / "pdmv2"),
            },
        }
    }
    for h in hosts:
        src = f"{src_dir}/{h['address'].replace(':', '_')}.json" if side == "client" else f"{src_dir}/server.json"
        inventory["all"]["hosts"][h["name"]] = {
            "ansible_host": h["address"],
            "pdmv2_keys_source": src,
            "pdmv2_keys_name": f"{side}.json",
        }
    counts = {"ok": 0, "changed": 0, "failed": 0}

    def on_event(event: dict[str, Any]) -> bool:
        data = event.get("event_data", {})
        kind = event.get("event")
        if kind in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            status = "failed" if kind != "runner_on_ok" else ("changed" if data.get("res", {}).get("changed") else "ok")
            counts[status if status in counts else "failed"] += 1
            print(f"  {primary} ansible: {data.get('host')}: {data.get('task')}: {status}", file=sys.stderr, flush=True)
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
                "ANSIBLE_TIMEOUT": "10",
                "ANSIBLE_TASK_TIMEOUT": "300",
                "ANSIBLE_FORKS": str(max(5, min(20, len(hosts)))),
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
