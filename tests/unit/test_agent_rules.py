"""The agent's ip6tables rules, as argument lists (no root needed)."""

from __future__ import annotations

from pdmv2.agent.rules import IN, OUT, guard_spec, rule_specs


def test_the_per_prefix_guard_comes_before_the_queue_rule() -> None:
    specs = rule_specs(7, 1420, per_prefix_pps=5000)
    incoming = [s for s in specs if IN in s and "-A" in s]
    guard = next(i for i, s in enumerate(incoming) if "hashlimit" in s)
    queue = next(i for i, s in enumerate(incoming) if "NFQUEUE" in s)
    assert guard < queue
    rule = incoming[guard]
    assert rule[rule.index("--hashlimit-srcmask") + 1] == "64"
    assert rule[rule.index("--hashlimit-above") + 1] == "5000/sec"
    assert rule[-2:] == ["-j", "RETURN"]  # beyond the rate: delivered unqueued, unmeasured


def test_no_guard_when_the_policy_turns_it_off() -> None:
    assert not any("hashlimit" in s for s in rule_specs(7, 1420, per_prefix_pps=0))
    assert guard_spec(100)[guard_spec(100).index("--hashlimit-burst") + 1] == "200"


def test_every_egress_packet_but_loopback_is_queued_unless_policy_says_measured_only() -> None:
    out = [s for s in rule_specs(7, 1420) if s[:4] == ["-t", "filter", "-A", OUT]]
    assert out[0][4:] == ["-o", "lo", "-j", "RETURN"]
    assert [s[4:6] for s in out[1:]] == [["-j", "NFQUEUE"]]  # one rule, no protocol match
    narrow = [s for s in rule_specs(7, 1420, all_egress=False) if s[:4] == ["-t", "filter", "-A", OUT]]
    assert [s[4:6] for s in narrow[1:]] == [["-p", "tcp"], ["-p", "udp"], ["-p", "ipv6-icmp"], ["-p", "ipv6-icmp"]]
