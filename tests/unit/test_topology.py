"""Topology YAML: the shipped files validate; broken ones are refused naming node and field."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from lab.topology import SCHEMA_FILE, check_root_routes, parse_topology, scaled
from pdmv2 import ConfigError

TOPO = Path(__file__).resolve().parent.parent.parent / "topologies"
ENTERPRISE = (TOPO / "enterprise.yaml").read_text()
TWO_ORGS = (TOPO / "two-orgs.yaml").read_text()


@pytest.mark.parametrize("name", sorted(p.stem for p in TOPO.glob("*.yaml")))
def test_shipped_topologies_validate(name: str) -> None:
    topo = parse_topology((TOPO / f"{name}.yaml").read_text(), name)
    assert topo.by_role("pc") and topo.by_role("ps") and topo.by_role("sc") and topo.by_role("ss")
    for n in topo.hosts:
        assert all(a.ip.exploded.startswith("2001:0db8") for a in n.addresses)
        assert all(str(r.to).startswith("2001:db8") for r in n.routes)


def test_enterprise_shape() -> None:
    t = parse_topology(ENTERPRISE, "enterprise")
    assert len(t.by_role("sc")) == 3 and len(t.by_role("ss")) == 3 and len(t.by_kind("router")) == 2
    assert t.by_role("observer")[0].name == "obs"
    assert [str(p) for p in t.site_prefixes("pc")] == ["2001:db8:1::/64"]
    assert [str(p) for p in t.site_prefixes("ps")] == ["2001:db8:2::/64"]


def test_the_schema_file_is_a_valid_json_schema() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)


def test_defaults_then_kind_then_node() -> None:
    text = ENTERPRISE.replace(
        "  nodes:\n",
        '  kinds:\n    router:\n      routes: [{to: "2001:db8:77::/64", via: "2001:db8:ff::99"}]\n  nodes:\n',
        1,
    )
    t = parse_topology(text, "k.yaml")
    assert [str(r.to) for r in t.node("r1").routes] == ["2001:db8:2::/64"]  # the node's own routes win
    no_own = text.replace('      routes: [{to: "2001:db8:2::/64", via: "2001:db8:ff::2"}]\n', "", 1)
    assert [str(r.to) for r in parse_topology(no_own, "k.yaml").node("r1").routes] == ["2001:db8:77::/64"]
    assert parse_topology(text, "k.yaml").node("sc1").kind == "host"  # from defaults
    assert [str(r.to) for r in t.node("sc1").routes] == ["2001:db8::/32"]  # defaults' lab_route via the gateway


def test_two_orgs_pairs_and_sites() -> None:
    t = parse_topology(TWO_ORGS, "two-orgs.yaml")
    assert [(pc.name, ps.name) for pc, ps in t.pairs()] == [("pca", "psa"), ("pcb", "psb")]
    assert [n.name for n in t.secondaries_of("psb")] == ["ssb1", "ssb2"]
    assert t.partner("psa").name == "pca" and t.partner("pcb").name == "psb"
    assert [str(p) for p in t.site_prefixes("psb")] == ["2001:db8:b2::/64"]
    with pytest.raises(ConfigError, match="one pc and one ps"):
        scaled(t, 5)


def test_one_ps_per_pc() -> None:
    text = TWO_ORGS.replace("registers_with: psb", "registers_with: psa", 1)
    with pytest.raises(ConfigError) as exc:
        parse_topology(text, "two-orgs.yaml")
    assert "topology.nodes.pcb.registers_with" in exc.value.field and "one PS per PC" in exc.value.reason


def test_scaled_to_50() -> None:
    t = scaled(parse_topology(ENTERPRISE, "enterprise"), 50)
    assert len(t.by_role("sc")) == 50 and len(t.by_role("ss")) == 50
    addrs = [a.ip for n in t.hosts for a in n.addresses]
    assert len(addrs) == len(set(addrs))
    assert all(n.primary == "pc" for n in t.by_role("sc"))


@pytest.mark.parametrize(
    ("old", "new", "where", "reason"),
    [
        ("    sc2:\n      role: sc\n", "    sc2:\n      rol: sc\n", "line 30 topology.nodes.sc2.rol", "unknown field"),
        ("    sc2:\n      role: sc\n", "    sc2:\n", "topology.nodes.sc2.role", "a host needs role"),
        ('"sc1:eth0", "lan1:p2"', '"sc9:eth0", "lan1:p2"', "links[1].endpoints", "unknown node 'sc9'"),
        ('"sc1:eth0", "lan1:p2"', '"sc1-eth0", "lan1:p2"', "links[1].endpoints[0]", 'an endpoint is "node:interface"'),
        ('"2001:db8:1::12/64"', '"2001:db8:1::11/64"', "topology.nodes.sc2.interfaces.eth0", "also on sc1"),
        (
            '"2001:db8:1::13/64"]}}',
            '"2001:db8:1::13/64", "2001:db8:7::13/64"]}}',
            "topology.nodes.sc3.interfaces.eth0",
            "outside the prefix of its link",
        ),
        ('"2001:db8:ff::99/64"', '"fd00::99/64"', "topology.nodes.obs.interfaces.eth0.addresses[0]", "2001:db8::/32"),
        (
            '{to: "2001:db8:2::/64", via: "2001:db8:ff::2"}',
            '{to: "::/0", via: "2001:db8:ff::2"}',
            "nodes.r1.routes[0]",
            "outside",
        ),
        (
            'gateway: "2001:db8:ff::2"',
            'gateway: "2001:db8:5::2"',
            "topology.nodes.obs.gateway",
            "not on any of obs's subnets",
        ),
        ('"sc1:eth0", "lan1:p2"', '"sc1:eth0", "lan1:port0002"', "links[1].endpoints", "may have 7 characters"),
        ("schema: 2", "schema: 7", "schema", "must be 2"),
        ("schema: 2", "schema: 1", "schema", "schema 1 files are no longer read"),
        ("      role: pc\n", "      role: router\n", "topology.nodes.pc.role", "is not one of pc | ps"),
        ("    r1:\n      kind: router\n", "    r1:\n      kind: router\n      role: pc\n", "nodes.r1", "no role"),
        ("    lan1: {kind: bridge}", "    lan1: {kind: switch}", "topology.nodes.lan1.kind", "host | router | bridge"),
        (
            "    lan1: {kind: bridge}",
            "    lan1: {kind: bridge, role: sc}",
            "topology.nodes.lan1",
            "a bridge has no role",
        ),
        ("    lan1: {kind: bridge}", "    lanone1: {kind: bridge}", "topology.nodes.lanone1", "at most 6"),
        ("    sc1:\n", "    a-b:\n", "topology.nodes.a-b", "identifiers of at most 10"),
        (
            '      primary: pc\n      interfaces: {eth0: {addresses: ["2001:db8:1::11/64"]}}',
            '      primary: ps\n      interfaces: {eth0: {addresses: ["2001:db8:1::11/64"]}}',
            "topology.nodes.sc1.primary",
            "not a pc node",
        ),
        (
            "      role: ps\n",
            "      role: ps\n      primary: pc\n",
            "topology.nodes.ps",
            "only an sc or ss has a primary",
        ),
        ("      registers_with: ps\n", "", "topology.nodes.pc.registers_with", "a pc needs registers_with"),
        ("      registers_with: ps\n", "      registers_with: obs\n", "topology.nodes.pc.registers_with", "not a ps"),
        ('    lab_route: "2001:db8::/32"   #', "    #", "topology.nodes.pc.gateway", "needs lab_route"),
    ],
    ids=[
        "unknown-field",
        "missing-role",
        "unknown-node",
        "endpoint-shape",
        "duplicate-address",
        "outside-prefix",
        "fd00",
        "route-out",
        "gateway-off-link",
        "bridge-port-name",
        "schema",
        "schema-1",
        "role-not-a-role",
        "router-with-role",
        "unknown-kind",
        "bridge-with-role",
        "bridge-name",
        "node-name",
        "wrong-primary",
        "primary-on-ps",
        "pc-without-ps",
        "pc-registers-with-observer",
        "gateway-without-lab-route",
    ],
)
def test_broken_topologies_name_line_node_and_field(old: str, new: str, where: str, reason: str) -> None:
    assert old in ENTERPRISE
    with pytest.raises(ConfigError) as exc:
        parse_topology(ENTERPRISE.replace(old, new, 1), "broken.yaml")
    assert where in exc.value.field, exc.value
    assert reason in exc.value.reason, exc.value
    assert exc.value.source == "broken.yaml"
    assert exc.value.field.startswith("line ") or exc.value.field == "schema", exc.value


def test_broken_yaml_names_the_line() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_topology("schema: 2\nnodes: [\n", "x.yaml")
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
    assert exc.value.field == "topology.nodes.pc.interfaces.eth0"  # the first node on 2001:db8:1::/64
    assert "2001:db8:1::/64 dev eth0 proto kernel" in str(exc.value)


def test_root_routes_that_do_not_overlap_are_accepted() -> None:
    t = parse_topology(ENTERPRISE, "enterprise.yaml")
    check_root_routes(t, [*ROOT_ROUTES[1:], "unreachable 2001:db8:77::/48 metric 1024", "garbage", ""], "e")
    with pytest.raises(ConfigError, match="unreachable 2001:db8::/32"):  # a wider route covers the lab
        check_root_routes(t, ["unreachable 2001:db8::/32 metric 1024"], "e")


def test_each_primary_deploys_only_its_own_secondaries_with_its_own_policy() -> None:
    from lab.daemon import LabDaemon

    daemon = LabDaemon(parse_topology(TWO_ORGS, "two-orgs.yaml"))
    psa = daemon.inventory(daemon.topo.node("psa"))["all"]
    assert list(psa["children"]) == ["secondary_servers"]
    hosts = psa["children"]["secondary_servers"]["hosts"]
    assert hosts == {
        "ssa1": {"ansible_host": "2001:db8:a2::11", "pdmv2_keys_source": "/var/lib/pdmv2/ps/secondaries/server.json"},
        "ssa2": {"ansible_host": "2001:db8:a2::12", "pdmv2_keys_source": "/var/lib/pdmv2/ps/secondaries/server.json"},
    }
    assert psa["vars"]["pdmv2_agent_policy_rules"] == [
        {"prefix": "fe80::/10", "mode": "pdmv2-clear"},
        {"prefix": "2001:db8:a1::/64", "mode": "pdmv2-encrypted"},  # its own organisation's client site only
    ]
    pcb = daemon.inventory(daemon.topo.node("pcb"))["all"]
    assert pcb["children"]["secondary_clients"]["hosts"]["scb2"] == {
        "ansible_host": "2001:db8:b1::12",
        "pdmv2_keys_source": "/var/lib/pdmv2/pc/secondaries/2001_db8_b1__12.json",
    }
    assert [r["prefix"] for r in pcb["vars"]["pdmv2_agent_policy_rules"]] == ["fe80::/10", "2001:db8:b2::/64"]
    assert pcb["vars"]["pdmv2_agent_service_manager"] == "supervised"
