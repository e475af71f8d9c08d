"""Fixtures for the end-to-end tests: namespaces, agents, always removed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pdmv2.core.prseq import PRSEQ_PERIOD
from tests.e2e.topo import AgentTopo, env_ok


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def topo(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[AgentTopo]:
    reason = env_ok()
    if reason:
        pytest.skip(reason)
    rotate = getattr(request, "param", PRSEQ_PERIOD)
    t = AgentTopo(tmp_path, rotate=rotate)
    try:
        yield t
    finally:
        t.close()
