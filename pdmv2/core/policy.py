"""Agent policy (pure): which option each destination gets, and how bad input is handled.

YAML, validated before the agent starts; every error names the file, the line and the field:

    version: 1
    default: off                       # off | pdm | pdmv2-clear | pdmv2-encrypted
    rules:                             # longest prefix of the destination wins
      - prefix: fe80::/10
        mode: pdmv2-clear              # the draft allows clear PDM on link-local (§5)
      - prefix: 2001:db8:2::/48
        mode: pdmv2-encrypted
    rotate_after: 32767                # packets per key epoch (1..32767)
    on_auth_failure: deliver           # deliver | drop (draft §7)
    mtu: 1500                          # packets that would exceed it go out without the option
    records: true                      # per-packet JSON lines in the run directory
    records_per_s: 5000                # native path: records Python takes per second; beyond, sampled by flow
    grace_ms: 2000                     # a peer's previous key stays usable this long after it rotates
    key_epoch_s: 8                     # key epoch length; both ends must agree (docs/protocol.md §8)
    crypto_per_prefix_per_s: 200       # key derivations / failed opens a peer /64 may cause per second
    crypto_total_per_s: 2000           # the same for all peers together
    queue_per_prefix_pps: 5000         # packets a /64 may send into the agent per second (0: no limit)
    flow_idle_s: 300                   # flows (and their metrics) forgotten after this long idle
    global_pointer: all-packets        # all-packets | measured-packets (what the Global Pointer counts)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from .config import line_of, load_yaml
from .errors import ConfigError
from .flow import Mode
from .prseq import PRSEQ_PERIOD
from .ratelimit import DEFAULT_PER_PREFIX_PER_S, DEFAULT_TOTAL_PER_S

__all__ = ["Policy", "Rule", "ModeTable", "parse_policy", "DEFAULT_POLICY_TEXT"]

DEFAULT_POLICY_TEXT = """version: 1
default: off
rules:
  - prefix: fe80::/10
    mode: pdmv2-clear
"""

_GP_SCOPES = ("all-packets", "measured-packets")

_KEYS = {
    "version",
    "default",
    "rules",
    "rotate_after",
    "on_auth_failure",
    "mtu",
    "records",
    "records_per_s",
    "grace_ms",
    "key_epoch_s",
    "crypto_per_prefix_per_s",
    "crypto_total_per_s",
    "queue_per_prefix_pps",
    "flow_idle_s",
    "global_pointer",
    "__line__",
}


@dataclass(frozen=True, slots=True)
class Rule:
    """Destination prefix and the mode its packets get."""

    prefix: ipaddress.IPv6Network
    """Destination prefix."""
    mode: Mode
    """Option put into packets to it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """Everything the agent decides per packet (built by keyword: most fields are adjacent ints)."""

    rules: tuple[Rule, ...]
    """Longest prefix first."""
    default: Mode = Mode.OFF
    """Mode when no rule matches."""
    rotate_after: int = PRSEQ_PERIOD
    """Packets per key epoch before rotation."""
    on_auth_failure: str = "deliver"
    """deliver or drop a packet whose option fails to open."""
    mtu: int = 1500
    """Largest packet the agent makes."""
    records: bool = True
    """Write per-packet JSON lines."""
    records_per_s: int = 5000
    """Native path: records the Python side takes per second (metrics, stats, JSON lines); beyond
    that the ring samples whole flows, so Python's CPU stays off the packets' cores under a flood."""
    grace_ms: int = 2000
    """How long the previous key of a peer stays usable after it rotates."""
    key_epoch_s: int = 8
    """Length of a key epoch in seconds (the Kri follows the wall clock); the same on every host."""
    crypto_per_prefix_per_s: int = DEFAULT_PER_PREFIX_PER_S
    """Expensive crypto work (new keys, failed opens) one peer /64 may cause per second."""
    crypto_total_per_s: int = DEFAULT_TOTAL_PER_S
    """The same for all peers together."""
    queue_per_prefix_pps: int = 5000
    """Arriving packets per second one /64 may send into the agent; beyond, they pass unqueued (0: off)."""
    flow_idle_s: int = 300
    """Seconds without traffic after which a flow, its metrics and statistics are forgotten."""
    global_pointer: str = "all-packets"
    """What the Global Pointer counts: ``all-packets`` (every IPv6 packet the host sends, as the draft
    defines it: every packet but loopback passes the agent) or ``measured-packets`` (only TCP, UDP
    and ICMPv6 echo pass the agent, and the Global Pointer counts those)."""

    def __post_init__(self) -> None:
        lengths = [r.prefix.prefixlen for r in self.rules]
        if lengths != sorted(lengths, reverse=True):
            raise ConfigError("policy", "rules", "must be ordered longest prefix first (parse_policy does it)")

    def mode_for(self, dst: bytes) -> Mode:
        """Mode for a destination address (16 octets): the longest matching prefix, else the default."""
        addr = ipaddress.IPv6Address(dst)
        return next((r.mode for r in self.rules if addr in r.prefix), self.default)

    @property
    def max_option_size(self) -> int:
        """Largest option (with Type/Length) any rule can add."""
        return max([r.mode.option_size for r in self.rules] + [self.default.option_size])


_DEFAULTS = Policy(rules=())  # what a setting missing from the file gets
_CACHE_SIZE = 4096  # destinations remembered; cleared when full (a lookup is cheap, memory is not)


class ModeTable:
    """Per-packet lookup of a policy's mode by destination: integer masks and a bounded cache."""

    __slots__ = ("_cache", "_default", "_nets")

    def __init__(self, policy: Policy) -> None:
        self._nets = [(int(r.prefix.network_address), int(r.prefix.netmask), r.mode) for r in policy.rules]
        self._default = policy.default
        self._cache: dict[bytes, Mode] = {}

    def mode_for(self, dst: bytes) -> Mode:
        """Mode for a destination address (16 octets); the same answer as Policy.mode_for."""
        mode = self._cache.get(dst)
        if mode is None:
            value = int.from_bytes(dst, "big")
            mode = next((m for net, mask, m in self._nets if value & mask == net), self._default)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[dst] = mode
        return mode


def _mode(value: Any, source: str, where: str) -> Mode:
    try:
        return Mode(str(value).lower() if value is not False else "off")
    except ValueError:
        choices = " | ".join(m.value for m in Mode)
        raise ConfigError(source, where, f"{value!r} is not one of {choices}") from None


def _int(doc: dict[str, Any], name: str, lo: int, hi: int, default: int, source: str) -> int:
    value = doc.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(source, f"{line_of(doc)} {name}".strip(), f"must be an integer in {lo}..{hi}")
    return value


def parse_policy(text: str, source: str = "policy") -> Policy:
    """Parse and validate a policy file."""
    doc = load_yaml(text, source)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(source, "document", "must be a mapping")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise ConfigError(source, f"{line_of(doc)} {unknown[0]}".strip(), "unknown setting")
    if doc.get("version", 1) != 1:
        raise ConfigError(source, f"{line_of(doc)} version".strip(), "only version 1 is known")
    rules = []
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(source, f"{line_of(doc)} rules".strip(), "must be a list")
    seen: set[ipaddress.IPv6Network] = set()
    for i, item in enumerate(raw_rules):
        where = f"{line_of(item)} rules[{i}]".strip()
        if not isinstance(item, dict):
            raise ConfigError(source, where, "must be a mapping with prefix and mode")
        extra = sorted(set(item) - {"prefix", "mode", "__line__"})
        if extra:
            raise ConfigError(source, f"{where}.{extra[0]}", "unknown setting")
        try:
            prefix = ipaddress.IPv6Network(str(item.get("prefix")))
        except ValueError:
            raise ConfigError(source, f"{where}.prefix", f"{item.get('prefix')!r} is not an IPv6 prefix") from None
        if prefix in seen:
            raise ConfigError(source, f"{where}.prefix", f"{prefix} appears twice")
        seen.add(prefix)
        if "mode" not in item:
            raise ConfigError(source, f"{where}.mode", "missing")
        rules.append(Rule(prefix, _mode(item["mode"], source, f"{where}.mode")))
    d = _DEFAULTS
    on_fail = doc.get("on_auth_failure", d.on_auth_failure)
    if on_fail not in ("deliver", "drop"):
        raise ConfigError(source, f"{line_of(doc)} on_auth_failure".strip(), "must be deliver or drop")
    records = doc.get("records", d.records)
    if not isinstance(records, bool):
        raise ConfigError(source, f"{line_of(doc)} records".strip(), "must be true or false")
    gp_scope = doc.get("global_pointer", d.global_pointer)
    if gp_scope not in _GP_SCOPES:
        raise ConfigError(source, f"{line_of(doc)} global_pointer".strip(), "must be all-packets or measured-packets")
    return Policy(
        rules=tuple(sorted(rules, key=lambda r: r.prefix.prefixlen, reverse=True)),
        default=_mode(doc.get("default", d.default.value), source, f"{line_of(doc)} default".strip()),
        rotate_after=_int(doc, "rotate_after", 1, PRSEQ_PERIOD, d.rotate_after, source),
        on_auth_failure=on_fail,
        mtu=_int(doc, "mtu", 1280, 65535, d.mtu, source),
        records=records,
        records_per_s=_int(doc, "records_per_s", 100, 1_000_000, d.records_per_s, source),
        grace_ms=_int(doc, "grace_ms", 0, 3_600_000, d.grace_ms, source),
        key_epoch_s=_int(doc, "key_epoch_s", 1, 3600, d.key_epoch_s, source),
        crypto_per_prefix_per_s=_int(doc, "crypto_per_prefix_per_s", 1, 1_000_000, d.crypto_per_prefix_per_s, source),
        crypto_total_per_s=_int(doc, "crypto_total_per_s", 1, 10_000_000, d.crypto_total_per_s, source),
        queue_per_prefix_pps=_int(doc, "queue_per_prefix_pps", 0, 10_000_000, d.queue_per_prefix_pps, source),
        flow_idle_s=_int(doc, "flow_idle_s", 1, 86_400, d.flow_idle_s, source),
        global_pointer=gp_scope,
    )
