"""The lab daemon (an edge): builds the topology with Mininet, runs every service, waits, tears down.

``python -m lab serve`` runs it in the background (``lab up`` starts it and waits for "ready");
SIGTERM makes it stop everything it started and remove every bridge, link and namespace (Mininet's
own net.stop(), never ``mn -c``).  Progress and the final table go to the state file and the log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lab import control
from lab import state as labstate
from lab.control import ControlError, LabHost, kill_namespace_processes
from lab.topology import Node, Topology
from pdmv2.core.prseq import PRSEQ_PERIOD
from pdmv2.regnet import DEFAULT_PORT

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PDMV2 = str(VENV_BIN / "pdmv2")
PRIVATE_DIRS = ["/etc/pdmv2", "/run/pdmv2", "/var/lib/pdmv2", "/root/.ssh", "/root/.ansible", "/run/sshd"]
INVENTORY = "/var/lib/pdmv2/lab-inventory.json"  # in each primary's private /var/lib/pdmv2
SSHD_CONFIG = """Port 22
ListenAddress ::
HostKey /etc/pdmv2/ssh/host_ed25519
PidFile /run/pdmv2/sshd.pid
AuthorizedKeysFile /etc/pdmv2/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
AcceptEnv LANG
Subsystem sftp internal-sftp
"""


class _Stop(Exception):
    """SIGTERM/SIGINT: stop the lab."""


class LabError(ControlError):
    """A step of the lab that failed, with what to look at."""


class LabDaemon:
    """One running lab."""

    def __init__(self, topo: Topology, *, rotate_after: int = PRSEQ_PERIOD) -> None:
        self.topo = topo
        self.rotate_after = rotate_after
        self.net: Any = None
        self.hosts: dict[str, Any] = {}
        self.lab_hosts: dict[str, LabHost] = {}
        self.procs: dict[str, list[int]] = {}
        self.state: dict[str, Any] = {
            "topology": topo.name,
            "daemon_pid": os.getpid(),
            "ready": False,
            "started": time.time(),
            "steps": [],
            "hosts": {},
            "bridges": [],
            "fingerprints": {},
        }
        self._stop = False
        self._lock = threading.Lock()

    # -- helpers -----------------------------------------------------------------------------------

    def step(self, text: str) -> None:
        """Record and print one step of the progress."""
        elapsed = time.time() - self.state["started"]
        with self._lock:
            self.state["steps"].append(f"[{elapsed:6.1f}s] {text}")
            labstate.save(self.state)
        print(f"[{elapsed:6.1f}s] {text}", flush=True)

    def save(self) -> None:
        """Save the state (threads share it: one writer at a time)."""
        with self._lock:
            labstate.save(self.state)

    def run(
        self, host: str, *argv: str, input_text: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside a host (its network and mount namespaces) and wait."""
        return self.lab_hosts[host].run(*argv, input_text=input_text, check=check, timeout=timeout)

    def spawn(self, host: str, name: str, *argv: str) -> int:
        """Start a long-running process in a host; its output goes to LAB_DIR/logs/<host>-<name>.log."""
        logdir = labstate.LAB_DIR / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        with open(logdir / f"{host}-{name}.log", "ab") as log:
            proc = self.lab_hosts[host].popen(
                *argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.procs.setdefault(host, []).append(proc.pid)
        self.state["hosts"][host]["procs"] = self.procs[host]
        return proc.pid

    def write(self, host: str, path: str, text: str, mode: str = "0600") -> None:
        """Write a file inside a host's private directories."""
        self.lab_hosts[host].write(path, text, mode)

    def wait_for(self, what: str, check: Any, timeout: float = 20.0) -> None:
        """Poll until check() is true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.05)
        raise LabError(f"timed out waiting for {what}")

    # -- build -------------------------------------------------------------------------------------

    def build(self) -> None:
        """Mininet: hosts with private directories, Linux bridges, veth links; IPv6 only."""
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.nodelib import LinuxBridge

        from lab.nodes import PdmHost, PdmRouter

        setLogLevel("warning")
        net = Mininet(
            topo=None, build=False, controller=None, autoSetMacs=False, autoStaticArp=False, waitConnected=False
        )
        self.net = net
        switches = {}
        for i, n in enumerate(self.topo.nodes, start=1):
            if n.kind == "bridge":
                switches[n.name] = net.addSwitch(f"pdm{n.name}", cls=LinuxBridge, dpid=f"{i:016x}", stp=False)
            else:
                cls = PdmRouter if n.kind == "router" else PdmHost
                self.hosts[n.name] = net.addHost(n.name, cls=cls, ip=None, privateDirs=PRIVATE_DIRS, pdm_node=n)
        for link in self.topo.links:
            ends = []
            for node, ifname in (link.a, link.b):
                if node in switches:
                    ends.append((switches[node], f"pdm{node}-{ifname}"))
                else:
                    ends.append((self.hosts[node], ifname))
            net.addLink(ends[0][0], ends[1][0], intfName1=ends[0][1], intfName2=ends[1][1])
        net.build()  # each host's config() sets its addresses and routes (lab/nodes.py)
        self.lab_hosts = {name: LabHost(name, h.pid) for name, h in self.hosts.items()}
        for sw in switches.values():
            sw.start([])
        self.state["bridges"] = [sw.name for sw in switches.values()]
        for name, h in self.hosts.items():
            self.state["hosts"][name] = {
                "pid": h.pid,
                "role": self.topo.node(name).role or self.topo.node(name).kind,
                "addresses": [str(a.ip) for a in self.topo.node(name).addresses],
                "netns_inode": os.stat(f"/proc/{h.pid}/ns/net").st_ino,
                "procs": [],
            }
        labstate.save(self.state)
        # The root namespace gets no lab address (not even link-local) and the bridges do not
        # pass lab traffic through ip6tables.
        for sw in switches.values():
            for intf in [sw.name, *(i.name for i in sw.intfList() if i.name != "lo")]:
                subprocess.run(
                    ["sysctl", "-qw", f"net.ipv6.conf.{intf}.disable_ipv6=1"], check=False, capture_output=True
                )
            subprocess.run(
                ["ip", "link", "set", "dev", sw.name, "type", "bridge", "nf_call_ip6tables", "0"],
                check=False,
                capture_output=True,
            )
        # A segment with an observer floods every frame (ageing 0: a hub), so the observer sees the
        # traffic between the routers as a tap on a WAN link would.
        for link in self.topo.links:
            for (node, _), (other, _) in ((link.a, link.b), (link.b, link.a)):
                if node in switches and self.topo.node(other).role == "observer":
                    subprocess.run(
                        ["ip", "link", "set", "dev", switches[node].name, "type", "bridge", "ageing_time", "0"],
                        check=False,
                        capture_output=True,
                    )

    # -- services ----------------------------------------------------------------------------------

    def setup_sshd(self, h: str) -> str:
        """sshd's own host key and config in a secondary (one command); returns the host public key."""
        script = (
            "set -e\n"
            "mkdir -p -m 0700 /etc/pdmv2/ssh\n"
            "chmod 0755 /run/sshd\n"  # a fresh tmpfs is world-writable; sshd refuses that
            "ssh-keygen -q -t ed25519 -N '' -f /etc/pdmv2/ssh/host_ed25519\n"
            "(umask 077 && cat > /etc/pdmv2/ssh/sshd_config)\n"
            "cat /etc/pdmv2/ssh/host_ed25519.pub\n"
        )
        return self.run(h, "sh", "-c", script, input_text=SSHD_CONFIG).stdout.strip()

    def start_sshd(self, hosts: list[str]) -> dict[str, str]:
        """sshd on each host (set up in parallel); returns the host keys.  Listening is awaited later."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            keys = dict(zip(hosts, pool.map(self.setup_sshd, hosts), strict=True))
        for h in hosts:
            self.spawn(h, "sshd", "/usr/sbin/sshd", "-D", "-e", "-f", "/etc/pdmv2/ssh/sshd_config")
        return keys

    def listening(self, h: str, port: int = 22) -> bool:
        """True when something in the host listens on the TCP port."""
        return self.run(h, "sh", "-c", f"ss -ltnH 'sport = :{port}' | grep -q LISTEN", check=False).returncode == 0

    def agent_stats(self, h: str) -> dict[str, Any] | None:
        """The agent's stats, or None while it does not answer (control.agent_stats)."""
        return control.agent_stats(self.lab_hosts[h])

    def wait_all(self, what: str, hosts: list[str], check: Any, timeout: float) -> None:
        """Poll each host until check(host) is true; a host that passed is not asked again."""
        pending = set(hosts)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            pending = {h for h in pending if not check(h)}
            if pending:
                time.sleep(0.2)
        if pending:
            raise LabError(f"timed out waiting for {what} on {', '.join(sorted(pending))}")

    def register(self, pc: Node, ps: Node) -> None:
        """One organisation: its PS daemon, its PC registers over the WAN, both write their secondaries' keys."""
        with ThreadPoolExecutor(max_workers=2) as pool:  # independent processes: side by side
            ps_key = pool.submit(self.run, ps.name, PDMV2, "keygen", "--out", "/etc/pdmv2/ps.key")
            pc_key = pool.submit(self.run, pc.name, PDMV2, "keygen", "--out", "/etc/pdmv2/pc.key")
            ps_fp, pc_fp = ps_key.result().stdout.strip(), pc_key.result().stdout.strip()
        self.state["fingerprints"].update({ps.name: ps_fp, pc.name: pc_fp})
        prefixes = self.topo.site_prefixes(pc.name)
        allow = (
            "clients:\n"
            + f"  - name: {pc.name}\n    fingerprint: {pc_fp}\n    prefixes: ["
            + ", ".join(f'"{p}"' for p in prefixes)
            + "]\n"
        )
        self.write(ps.name, "/etc/pdmv2/allow.yaml", allow, "0644")
        self.spawn(
            ps.name,
            "primary-server",
            PDMV2,
            "primary-server",
            "--listen",
            str(ps.address),
            "--port",
            str(DEFAULT_PORT),
            "--key",
            "/etc/pdmv2/ps.key",
            "--allow",
            "/etc/pdmv2/allow.yaml",
            "--state",
            "/var/lib/pdmv2/ps",
        )
        self.wait_for(f"the primary server on {ps.name}", lambda: self.listening(ps.name, DEFAULT_PORT))
        argv = [
            PDMV2,
            "register",
            "--server",
            str(ps.address),
            "--port",
            str(DEFAULT_PORT),
            "--key",
            "/etc/pdmv2/pc.key",
            "--pin",
            ps_fp,
            "--state",
            "/var/lib/pdmv2/pc",
            "-q",
        ]
        for p in prefixes:
            argv += ["--prefix", str(p)]
        # One echo first: neighbour discovery along the path is done before the SYN (a SYN that
        # finds it undone costs TCP's 1 s retransmission, which was most of a small lab's wait).
        self.run(pc.name, "ping", "-6", "-c", "1", "-W", "2", str(ps.address), check=False)
        out = self.run(pc.name, *argv).stdout.strip()
        self.step(f"registered {pc.name} with {ps.name}: {out}")
        sargv = [
            PDMV2,
            "secrets",
            "client",
            "--registrations",
            "/var/lib/pdmv2/pc/registrations.json",
            "--out",
            "/var/lib/pdmv2/pc/secondaries",
        ]
        for sc in self.topo.secondaries_of(pc.name):
            sargv += ["--client", str(sc.address)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            done = [
                pool.submit(self.run, pc.name, *sargv),
                pool.submit(
                    self.run,
                    ps.name,
                    PDMV2,
                    "secrets",
                    "server",
                    "--registrations",
                    f"/var/lib/pdmv2/ps/registrations/{pc.name}.json",
                    "--out",
                    "/var/lib/pdmv2/ps/secondaries/server.json",
                ),
            ]
            for f in done:
                f.result()

    def inventory(self, primary: Node) -> dict[str, Any]:
        """The Ansible inventory a primary uses for its secondaries (playbooks/inventory.example.yml's shape)."""
        client = primary.role == "pc"
        encrypted = self.topo.site_prefixes(self.topo.partner(primary.name).name)
        hosts = {}
        for s in self.topo.secondaries_of(primary.name):
            src = (
                f"/var/lib/pdmv2/pc/secondaries/{str(s.address).replace(':', '_')}.json"
                if client
                else "/var/lib/pdmv2/ps/secondaries/server.json"
            )
            hosts[s.name] = {"ansible_host": str(s.address), "pdmv2_keys_source": src}
        return {
            "all": {
                "vars": {
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": "/root/.ssh/id_ed25519",
                    "ansible_python_interpreter": "/usr/bin/python3",
                    "ansible_ssh_common_args": (
                        "-o UserKnownHostsFile=/root/.ssh/known_hosts -o StrictHostKeyChecking=yes"
                    ),
                    # The lab's hosts share this machine's /usr and the project's .venv: nothing to install.
                    "pdmv2_agent_install_method": "none",
                    "pdmv2_agent_bin": PDMV2,
                    "pdmv2_keys_pdmv2_bin": PDMV2,
                    # Each agent starts in this same run, after its key is in place: nothing to reload.
                    "pdmv2_keys_reload": False,
                    # Namespaces have no systemd of their own.
                    "pdmv2_agent_service_manager": "supervised",
                    # A host is done when its agent answers with its key: that is the lab's "ready".
                    "pdmv2_agent_wait_keys": True,
                    "pdmv2_agent_rotate_after": self.rotate_after,
                    "pdmv2_agent_policy_rules": [
                        {"prefix": "fe80::/10", "mode": "pdmv2-clear"},
                        *({"prefix": str(p), "mode": "pdmv2-encrypted"} for p in encrypted),
                    ],
                },
                "children": {("secondary_clients" if client else "secondary_servers"): {"hosts": hosts}},
            }
        }

    def primaries(self) -> list[Node]:
        return [p for pair in self.topo.pairs() for p in pair]

    def push(self) -> None:
        """Each primary runs playbooks/site.yml (ansible-runner) over SSH to its secondaries, all in parallel."""
        with ThreadPoolExecutor(max_workers=len(self.primaries())) as pool:
            for fut in [pool.submit(self._push_from, p) for p in self.primaries()]:
                fut.result()

    def prepare_push(self, primary: Node, host_keys: dict[str, str]) -> None:
        """The primary's SSH key, trusted by its secondaries; their host keys and the inventory on
        the primary (independent of the registration: runs beside it)."""
        secondaries = self.topo.secondaries_of(primary.name)
        self.state["push"][primary.name] = {"hosts": len(secondaries), "done": 0, "status": "starting"}
        self.run(primary.name, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", "/root/.ssh/id_ed25519")
        pub = self.run(primary.name, "cat", "/root/.ssh/id_ed25519.pub").stdout
        known = "".join(f"{s.address} {host_keys[s.name]}\n" for s in secondaries)
        self.write(primary.name, "/root/.ssh/known_hosts", known, "0600")
        for s in secondaries:  # provisioning: the primary's key is trusted by its secondaries
            self.write(s.name, "/etc/pdmv2/ssh/authorized_keys", pub, "0600")
        self.write(primary.name, INVENTORY, json.dumps(self.inventory(primary)), "0600")
        self.wait_all("sshd", [s.name for s in secondaries], self.listening, timeout=20)

    def _push_from(self, primary: Node) -> None:
        secondaries = self.topo.secondaries_of(primary.name)
        progress = self.state["push"][primary.name]
        progress["status"] = "running"
        self.step(f"{primary.name}: ansible (playbooks/site.yml) to {len(secondaries)} secondaries")
        log_path = labstate.LAB_DIR / "logs" / f"{primary.name}-ansible.log"
        summary = ""
        with open(log_path, "ab") as log:
            proc = self.lab_hosts[primary.name].popen(
                str(VENV_BIN / "python"),
                "-m",
                "lab.ansible_push",
                INVENTORY,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            assert proc.stdout is not None
            last_save = 0.0
            for line in proc.stdout:
                if line.startswith("host-done "):
                    progress["done"] += 1
                    if time.monotonic() - last_save > 0.5 or progress["done"] == progress["hosts"]:
                        self.save()
                        last_save = time.monotonic()
                elif line.strip():
                    summary = line.strip()
            rc = proc.wait()
        if rc != 0:
            progress["status"] = "failed"
            tail = log_path.read_text()[-1500:]
            raise LabError(f"{primary.name}: ansible failed ({summary}); see {log_path}\n{tail}")
        progress["status"] = "done"
        self.step(f"{primary.name}: agents and keys on {progress['done']}/{len(secondaries)} secondaries ({summary})")

    # -- lifecycle ---------------------------------------------------------------------------------

    def up(self) -> None:
        """Everything up to 'ready'."""
        self.step(f"building {self.topo.name}: {len(self.topo.hosts)} hosts, {len(self.topo.links)} links")
        self.build()
        self.step("hosts up: IPv6 configured (no IPv4, no DAD), routes and forwarding set")
        secondaries = [n.name for n in self.topo.nodes if n.role in ("sc", "ss")]
        host_keys = self.start_sshd(secondaries)
        self.step(f"sshd started on {len(host_keys)} secondaries")
        self.state["push"] = {}
        with ThreadPoolExecutor(max_workers=len(self.topo.pairs()) + len(self.primaries())) as pool:
            jobs = [pool.submit(self.register, pc, ps) for pc, ps in self.topo.pairs()]
            jobs += [pool.submit(self.prepare_push, p, host_keys) for p in self.primaries()]
            for fut in jobs:
                fut.result()
        self.push()
        # Each host the push reported done has its agent answering with its key loaded
        # (pdmv2_agent_wait_keys); any other is asked here.
        if any(p["done"] != p["hosts"] for p in self.state["push"].values()):
            self.wait_all(
                "agents to load their keys",
                secondaries,
                lambda h: (self.agent_stats(h) or {}).get("keys") is not None,
                timeout=30,
            )
        self.state["ready"] = True
        self.state["up_seconds"] = time.time() - self.state["started"]
        self.step(f"ready in {self.state['up_seconds']:.1f} s")

    def down(self) -> None:
        """Stop every process we started, then Mininet removes hosts, links and bridges."""
        for pids in self.procs.values():
            for pid in pids:
                try:
                    os.killpg(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for pids in self.procs.values():
            for pid in pids:
                while labstate.alive(pid) and time.monotonic() < deadline:
                    try:
                        os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        break
                    time.sleep(0.05)
                if labstate.alive(pid):
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        if self.net is not None:
            self.net.stop()
        # What the roles started over SSH (agents and their supervisors) is not our child: by namespace.
        kill_namespace_processes({h["netns_inode"] for h in self.state["hosts"].values()})


def serve(topo: Topology, rotate_after: int) -> int:
    """Run the lab until SIGTERM."""
    daemon = LabDaemon(topo, rotate_after=rotate_after)

    def on_signal(*_: object) -> None:
        raise _Stop  # also interrupts a step in progress (a hung command must not delay lab-down)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.up()
        while True:
            time.sleep(0.5)
    except _Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        daemon.step("stopping")
        return 0
    except Exception as exc:
        daemon.state["error"] = f"{type(exc).__name__}: {exc}"
        daemon.step(f"FAILED: {daemon.state['error']}")
        return 1
    finally:
        daemon.down()
        daemon.state["stopped"] = True
        labstate.save(daemon.state)
