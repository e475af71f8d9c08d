"""Agent policy: the documented defaults, settings by name, and typed errors."""

from __future__ import annotations

import dataclasses

import pytest

from pdmv2 import ConfigError, Mode
from pdmv2.core.policy import Policy, parse_policy

# The defaults the module docstring (and README's example) document.
DOCUMENTED = {
    "default": Mode.OFF,
    "rotate_after": 32767,
    "on_auth_failure": "deliver",
    "mtu": 1500,
    "records": True,
    "records_per_s": 5000,
    "grace_ms": 2000,
    "key_epoch_s": 8,
    "crypto_per_prefix_per_s": 200,
    "crypto_total_per_s": 2000,
    "queue_per_prefix_pps": 5000,
    "flow_idle_s": 300,
    "global_pointer": "all-packets",
}


def test_an_empty_policy_has_the_documented_defaults() -> None:
    policy = parse_policy("version: 1\n")
    assert policy.rules == ()
    assert {name: getattr(policy, name) for name in DOCUMENTED} == DOCUMENTED


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("default", "pdmv2-encrypted"),
        ("rotate_after", 1000),
        ("on_auth_failure", "drop"),
        ("mtu", 1400),
        ("records", False),
        ("records_per_s", 20000),
        ("grace_ms", 500),
        ("key_epoch_s", 4),
        ("crypto_per_prefix_per_s", 17),
        ("crypto_total_per_s", 1700),
        ("queue_per_prefix_pps", 0),
        ("flow_idle_s", 60),
        ("global_pointer", "measured-packets"),
    ],
)
def test_each_setting_lands_in_its_own_field(name: str, value: object) -> None:
    text = f"version: 1\n{name}: {str(value).lower() if isinstance(value, bool) else value}\n"
    policy = parse_policy(text)
    expected = Mode(value) if name == "default" else value
    changed = {f.name for f in dataclasses.fields(Policy) if getattr(policy, f.name) != DOCUMENTED.get(f.name, ())}
    assert getattr(policy, name) == expected
    assert changed == {name}, changed  # no other field moved: settings are passed by name


def test_policy_is_built_by_name_only() -> None:
    with pytest.raises(TypeError):
        Policy((), Mode.OFF, 32767)  # type: ignore[misc]


def test_an_out_of_range_setting_names_its_field() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_policy("version: 1\nflow_idle_s: 0\n", "p.yaml")
    assert "flow_idle_s" in str(exc.value.field)


def test_global_pointer_scope_is_one_of_two_words() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_policy("version: 1\nglobal_pointer: pdm-only\n", "p.yaml")
    assert "global_pointer" in str(exc.value.field) and "all-packets" in str(exc.value)


def test_every_setting_is_documented_with_its_default() -> None:
    """docs/agent.md's Policy table lists each setting with the default the code has."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "agent.md").read_text()
    defaults = parse_policy("version: 1\n")
    for f in dataclasses.fields(Policy):
        if f.name == "rules":
            continue
        value = getattr(defaults, f.name)
        shown = value.value if isinstance(value, Mode) else str(value).lower() if isinstance(value, bool) else value
        assert f"| `{f.name}` | `{shown}` |" in doc or f"| `{f.name}` | {shown} |" in doc, f.name
