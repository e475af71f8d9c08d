"""Topology YAML: the shipped files validate; broken ones are refused naming node and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.topology import check_root_routes, parse_topology, scaled
from pdmv2 import ConfigError

TOPO = Path(__file__).resolve().parent.parent.parent / "topologies"
ENTERPRISE = (TOPO / "enterprise.yaml").read_text()


@pytest.mark.parametrize("name", ["minimal", "enterprise"])
def test_shipped_topologies_validate(name: str) -> None:
    topo = parse_topology((TOPO / f"{name}.yaml").read_text(), name)
    assert topo.by_role("pc") and topo.by_role("ps") and topo.by_role("sc") and topo.by_role("ss")
    for n in topo.hosts:
        assert all(a.ip.exploded.startswith("2001:0db8") for a in n.addresses)
        assert all(str(r.to).startswith("2001:db8") for r in n.routes)


def test_enterprise_shape() -> None:
    t = parse_topology(ENTERPRISE, "enterprise")
    assert len(t.by_role("sc")) == 3 and len(t.by_role("ss")) == 3 and len(t.by_role("router")) == 2
    assert t.by_role("observer")[0].name == "obs"
    assert [str(p) for p in t.site_prefixes("pc")] == ["2001:db8:1::/64"]
    assert [str(p) for p in t.site_prefixes("ps")] == ["2001:db8:2::/64"]


def test_scaled_to_50() -> None:
    t = scaled(parse_topology(ENTERPRISE, "enterprise"), 50)
    assert len(t.by_role("sc")) == 50 and len(t.by_role("ss")) == 50
    addrs = [a.ip for n in t.hosts for a in n.addresses]
    assert len(addrs) == len(set(addrs))
    assert all(n.primary == "pc" for n in t.by_role("sc"))


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("  sc2:\n    role: sc\n", "  sc2:\n    rol: sc\n", "nodes.sc2.rol"),
        ("  sc2:\n    role: sc\n", "  sc2:\n    primary: pc\n    interfaces: {}\n", "nodes.sc2"),
        ('"sc1:eth0", "lan1:p2"', '"sc9:eth0", "lan1:p2"', "links[1].endpoints"),
        ('"2001:db8:1::12/64"', '"2001:db8:1::11/64"', "nodes.sc2.interfaces"),
        (
            '"2001:db8:1::13/64"]}}\n    routes: [{to: "2001:db8::/32", via: "2001:db8:1::1"}]',
            '"2001:db8:1::13/64", "2001:db8:7::13/64"]}}\n    routes: [{to: "2001:db8::/32", via: "2001:db8:1::1"}]',
            "nodes.sc3.interfaces.eth0",
        ),
        ('"2001:db8:ff::99/64"', '"fd00::99/64"', "nodes.obs.interfaces.eth0.addresses[0]"),
        (
            '{to: "2001:db8:2::/64", via: "2001:db8:ff::2"}',
            '{to: "::/0", via: "2001:db8:ff::2"}',
            "nodes.r1.routes[0].to",
        ),
        ("schema: 1", "schema: 7", "schema"),
        (
            '    primary: pc\n    interfaces: {eth0: {addresses: ["2001:db8:1::11/64"]}}',
            '    primary: ps\n    interfaces: {eth0: {addresses: ["2001:db8:1::11/64"]}}',
            "nodes.sc1.primary",
        ),
    ],
    ids=[
        "unknown-field",
        "missing-role",
        "unknown-node",
        "duplicate-address",
        "outside-prefix",
        "fd00",
        "route-out",
        "schema",
        "wrong-primary",
    ],
)
def test_broken_topologies_name_node_and_field(old: str, new: str, where: str) -> None:
    assert old in ENTERPRISE
    with pytest.raises(ConfigError) as exc:
        parse_topology(ENTERPRISE.replace(old, new, 1), "broken.yaml")
    assert where in exc.value.field, exc.value
    assert exc.value.source == "broken.yaml"


def test_broken_yaml_names_the_line() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_topology("schema: 1\nnodes: [\n", "x.yaml")
    assert exc.value.field.startswith("line")


ROOT_ROUTES = [
    "2001:db8:1::/64 dev eth0 proto kernel metric 256 pref medium",
    "fe80::/64 dev eth0 proto kernel metric 256 pref medium",
    "default via fe80::1 dev eth0 proto ra metric 1024 expires 1795sec pref medium",
]


def test_lab_subnet_overlapping_a_root_route_is_refused_naming_the_route() -> None:
    t = parse_topology(ENTERPRISE, "enterprise.yaml")
    with pytest.raises(ConfigError) as exc:
        check_root_routes(t, ROOT_ROUTES, "enterprise.yaml")
    assert exc.value.field == "nodes.pc.interfaces.eth0"  # the first node on 2001:db8:1::/64
    assert "2001:db8:1::/64 dev eth0 proto kernel" in str(exc.value)


def test_root_routes_that_do_not_overlap_are_accepted() -> None:
    t = parse_topology(ENTERPRISE, "enterprise.yaml")
    check_root_routes(t, [*ROOT_ROUTES[1:], "unreachable 2001:db8:77::/48 metric 1024", "garbage", ""], "e")
    with pytest.raises(ConfigError, match="unreachable 2001:db8::/32"):  # a wider route covers the lab
        check_root_routes(t, ["unreachable 2001:db8::/32 metric 1024"], "e")
