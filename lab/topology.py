"""Topology files (YAML, schema 2) -> validated, frozen dataclasses (pure: no Mininet, no I/O but the text).

The shape is containerlab's::

    schema: 2
    name: enterprise
    topology:
      defaults: {lab_route: "2001:db8::/32"}        # every node, unless its kind or itself says otherwise
      kinds: {router: {...}}                        # every node of a kind
      nodes:
        pc:  {kind: host, role: pc, registers_with: ps, interfaces: {eth0: {addresses: [...]}}, gateway: ...}
        sc1: {kind: host, role: sc, primary: pc, ...}
        r1:  {kind: router, interfaces: {...}, routes: [{to: ..., via: ...}]}
        lan1: {kind: bridge}
    links:
      - endpoints: ["pc:eth0", "lan1:p1"]

``kind`` says how a node is built (host, router, bridge); ``role`` what a host does in PDMv2 (pc,
ps, sc, ss, observer).  A node's settings are the defaults, then its kind's, then its own (each
key replaced whole).  ``lab/topology.schema.json`` (JSON Schema, checked with the jsonschema
library) says the structure; this module checks what a schema cannot say: addresses and routes
inside 2001:db8::/32, primaries and registration pairs (one PS per PC), links against interfaces,
one prefix per segment.  Each error names the file, the line, the node and the field.  Nothing
in a topology is ever run.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from pdmv2.core.config import load_yaml
from pdmv2.core.errors import ConfigError

__all__ = [
    "Topology",
    "Node",
    "Interface",
    "Route",
    "Link",
    "parse_topology",
    "check_root_routes",
    "KINDS",
    "ROLES",
    "SCHEMA_FILE",
    "scaled",
]

SCHEMA_FILE = Path(__file__).with_name("topology.schema.json")
KINDS = ("host", "router", "bridge")
ROLES = ("pc", "ps", "sc", "ss", "observer")
LAB_SPACE = ipaddress.IPv6Network("2001:db8::/32")  # documentation prefix (RFC 3849): the only one the lab uses
_LINE = "__line__"


@dataclass(frozen=True)
class Interface:
    """One interface of a host or router."""

    name: str
    """Interface name inside the node (eth0...)."""
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
    """A host, a router or a bridge."""

    name: str
    """Node name (also the Mininet host name)."""
    kind: str
    """How it is built: host | router | bridge."""
    role: str | None = None
    """What a host does: pc | ps | sc | ss | observer (None for routers and bridges)."""
    interfaces: tuple[Interface, ...] = ()
    """Interfaces (hosts and routers)."""
    routes: tuple[Route, ...] = ()
    """Static routes, the lab route through the gateway included."""
    primary: str | None = None
    """For sc/ss: the pc/ps that manages it."""
    registers_with: str | None = None
    """For a pc: the ps it registers with."""

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
        """Hosts of one role."""
        return [n for n in self.nodes if n.role == role]

    def by_kind(self, kind: str) -> list[Node]:
        """Nodes of one kind."""
        return [n for n in self.nodes if n.kind == kind]

    @property
    def hosts(self) -> list[Node]:
        """Every node that is a network namespace (hosts and routers, not bridges)."""
        return [n for n in self.nodes if n.kind != "bridge"]

    def secondaries_of(self, primary: str) -> list[Node]:
        """The sc/ss nodes a pc/ps manages."""
        return [n for n in self.nodes if n.primary == primary]

    def pairs(self) -> list[tuple[Node, Node]]:
        """(pc, ps) for each registration, in file order of the pcs."""
        return [(pc, self.node(pc.registers_with)) for pc in self.by_role("pc") if pc.registers_with]

    def partner(self, primary: str) -> Node:
        """The ps a pc registers with, or the pc that registers with a ps."""
        for pc, ps in self.pairs():
            if pc.name == primary:
                return ps
            if ps.name == primary:
                return pc
        raise KeyError(primary)

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


@cache
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def _node_validator() -> jsonschema.protocols.Validator:
    root = _validator()
    return root.evolve(schema={"$ref": "#/$defs/node", "$defs": root.schema["$defs"]})


def _plain(doc: Any) -> Any:
    """The document without the line markers load_yaml adds."""
    if isinstance(doc, dict):
        return {k: _plain(v) for k, v in doc.items() if k != _LINE}
    if isinstance(doc, list):
        return [_plain(v) for v in doc]
    return doc


def _where(raw: Any, path: Iterable[Any]) -> str:
    """'line N a.b[2].c' for a path into the raw document: the line of the deepest mapping on the way."""
    line, text, node = None, "", raw
    for part in path:
        if isinstance(node, dict) and _LINE in node:
            line = node[_LINE]
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
        node = node.get(part) if isinstance(node, dict) else node[part] if isinstance(node, list) else None
    if isinstance(node, dict) and _LINE in node:
        line = node[_LINE]
    return f"line {line} {text}" if line is not None else text or "document"


def _schema_error(raw: Any, err: jsonschema.ValidationError, source: str, prefix: tuple[Any, ...] = ()) -> ConfigError:
    """A jsonschema error as a ConfigError naming line, node and field, in words a user can act on."""
    path = [*prefix, *err.absolute_path]
    desc = err.schema.get("description") if isinstance(err.schema, dict) else None
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        extra = sorted(k for k in err.instance if k not in allowed)
        return _err(source, _where(raw, [*path, extra[0]]), f"unknown field (allowed: {', '.join(sorted(allowed))})")
    if err.validator == "required":
        missing = str(err.message).split("'")[1] if "'" in err.message else "?"
        what = (
            err.instance.get("role") or err.instance.get("kind") or "node" if isinstance(err.instance, dict) else "it"
        )
        return _err(source, _where(raw, [*path, missing]), f"missing: a {what} needs {missing}")
    if err.validator == "enum":
        return _err(
            source, _where(raw, path), f"{err.instance!r} is not one of {' | '.join(map(str, err.validator_value))}"
        )
    if err.validator == "const":
        return _err(source, _where(raw, path), f"must be {err.validator_value!r}")
    if err.validator == "type":
        return _err(source, _where(raw, path), f"must be of type {err.validator_value}")
    if err.validator == "pattern" and "propertyNames" in err.schema_path:
        return _err(source, _where(raw, [*path, err.instance]), f"{err.instance!r}: {desc or err.message}")
    if err.validator in ("pattern", "minItems", "maxItems") and desc:
        return _err(source, _where(raw, path), f"{err.instance!r}: {desc}")
    if err.validator == "not" and desc:
        return _err(source, _where(raw, path), desc)
    if err.validator == "minProperties":
        return _err(source, _where(raw, path), "must not be empty")
    return _err(source, _where(raw, path), desc or str(err.message))


def _check(validator: jsonschema.protocols.Validator, doc: Any, raw: Any, source: str, prefix: tuple[Any, ...]) -> None:
    best = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if best is not None:
        raise _schema_error(raw, best, source, prefix)


def _lab_net(text: str, where: str, source: str, *, network: bool) -> Any:
    try:
        value: Any = ipaddress.IPv6Network(text) if network else ipaddress.IPv6Interface(text)
    except ValueError:
        kind = "an IPv6 prefix" if network else "an IPv6 address/prefix"
        raise _err(source, where, f"{text!r} is not {kind}") from None
    inside = value.subnet_of(LAB_SPACE) if network else value.ip in LAB_SPACE
    if not inside:
        raise _err(source, where, f"{value} is outside 2001:db8::/32 (the lab's space): the lab never routes out")
    return value


def _build_node(name: str, cfg: dict[str, Any], raw: Any, source: str) -> Node:
    """A merged, schema-valid node's settings -> Node, with the address checks."""
    base = ("topology", "nodes", name)
    interfaces = []
    for ifname, ifcfg in (cfg.get("interfaces") or {}).items():
        addrs = tuple(
            _lab_net(str(t), _where(raw, [*base, "interfaces", ifname, "addresses", i]), source, network=False)
            for i, t in enumerate(ifcfg.get("addresses", []))
        )
        interfaces.append(Interface(ifname, addrs))
    if cfg.get("role") and not any(i.addresses for i in interfaces):
        raise _err(source, _where(raw, [*base, "interfaces"]), f"a {cfg['role']} needs at least one global address")
    on_link = [a.network for i in interfaces for a in i.addresses]
    wanted: list[tuple[str, str, list[Any]]] = []
    if "gateway" in cfg:
        if "lab_route" not in cfg:
            raise _err(source, _where(raw, [*base, "gateway"]), "a gateway needs lab_route (in defaults, usually)")
        wanted.append((cfg["lab_route"], cfg["gateway"], [*base, "gateway"]))
    for i, r in enumerate(cfg.get("routes") or []):
        wanted.append((r["to"], r["via"], [*base, "routes", i]))
    routes = []
    for to_text, via_text, path in wanted:
        to = _lab_net(
            str(to_text),
            _where(raw, path) + ".to" if path[-1] != "gateway" else _where(raw, path),
            source,
            network=True,
        )
        try:
            via = ipaddress.IPv6Address(str(via_text))
        except ValueError:
            raise _err(source, _where(raw, path), f"{via_text!r} is not an IPv6 address") from None
        if not any(via in net for net in on_link):
            raise _err(source, _where(raw, path), f"{via} is not on any of {name}'s subnets")
        routes.append(Route(to, via))
    return Node(
        name,
        cfg["kind"],
        cfg.get("role"),
        tuple(interfaces),
        tuple(routes),
        cfg.get("primary"),
        cfg.get("registers_with"),
    )


def parse_topology(text: str, source: str = "topology") -> Topology:
    """Parse and validate a topology file (schema 2)."""
    raw = load_yaml(text, source)
    doc = _plain(raw)
    if isinstance(doc, dict) and doc.get("schema") == 1:
        raise _err(source, "schema", "schema 1 files are no longer read: see docs/lab.md for schema 2")
    _check(_validator(), doc, raw, source, ())
    topo_doc = doc["topology"]
    defaults = topo_doc.get("defaults", {})
    kinds = topo_doc.get("kinds", {})
    node_check = _node_validator()
    nodes = []
    for name, own in topo_doc["nodes"].items():
        kind = own.get("kind", defaults.get("kind"))
        merged = {**copy.deepcopy(defaults), **copy.deepcopy(kinds.get(kind, {})), **own}
        _check(node_check, merged, raw, source, ("topology", "nodes", name))
        node = _build_node(name, merged, raw, source)
        if node.kind == "bridge" and len(name) > 6:
            raise _err(source, _where(raw, ["topology", "nodes", name]), "bridge names are at most 6 characters")
        nodes.append(node)
    by_name = {n.name: n for n in nodes}
    node_where = {n.name: (lambda f, n=n: _where(raw, ["topology", "nodes", n.name, f])) for n in nodes}
    for n in nodes:
        if n.primary is not None:
            want = {"sc": "pc", "ss": "ps"}[n.role or ""]
            p = by_name.get(n.primary)
            if p is None or p.role != want:
                raise _err(source, node_where[n.name]("primary"), f"{n.primary!r} is not a {want} node")
        if n.registers_with is not None:
            p = by_name.get(n.registers_with)
            if p is None or p.role != "ps":
                raise _err(source, node_where[n.name]("registers_with"), f"{n.registers_with!r} is not a ps node")
            other = [m.name for m in nodes[: nodes.index(n)] if m.registers_with == n.registers_with]
            if other:
                raise _err(
                    source,
                    node_where[n.name]("registers_with"),
                    f"{n.registers_with} already serves {other[0]}: one PS per PC (give each pc its own ps)",
                )
    for n in nodes:
        if n.role == "ps" and not any(m.registers_with == n.name for m in nodes):
            raise _err(source, _where(raw, ["topology", "nodes", n.name]), "no pc registers_with this ps")
        if n.role in ("pc", "ps") and not any(m.primary == n.name for m in nodes):
            raise _err(source, _where(raw, ["topology", "nodes", n.name]), f"this {n.role} has no secondaries")
    seen: dict[ipaddress.IPv6Address, str] = {}
    for n in nodes:
        for iface in n.interfaces:
            for a in iface.addresses:
                if a.ip in seen:
                    raise _err(
                        source,
                        _where(raw, ["topology", "nodes", n.name, "interfaces", iface.name]),
                        f"address {a.ip} is also on {seen[a.ip]}",
                    )
                seen[a.ip] = n.name
    links = []
    used: set[tuple[str, str]] = set()
    for i, lk in enumerate(doc.get("links") or []):
        where = _where(raw, ["links", i, "endpoints"])
        pair = []
        for ep in lk["endpoints"]:
            node_name, ifname = ep.split(":")
            node = by_name.get(node_name)
            if node is None:
                raise _err(source, where, f"unknown node {node_name!r}")
            if node.kind != "bridge" and ifname not in {x.name for x in node.interfaces}:
                raise _err(source, where, f"{node_name} has no interface {ifname!r}")
            if node.kind == "bridge" and len(f"pdm{node_name}-{ifname}") > 15:
                # the bridge's side of the veth is named pdmBRIDGE-PORT, and Linux allows 15 characters
                raise _err(source, where, f"{ep}: a bridge port name here may have {11 - len(node_name)} characters")
            if (node_name, ifname) in used:
                raise _err(source, where, f"{ep} is used twice")
            used.add((node_name, ifname))
            pair.append((node_name, ifname))
        links.append(Link(pair[0], pair[1]))
    topo = Topology(doc["name"], tuple(nodes), tuple(links))
    _check_segments(topo, source, raw)
    for n in topo.hosts:
        for iface in n.interfaces:
            if (n.name, iface.name) not in used:
                raise _err(
                    source,
                    _where(raw, ["topology", "nodes", n.name, "interfaces", iface.name]),
                    "not connected by any link",
                )
    if not topo.pairs():
        raise _err(source, _where(raw, ["topology", "nodes"]), "a lab needs a pc that registers_with a ps")
    return topo


def _check_segments(topo: Topology, source: str, raw: Any) -> None:
    """Hosts that share a layer-2 segment must share its prefix (no address outside the link's prefix)."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for link in topo.links:
        ends = [(e[0], "*") if topo.node(e[0]).kind == "bridge" else e for e in (link.a, link.b)]
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
                        _where(raw, ["topology", "nodes", n.name, "interfaces", iface.name]),
                        f"{a} is outside the prefix of its link ({shown})",
                    )


def scaled(topo: Topology, secondaries: int) -> Topology:
    """The same lab with ``secondaries`` SCs per PC and SSs per PS, cloned from the first of each.

    Addresses: the clone k of a secondary with address P::X gets P::(0x100 + k); names sc1..scN.
    """
    if secondaries < 1 or secondaries > 250:
        raise ConfigError("--secondaries", "count", "must be 1..250")
    if len(topo.pairs()) != 1:
        raise ConfigError("--secondaries", topo.name, "scaling clones the secondaries of a lab with one pc and one ps")
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
                nodes.append(Node(name, n.kind, n.role, ifaces, n.routes, n.primary))
                links.append(
                    Link(
                        (name, first_link.a[1] if first_link.a[0] == n.name else first_link.b[1]),
                        (peer[0], f"{peer[1]}{k}" if topo.node(peer[0]).kind == "bridge" else peer[1]),
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
                            f"topology.nodes.{n.name}.interfaces.{iface.name}",
                            f"{a.network} overlaps the route '{line}' of this machine's root namespace: "
                            "choose another part of 2001:db8::/32 for the lab",
                        )
