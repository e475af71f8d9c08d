"""The topology as a picture (pure): segments in a row joined by routers, hosts hanging below.

``graph(topo)`` returns what the page draws: every host with its role, addresses and position,
every segment (a switch: one layer-2 broadcast domain) with its prefixes, the links, which
segment the observer watches, and where the web view captures (the observer's interface, or a
router's when the topology has no observer).
"""

from __future__ import annotations

from typing import Any

from lab.topology import Node, Topology

__all__ = ["graph", "capture_point", "kind_of", "role_of", "COL_W", "ROW_H"]

COL_W = 165  # one column: a segment, or a router between two segments
ROW_H = 58  # one host below its segment
TOP = 70  # the row of segments and routers
MAX_SHOWN = 12  # hosts drawn per segment (the rest are counted: scaled labs have hundreds)


def kind_of(n: Node) -> str:
    """host | router | bridge (schema 2's kind; schema 1 said it with the role)."""
    kind = getattr(n, "kind", None)
    if kind:
        return str(kind)
    return {"switch": "bridge", "router": "router"}.get(str(n.role), "host")


def role_of(n: Node) -> str:
    """What the page calls a node: its PDMv2 role (pc, sc, ps, ss, observer), else its kind (router)."""
    return str(n.role) if n.role and n.role not in ("switch", "router") else kind_of(n)


def _attachments(topo: Topology) -> tuple[dict[tuple[str, str], str], list[tuple[tuple[str, str], tuple[str, str]]]]:
    """(host, ifname) -> switch, and the host-to-host links (no switch between them)."""
    switches = {n.name for n in topo.nodes if kind_of(n) == "bridge"}
    seg: dict[tuple[str, str], str] = {}
    direct = []
    for link in topo.links:
        a, b = link.a, link.b
        if a[0] in switches and b[0] not in switches:
            seg[b] = a[0]
        elif b[0] in switches and a[0] not in switches:
            seg[a] = b[0]
        elif a[0] not in switches and b[0] not in switches:
            direct.append((a, b))
    return seg, direct


def capture_point(topo: Topology) -> dict[str, Any] | None:
    """Where the observer's view comes from: {host, ifname, segment, stand_in}, or None."""
    seg, _ = _attachments(topo)
    for n in topo.by_role("observer"):
        for iface in n.interfaces:
            return {"host": n.name, "ifname": iface.name, "segment": seg.get((n.name, iface.name)), "stand_in": False}
    # No observer: a router's interface away from the client site sees what crosses the lab.
    pcs = topo.by_role("pc")
    client_segs = {seg.get((pcs[0].name, i.name)) for i in pcs[0].interfaces} if pcs else set()
    for n in (n for n in topo.nodes if kind_of(n) == "router"):
        for iface in n.interfaces:
            s = seg.get((n.name, iface.name))
            if s not in client_segs:
                return {"host": n.name, "ifname": iface.name, "segment": s, "stand_in": True}
    return None


def graph(topo: Topology) -> dict[str, Any]:
    """Positions and labels of everything the page draws (SVG user units)."""
    seg, direct = _attachments(topo)
    switches = [n.name for n in topo.nodes if kind_of(n) == "bridge"]
    host_segs: dict[str, list[str]] = {}
    for (h, _), s in seg.items():
        host_segs.setdefault(h, [])
        if s not in host_segs[h]:
            host_segs[h].append(s)
    joiners = {h for h, ss in host_segs.items() if len(ss) > 1}  # routers (or any multi-homed host)
    # Order the segments from the client site outwards: breadth first over the joiners.
    pcs = topo.by_role("pc")
    starts = [seg[(pcs[0].name, i.name)] for i in pcs[0].interfaces if (pcs[0].name, i.name) in seg] if pcs else []
    order: list[str] = []
    queue = starts[:1]
    while queue or len(order) < len(switches):
        if not queue:
            queue = [next(s for s in switches if s not in order)]
        s = queue.pop(0)
        if s in order:
            continue
        order.append(s)
        for h in sorted(joiners, key=lambda x: [n.name for n in topo.nodes].index(x)):
            if s in host_segs[h]:
                queue += [o for o in host_segs[h] if o not in order and o not in queue]
    col = {s: 2 * i for i, s in enumerate(order)}
    cap = capture_point(topo)
    observed = {cap["segment"]} if cap and not cap["stand_in"] else set()
    segments: list[dict[str, Any]] = []
    for s in order:
        prefixes = sorted(
            {
                str(a.network)
                for (h, ifn), sw in seg.items()
                if sw == s
                for i in topo.node(h).interfaces
                if i.name == ifn
                for a in i.addresses
            }
        )
        segments.append(
            {
                "name": s,
                "x": 60 + col[s] * COL_W,
                "y": TOP,
                "prefixes": prefixes,
                "observed": s in observed,
                "captured": bool(cap and cap["segment"] == s),
            }
        )
    seg_pos = {s["name"]: s for s in segments}
    hosts = []
    below: dict[str, int] = {}
    hidden: dict[str, int] = {}
    loose = 0
    for n in topo.hosts:
        ifaces = [
            {"name": i.name, "segment": seg.get((n.name, i.name)), "addresses": [str(a) for a in i.addresses]}
            for i in n.interfaces
        ]
        entry: dict[str, Any] = {
            "name": n.name,
            "role": role_of(n),
            "kind": kind_of(n),
            "primary": n.primary,
            "addresses": [str(a.ip) for a in n.addresses],
            "interfaces": ifaces,
        }
        segs = host_segs.get(n.name, [])
        if n.name in joiners:
            xs = [float(seg_pos[s]["x"]) for s in segs]
            entry["x"], entry["y"] = sum(xs) / len(xs), TOP
        elif segs:
            k = below.get(segs[0], 0)
            below[segs[0]] = k + 1
            if k >= MAX_SHOWN:
                hidden[segs[0]] = hidden.get(segs[0], 0) + 1
                entry["hidden"] = True
            entry["x"], entry["y"] = seg_pos[segs[0]]["x"], TOP + ROW_H * (min(k, MAX_SHOWN) + 1)
        else:
            entry["x"], entry["y"] = 60 + loose * COL_W, TOP + ROW_H * (MAX_SHOWN + 2)
            loose += 1
        hosts.append(entry)
    for sg in segments:
        sg["more"] = hidden.get(sg["name"], 0)
    links: list[dict[str, str]] = [{"host": h, "ifname": ifn, "segment": s} for (h, ifn), s in seg.items()]
    links += [{"host": a[0], "ifname": a[1], "peer": b[0], "peer_ifname": b[1]} for a, b in direct]
    shown = [h for h in hosts if not h.get("hidden")]
    width = max([h["x"] for h in shown] + [s["x"] for s in segments] + [0]) + COL_W + 20
    height = max([h["y"] for h in shown] + [TOP]) + ROW_H
    observer = next(({"host": n.name, "segment": cap["segment"]} for n in topo.by_role("observer") if cap), None)
    return {
        "name": topo.name,
        "width": width,
        "height": height,
        "segments": segments,
        "hosts": hosts,
        "links": links,
        "observer": observer,
        "capture": cap,
    }
