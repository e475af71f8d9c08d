"""The Ansible roles (pdmv2_keys, pdmv2_agent) through playbooks/site.yml, without Mininet.

One network namespace is the "secondary client"; ansible-playbook runs inside it with a local
connection, so every module and the agent it starts are in that namespace.  Directories are
temporary (the role's variables), so nothing of the machine's own /etc or /run is touched.
Converge, then idempotence (changed 0), then verify (modes, agent answering, reload on a new key),
then what must fail: a bad policy (the agent's own message, old policy kept) and a missing
required variable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import netns

REPO = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
PDMV2 = str(BIN / "pdmv2")
ADDR = "2001:db8:1::10"
RULES = [{"prefix": "fe80::/10", "mode": "pdmv2-clear"}, {"prefix": "2001:db8:2::/64", "mode": "pdmv2-encrypted"}]


class Node:
    """A namespace host, its temporary directories and its inventory."""

    def __init__(self, tb: netns.Testbed, tmp: Path) -> None:
        self.tmp = tmp
        self.host: netns.Host = tb.add_host("sc")
        self.conf, self.run, self.state = tmp / "etc", tmp / "run", tmp / "state"
        self.source = tmp / "primary"
        self.make_key("reg-1")

    def make_key(self, registration_id: str) -> None:
        """The key file the primary would push (made from a SharedSecret, as the agent tests do)."""
        shutil.rmtree(self.source, ignore_errors=True)
        netns.write_agent_config(
            self.source,
            side="client",
            policy="",
            client_addr=ADDR,
            client_prefix="2001:db8:1::/64",
            shared_secret=os.urandom(32),
            salt=os.urandom(32),
            registration_id=registration_id,
        )

    def inventory(self, **overrides: Any) -> Path:
        host_vars: dict[str, Any] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "pdmv2_keys_source": str(self.source / "keys" / "client.json"),
            "pdmv2_keys_dir": str(self.conf / "keys"),
            "pdmv2_keys_run_dir": str(self.run),
            "pdmv2_keys_pdmv2_bin": PDMV2,
            "pdmv2_agent_install_method": "none",
            "pdmv2_agent_bin": PDMV2,
            "pdmv2_agent_service_manager": "supervised",
            "pdmv2_agent_config_dir": str(self.conf),
            "pdmv2_agent_run_dir": str(self.run),
            "pdmv2_agent_state_dir": str(self.state),
            "pdmv2_agent_policy_rules": RULES,
        }
        for k, v in overrides.items():
            if v is None:
                host_vars.pop(k, None)
            else:
                host_vars[k] = v
        inv = {"all": {"children": {"secondary_clients": {"hosts": {"sc": host_vars}}}}}
        path = self.tmp / "inventory.json"
        path.write_text(json.dumps(inv))
        return path

    def play(self, **overrides: Any) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        """Run playbooks/site.yml in the namespace; the recap's counters for "sc" (ok, changed, failed...)."""
        env = {
            "PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.tmp),
            "ANSIBLE_LOCAL_TEMP": str(self.tmp / "ansible-local"),
            "ANSIBLE_REMOTE_TEMP": str(self.tmp / "ansible-remote"),
            "ANSIBLE_NOCOLOR": "1",
        }
        proc = self.host.popen(
            str(BIN / "ansible-playbook"),
            "-i",
            str(self.inventory(**overrides)),
            str(REPO / "playbooks" / "site.yml"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=str(REPO),
        )
        out, err = proc.communicate(timeout=240)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        recap = re.search(r"^sc\s+:\s+(.*)$", out, re.MULTILINE)
        stats = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", recap.group(1))} if recap else {}
        return done, stats

    def agent(self) -> dict[str, Any] | None:
        out = self.host.cmd(PDMV2, "stats", "--json", "--run", str(self.run), check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None


def failure_text(done: subprocess.CompletedProcess[str]) -> str:
    """The failed tasks' lines of the play's output (or all of it)."""
    lines = [ln for ln in done.stdout.splitlines() if "FAILED!" in ln or "ERROR!" in ln]
    return "\n".join(lines) or (done.stdout + done.stderr)[-3000:]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if shutil.which("start-stop-daemon") is None:
        pytest.skip("start-stop-daemon not installed (dpkg)")
    tb = netns.Testbed("pdmrole")
    try:
        yield Node(tb, tmp_path)
    finally:
        tb.close()  # kills every process in the namespace: the supervisor and the agent


def test_converge_idempotence_verify_and_reload_on_key_change(node: Node) -> None:
    first, stats = node.play()
    assert first.returncode == 0, failure_text(first)
    assert stats["changed"] >= 4 and stats["failed"] == 0  # dirs, key, policy, agent started

    again, stats = node.play()
    assert again.returncode == 0, failure_text(again)
    assert stats["changed"] == 0, again.stdout[-3000:]

    key = node.conf / "keys" / "client.json"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert oct((node.conf / "keys").stat().st_mode & 0o777) == "0o700"
    policy = (node.conf / "policy.yaml").read_text()
    assert "2001:db8:2::/64" in policy and "pdmv2-encrypted" in policy
    running = node.agent()
    assert running is not None, "the agent does not answer pdmv2 stats"
    assert "reg-1" in str(running["keys"])
    secret = json.loads(key.read_text())
    assert not any(str(v) in first.stdout for k, v in secret.items() if "secret" in k)  # no_log

    node.make_key("reg-2")  # the primary got a new key for this secondary
    changed, stats = node.play()
    assert changed.returncode == 0, failure_text(changed)
    assert stats["changed"] >= 2  # the key file and the reload handler
    after = node.agent()
    assert after is not None and after["pid"] == running["pid"]  # reloaded, not restarted
    assert "reg-2" in str(after["keys"])


def test_a_bad_policy_fails_with_the_agents_message_and_keeps_the_old_one(node: Node) -> None:
    ok, _ = node.play()
    assert ok.returncode == 0, failure_text(ok)
    before = (node.conf / "policy.yaml").read_text()
    bad, stats = node.play(pdmv2_agent_policy_rules=[{"prefix": "2001:db8:2::/64", "mode": "bogus"}])
    assert bad.returncode != 0 and stats["failed"] == 1
    text = failure_text(bad)
    assert "bogus" in text and "is not one of" in text, text  # the agent's own check said why
    assert (node.conf / "policy.yaml").read_text() == before
    assert node.agent() is not None


def test_required_variables_are_enforced(node: Node) -> None:
    missing, _ = node.play(pdmv2_agent_policy_rules=None)  # argument_specs: required, no default
    assert missing.returncode != 0
    assert "pdmv2_agent_policy_rules" in failure_text(missing)
    no_source, _ = node.play(pdmv2_keys_source=None)
    assert no_source.returncode != 0
    assert "pdmv2_keys_source" in failure_text(no_source)
    no_package, _ = node.play(pdmv2_agent_install_method="pip")
    assert no_package.returncode != 0
    assert "pdmv2_agent_package is required" in failure_text(no_package)


def test_the_systemd_unit_renders_and_systemd_accepts_it(tmp_path: Path) -> None:
    """The real-host path (no systemd runs in this machine's namespaces): the role's unit, rendered
    by Ansible from the role's own defaults and vars, is checked by `systemd-analyze verify`, which
    parses every directive (hardening included) and checks that ExecStart is an executable."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    role = REPO / "roles" / "pdmv2_agent"
    unit = tmp_path / "pdmv2-agent.service"
    env = {**os.environ, "HOME": str(tmp_path), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "al"), "ANSIBLE_NOCOLOR": "1"}
    render = subprocess.run(
        [
            str(BIN / "ansible"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "localhost",
            "-m",
            "ansible.builtin.template",
            "-a",
            f"src={role / 'templates' / 'pdmv2-agent.service.j2'} dest={unit}",
            "-e",
            f"@{role / 'defaults' / 'main.yml'}",
            "-e",
            f"@{role / 'vars' / 'main.yml'}",
            "-e",
            f"pdmv2_agent_bin={PDMV2} ansible_python_interpreter={sys.executable}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert render.returncode == 0, render.stdout[-2000:] + render.stderr[-2000:]
    text = unit.read_text()
    assert f"ExecStart={PDMV2} agent --config /etc/pdmv2" in text and "AF_PACKET" in text
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # Directives it cannot parse are warnings on stderr with exit status 0: none is allowed.
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
