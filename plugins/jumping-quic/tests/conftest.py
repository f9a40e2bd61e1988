"""Tests of the ``quic`` transport plugin; the namespace tests need root and /dev/net/tun."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]

# the core's tunnel helpers (tests/integration/nodes.py) are reused as plain modules
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(HERE))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "netns: needs root, network namespaces and /dev/net/tun")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from jumping.testing.netns import available

    why = available()
    if why is None:
        return
    skip = pytest.mark.skip(reason=f"network namespace test: {why}")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)
