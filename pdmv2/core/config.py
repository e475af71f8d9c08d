"""YAML with line numbers, for configuration errors that say where (pure)."""

from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["load_yaml", "line_of"]

_LINE = "__line__"


class _LineLoader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader that remembers the line of every mapping."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping: dict[str, Any] = dict(loader.construct_mapping(node, deep=True))
    mapping[_LINE] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML; a syntax error becomes ConfigError naming the line."""
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "yaml"
        problem = getattr(exc, "problem", None)
        raise ConfigError(source, where, f"not valid YAML: {problem}" if problem else "not valid YAML") from None
    except RecursionError:
        raise ConfigError(source, "yaml", "nested too deeply") from None


def line_of(node: Any) -> str:
    """'line N' of a mapping loaded by load_yaml, or ''."""
    if isinstance(node, dict) and _LINE in node:
        return f"line {node[_LINE]}"
    return ""
