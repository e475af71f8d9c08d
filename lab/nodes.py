"""Mininet node classes of the lab (an edge): each host configures itself from its topology Node.

As in Mininet's examples/linuxrouter.py, per-host setup is the node's own ``config()`` (run by
``Mininet.build()``) and ``terminate()``: IPv6 addresses without DAD, static routes, no router
advertisements, no IPv4 address; a router also forwards.
"""

from __future__ import annotations

import shlex
from typing import Any

from mininet.node import Host

from lab.topology import Node


class NodeSetupError(Exception):
    """A host's setup command failed (its output says why)."""


class PdmHost(Host):  # type: ignore[misc]
    """A lab host: IPv6 only, addresses and routes from the topology."""

    def config(self, pdm_node: Node | None = None, **params: Any) -> dict[str, Any]:
        r: dict[str, Any] = super().config(**params)
        if pdm_node is None:
            return r
        steps = [
            "ip link set lo up",
            "sysctl -qw net.ipv6.conf.all.accept_dad=0",
            "sysctl -qw net.ipv6.conf.default.accept_dad=0",
            "sysctl -qw net.ipv6.conf.all.accept_ra=0",
            "sysctl -qw net.ipv6.conf.default.accept_ra=0",
        ]
        for iface in pdm_node.interfaces:
            dev = shlex.quote(iface.name)
            steps += [
                f"ip -4 addr flush dev {dev}",
                f"sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=0",
                f"sysctl -qw net.ipv6.conf.{dev}.accept_dad=0",
                f"sysctl -qw net.ipv6.conf.{dev}.accept_ra=0",
                f"ip link set {dev} up",
            ]
            steps += [f"ip -6 addr add {a} dev {dev} nodad" for a in iface.addresses]
        steps += [f"ip -6 route add {route.to} via {route.via}" for route in pdm_node.routes]
        steps += self.extra_setup()
        self.run_setup(steps)
        return r

    def extra_setup(self) -> list[str]:
        """Commands a subclass adds after addresses and routes."""
        return []

    def run_setup(self, steps: list[str]) -> None:
        """Run the steps in the host's shell, stopping at the first that fails."""
        out = self.cmd(" && ".join(steps) + ' ; echo "pdm-setup-rc=$?"')
        body, _, rc = out.strip().rpartition("pdm-setup-rc=")
        if rc.strip() != "0":
            raise NodeSetupError(f"{self.name}: host setup failed: {body.strip()[-500:]}")


class PdmRouter(PdmHost):
    """A lab router: a host that forwards IPv6."""

    def extra_setup(self) -> list[str]:
        return ["sysctl -qw net.ipv6.conf.all.forwarding=1"]

    def terminate(self) -> None:
        self.cmd("sysctl -qw net.ipv6.conf.all.forwarding=0")
        super().terminate()
