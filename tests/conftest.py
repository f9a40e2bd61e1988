"""Shared test configuration: network tests need root, namespaces and /dev/net/tun."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/integration/nodes.py and similar helpers are imported as plain modules
sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from jumping.testing.netns import available

    why = available()
    if why is None:
        return
    skip = pytest.mark.skip(reason=f"network namespace test: {why}")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)
