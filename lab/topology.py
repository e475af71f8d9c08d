"""Topology files (YAML) -> validated, frozen dataclasses (pure: no Mininet, no I/O but the text).

The shape is containerlab's: ``name``, ``nodes`` (each with a ``role`` and its interfaces,
addresses and routes), ``links`` with ``endpoints: ["node:ifname", "node:ifname"]``, plus a
``schema`` version.  Everything is checked before anything starts; each error names the file,
the node and the field.  No shell strings: nothing in a topology is ever run.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from pdmv2.core.config import line_of, load_yaml
from pdmv2.core.errors import ConfigError

__all__ = ["Topology", "Node", "Interface", "Route", "Link", "parse_topology", "check_root_routes", "ROLES", "scaled"]

SCHEMA = 1
ROLES = ("pc", "ps", "sc", "ss", "router", "observer", "switch")
LAB_SPACE = ipaddress.IPv6Network("2001:db8::/32")  # documentation prefix: the only one the lab uses
_NODE_KEYS = {"role", "interfaces", "routes", "primary", "__line__"}


@dataclass(frozen=True)
class Interface:
    """One interface of a host."""

    name: str
    """Interface name inside the host (eth0...)."""
    addresses: tuple[ipaddress.IPv6Interface, ...]
    """Global addresses with prefix length (link-local comes by itself)."""


@dataclass(frozen=True)
class Route:
    """A static route."""

    to: ipaddress.IPv6Network
    """Destination prefix."""
    via: ipaddress.IPv6Address
    """Next hop."""


@dataclass(frozen=True)
class Node:
    """A host or a switch."""

    name: str
    """Node name (also the Mininet host name)."""
    role: str
    """pc | ps | sc | ss | router | observer | switch."""
    interfaces: tuple[Interface, ...] = ()
    """Interfaces (hosts only)."""
    routes: tuple[Route, ...] = ()
    """Static routes (hosts only)."""
    primary: str | None = None
    """For sc/ss: the pc/ps that manages it."""

    @property
    def addresses(self) -> list[ipaddress.IPv6Interface]:
        """All global addresses."""
        return [a for i in self.interfaces for a in i.addresses]

    @property
    def address(self) -> ipaddress.IPv6Address:
        """The first global address (the host's identity in the lab)."""
        return self.addresses[0].ip


@dataclass(frozen=True)
class Link:
    """A point-to-point link (a veth pair): two endpoints."""

    a: tuple[str, str]
    """(node, interface)."""
    b: tuple[str, str]
    """(node, interface)."""


@dataclass(frozen=True)
class Topology:
    """A whole lab."""

    name: str
    """Topology name."""
    nodes: tuple[Node, ...]
    """Every node, in file order."""
    links: tuple[Link, ...]
    """Every link."""

    def node(self, name: str) -> Node:
        """The node of that name."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def by_role(self, role: str) -> list[Node]:
        """Nodes of one role."""
        return [n for n in self.nodes if n.role == role]

    @property
    def hosts(self) -> list[Node]:
        """Every node that is not a switch."""
        return [n for n in self.nodes if n.role != "switch"]

    def secondaries_of(self, primary: str) -> list[Node]:
        """The sc/ss nodes a pc/ps manages."""
        return [n for n in self.nodes if n.primary == primary]

    def site_prefixes(self, primary: str) -> list[ipaddress.IPv6Network]:
        """The /64s of a primary's secondaries (what it registers for, or serves)."""
        nets: list[ipaddress.IPv6Network] = []
        for n in self.secondaries_of(primary):
            for a in n.addresses:
                if a.network not in nets:
                    nets.append(a.network)
        return nets


def _err(source: str, where: str, reason: str) -> ConfigError:
    return ConfigError(source, where, reason)


def _parse_node(name: str, raw: Any, source: str) -> Node:
    where = f"{line_of(raw)} nodes.{name}".strip()
    if not isinstance(raw, dict):
        raise _err(source, where, "must be a mapping")
    unknown = sorted(set(raw) - _NODE_KEYS)
    if unknown:
        raise _err(source, f"{where}.{unknown[0]}", "unknown field")
    role = raw.get("role")
    if role is None:
        raise _err(source, f"{where}.role", "missing role")
    if role not in ROLES:
        raise _err(source, f"{where}.role", f"{role!r} is not one of {' | '.join(ROLES)}")
    interfaces = []
    raw_ifs = raw.get("interfaces") or {}
    if not isinstance(raw_ifs, dict):
        raise _err(source, f"{where}.interfaces", "must be a mapping of interface name to settings")
    if role == "switch" and raw_ifs:
        raise _err(source, f"{where}.interfaces", "a switch has no addressed interfaces")
    for ifname, ifraw in raw_ifs.items():
        if ifname == "__line__":
            continue
        iwhere = f"{where}.interfaces.{ifname}"
        if not isinstance(ifname, str) or not 0 < len(ifname) <= 15 or not ifname.replace("-", "").isalnum():
            raise _err(source, iwhere, "interface names are 1-15 letters, digits or '-'")
        addrs = []
        for i, text in enumerate((ifraw or {}).get("addresses", []) if isinstance(ifraw, dict) else []):
            try:
                addr = ipaddress.IPv6Interface(str(text))
            except ValueError:
                raise _err(source, f"{iwhere}.addresses[{i}]", f"{text!r} is not an IPv6 address/prefix") from None
            if addr.ip not in LAB_SPACE:
                raise _err(source, f"{iwhere}.addresses[{i}]", f"{addr} is outside 2001:db8::/32 (the lab's space)")
            addrs.append(addr)
        interfaces.append(Interface(ifname, tuple(addrs)))
    if role in ("pc", "ps", "sc", "ss", "observer") and not any(i.addresses for i in interfaces):
        raise _err(source, f"{where}.interfaces", f"a {role} needs at least one global address")
    routes = []
    for i, r in enumerate(raw.get("routes") or []):
        rwhere = f"{where}.routes[{i}]"
        if not isinstance(r, dict):
            raise _err(source, rwhere, "must be a mapping with to and via")
        try:
            to = ipaddress.IPv6Network(str(r.get("to")))
            via = ipaddress.IPv6Address(str(r.get("via")))
        except ValueError:
            raise _err(source, rwhere, "to must be an IPv6 prefix and via an IPv6 address") from None
        if not to.subnet_of(LAB_SPACE) and to != LAB_SPACE:
            raise _err(source, f"{rwhere}.to", f"{to} is outside 2001:db8::/32: the lab never routes out")
        if not any(via in a.network for a in (x for iface in interfaces for x in iface.addresses)):
            raise _err(source, f"{rwhere}.via", f"{via} is not on any of {name}'s subnets")
        routes.append(Route(to, via))
    primary = raw.get("primary")
    if role in ("sc", "ss") and not isinstance(primary, str):
        raise _err(source, f"{where}.primary", f"an {role} needs its primary ({'pc' if role == 'sc' else 'ps'})")
    return Node(name, role, tuple(interfaces), tuple(routes), primary)


def parse_topology(text: str, source: str = "topology") -> Topology:
    """Parse and validate a topology file."""
    doc = load_yaml(text, source)
    if not isinstance(doc, dict):
        raise _err(source, "document", "must be a mapping")
    if doc.get("schema") != SCHEMA:
        raise _err(source, f"{line_of(doc)} schema".strip(), f"must be {SCHEMA}")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise _err(source, "name", "missing")
    raw_nodes = doc.get("nodes")
    if not isinstance(raw_nodes, dict) or not raw_nodes:
        raise _err(source, "nodes", "must be a non-empty mapping")
    nodes = []
    for node_name, raw in raw_nodes.items():
        if node_name == "__line__":
            continue
        if not isinstance(node_name, str) or not node_name.isidentifier() or len(node_name) > 10:
            raise _err(source, f"nodes.{node_name}", "node names are identifiers of at most 10 characters")
        node = _parse_node(node_name, raw, source)
        if node.role == "switch" and len(node_name) > 6:
            raise _err(source, f"nodes.{node_name}", "switch names are at most 6 characters (bridge names)")
        nodes.append(node)
    by_name = {n.name: n for n in nodes}
    # primaries exist and have the right role
    for n in nodes:
        if n.primary is not None:
            want = {"sc": "pc", "ss": "ps"}.get(n.role)
            p = by_name.get(n.primary)
            if p is None or p.role != want:
                raise _err(source, f"nodes.{n.name}.primary", f"{n.primary!r} is not a {want} node")
    # duplicate addresses
    seen: dict[ipaddress.IPv6Address, str] = {}
    for n in nodes:
        for a in n.addresses:
            if a.ip in seen:
                raise _err(source, f"nodes.{n.name}.interfaces", f"address {a.ip} is also on {seen[a.ip]}")
            seen[a.ip] = n.name
    # links
    links = []
    used: set[tuple[str, str]] = set()
    for i, raw in enumerate(doc.get("links") or []):
        where = f"{line_of(raw)} links[{i}]".strip()
        eps = raw.get("endpoints") if isinstance(raw, dict) else None
        if not isinstance(eps, list) or len(eps) != 2:
            raise _err(source, f"{where}.endpoints", 'must be two "node:interface" strings')
        pair = []
        for ep in eps:
            if not isinstance(ep, str) or ep.count(":") != 1:
                raise _err(source, f"{where}.endpoints", f'{ep!r} is not "node:interface"')
            node_name, ifname = ep.split(":")
            node = by_name.get(node_name)
            if node is None:
                raise _err(source, f"{where}.endpoints", f"unknown node {node_name!r}")
            if node.role != "switch" and ifname not in {x.name for x in node.interfaces}:
                raise _err(source, f"{where}.endpoints", f"{node_name} has no interface {ifname!r}")
            if (node_name, ifname) in used:
                raise _err(source, f"{where}.endpoints", f"{ep} is used twice")
            used.add((node_name, ifname))
            pair.append((node_name, ifname))
        links.append(Link(pair[0], pair[1]))
    topo = Topology(name, tuple(nodes), tuple(links))
    _check_segments(topo, source)
    for n in topo.hosts:
        for iface in n.interfaces:
            if (n.name, iface.name) not in used:
                raise _err(source, f"nodes.{n.name}.interfaces.{iface.name}", "not connected by any link")
    if not topo.by_role("pc") or not topo.by_role("ps"):
        raise _err(source, "nodes", "a lab needs a pc and a ps")
    return topo


def _check_segments(topo: Topology, source: str) -> None:
    """Hosts that share a layer-2 segment must share its prefix (no address outside the link's prefix)."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for link in topo.links:
        ends = [(e[0], "*") if topo.node(e[0]).role == "switch" else e for e in (link.a, link.b)]
        parent[find(ends[0])] = find(ends[1])
    segments: dict[tuple[str, str], list[tuple[Node, Interface]]] = {}
    for n in topo.hosts:
        for iface in n.interfaces:
            segments.setdefault(find((n.name, iface.name)), []).append((n, iface))
    for members in segments.values():
        addressed = [(n, i) for n, i in members if i.addresses]
        if len(addressed) < 2:
            continue
        for n, iface in addressed:
            others = {a.network for m, i in addressed if (m, i) != (n, iface) for a in i.addresses}
            for a in iface.addresses:
                if a.network not in others:
                    shown = ", ".join(sorted(map(str, others)))
                    raise _err(
                        source,
                        f"nodes.{n.name}.interfaces.{iface.name}",
                        f"{a} is outside the prefix of its link ({shown})",
                    )


def scaled(topo: Topology, secondaries: int) -> Topology:
    """The same lab with ``secondaries`` SCs per PC and SSs per PS, cloned from the first of each.

    Addresses: the clone k of a secondary with address P::X gets P::(0x100 + k); names sc1..scN.
    """
    if secondaries < 1 or secondaries > 250:
        raise ConfigError("--secondaries", "count", "must be 1..250")
    nodes: list[Node] = []
    links: list[Link] = []
    clones: dict[str, list[str]] = {}
    for n in topo.nodes:
        if n.role in ("sc", "ss"):
            if n.role in clones:
                continue
            clones[n.role] = []
            first_link = next(lk for lk in topo.links if n.name in (lk.a[0], lk.b[0]))
            peer = first_link.b if first_link.a[0] == n.name else first_link.a
            for k in range(1, secondaries + 1):
                name = f"{n.role}{k}"
                ifaces = tuple(
                    Interface(
                        i.name,
                        tuple(
                            ipaddress.IPv6Interface(f"{a.network.network_address + 0x100 + k}/{a.network.prefixlen}")
                            for a in i.addresses
                        ),
                    )
                    for i in n.interfaces
                )
                nodes.append(Node(name, n.role, ifaces, n.routes, n.primary))
                links.append(
                    Link(
                        (name, first_link.a[1] if first_link.a[0] == n.name else first_link.b[1]),
                        (peer[0], f"{peer[1]}{k}" if topo.node(peer[0]).role == "switch" else peer[1]),
                    )
                )
                clones[n.role].append(name)
        else:
            nodes.append(n)
    for lk in topo.links:
        if topo.node(lk.a[0]).role not in ("sc", "ss") and topo.node(lk.b[0]).role not in ("sc", "ss"):
            links.append(lk)
    return Topology(f"{topo.name}-x{secondaries}", tuple(nodes), tuple(links))


_ROUTE_TYPES = {"unicast", "local", "broadcast", "multicast", "throw", "unreachable", "prohibit", "blackhole", "nat"}


def check_root_routes(topo: Topology, routes: list[str], source: str = "topology") -> None:
    """Refuse a lab whose subnets overlap a route of this machine's root namespace.

    ``routes`` are the lines of ``ip -6 route show`` in the root namespace.  The lab lives in its
    own namespaces, but a lab subnet that is also a real network of this machine makes every
    address in it ambiguous to the person reading captures and logs; so pick another part of
    2001:db8::/32.  The default route (``::/0``) covers everything and is not a network of its
    own, so it is not compared.
    """
    root: list[tuple[ipaddress.IPv6Network, str]] = []
    for line in routes:
        words = line.split()
        if words and words[0] in _ROUTE_TYPES:
            words = words[1:]
        if not words or words[0] == "default":
            continue
        try:
            net = ipaddress.IPv6Network(words[0], strict=False)
        except ValueError:
            continue
        if net.prefixlen == 0:
            continue
        root.append((net, line.strip()))
    for n in topo.hosts:
        for iface in n.interfaces:
            for a in iface.addresses:
                for net, line in root:
                    if a.network.overlaps(net):
                        raise _err(
                            source,
                            f"nodes.{n.name}.interfaces.{iface.name}",
                            f"{a.network} overlaps the route '{line}' of this machine's root namespace: "
                            "choose another part of 2001:db8::/32 for the lab",
                        )
