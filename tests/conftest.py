"""Shared test configuration: network tests need root, namespaces and /dev/net/tun."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# tests/integration/nodes.py and similar helpers are imported as plain modules
sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))

# No per-example deadline anywhere: hypothesis's 200 ms default is a timed assertion, and on a
# loaded 2-core machine an example of the audit or data-plane properties can take longer.
# Speed is measured by tests/bench, never asserted here. Explicit @settings inherit this.
settings.register_profile("jumping", deadline=None)
settings.load_profile("jumping")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from jumping.testing.netns import available

    why = available()
    if why is None:
        return
    skip = pytest.mark.skip(reason=f"network namespace test: {why}")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=[socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def udp_pair(request):  # noqa: ANN001, ANN201
    """Two UDP sockets bound on loopback (IPv4, IPv6): (sender, non-blocking receiver)."""
    family = request.param
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    a = socket.socket(family, socket.SOCK_DGRAM)
    b = socket.socket(family, socket.SOCK_DGRAM)
    try:
        a.bind((host, 0))
        b.bind((host, 0))
    except OSError as e:
        a.close()
        b.close()
        pytest.skip(f"no {host} here: {e}")
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()
