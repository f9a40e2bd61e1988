"""The tunnel MTU fits the smallest transport of the node (jumping/service/mtu.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from zope.interface import implementer

from jumping import keys, plugin
from jumping.config import load_config
from jumping.interfaces import IPathMTU
from jumping.service import mtu
from jumping.service import node as node_module
from jumping.service.node import NodeService, StartupError


def test_fit_keeps_what_fits_lowers_auto_refuses_explicit() -> None:
    small = [("transport 'quic' (10.0.0.1:443)", 1442), ("transport 'udp'", None)]
    assert mtu.fit(1400, False, "10.99.0.2/24", small) == 1400
    assert mtu.fit(1420, True, "10.99.0.2/24", small) == 1442 - mtu.OVERHEAD
    with pytest.raises(mtu.MTUError) as e:
        mtu.fit(1420, False, "10.99.0.2/24", small)
    msg = str(e.value)
    assert "quic" in msg and f"set [tun] mtu = {1442 - mtu.OVERHEAD} or less" in msg
    assert mtu.fit(1420, False, "10.99.0.2/24", [("udp", None)]) == 1420
    assert mtu.fit(9000, False, "10.99.0.2/24", []) == 9000


def test_fit_refuses_below_the_minimum_mtu_ipv6_needs_1280() -> None:
    with pytest.raises(mtu.MTUError, match="below the minimum MTU 1280"):
        mtu.fit(1420, True, "fd00::2/64", [("t", 1280 + mtu.OVERHEAD - 1)])
    assert mtu.fit(1420, True, "10.0.0.2/24", [("t", 1200)]) == 1200 - mtu.OVERHEAD


@implementer(IPathMTU)
class SmallPath:
    kind = "small"
    transport_id = "small:1"
    connected = True
    send_errors = 0
    local_address = ("127.0.0.1", 1)
    remote_address = ("127.0.0.1", 2)

    def __init__(self, max_datagram: int) -> None:
        self.max_datagram = max_datagram
        self.closed = False

    def send(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class SmallFactory:
    kind = "small"
    max_datagram = 1300

    def __init__(self, path_limit: int) -> None:
        self.path = SmallPath(path_limit)

    def connect(self, reactor: Any, remote: Any, receiver: Any, local: Any = None) -> Any:
        from twisted.internet import defer

        return defer.succeed(self.path)


class FakeTun:
    mtus: list[int] = []

    def __init__(self, reactor: Any, name: str, address: str, mtu: int, *a: Any) -> None:
        FakeTun.mtus.append(mtu)

    def close(self) -> None:
        pass


def _client(tmp_path: Path, tun_extra: str) -> Path:
    keys.write_keypair(tmp_path / "c.key")
    gw = keys.encode_key(keys.public_key(keys.generate_private_key()))
    conf = tmp_path / "c.toml"
    conf.write_text(f"""
[node]
role = "client"
node_id = "c1"
private_key = "c.key"
[tun]
name = "jmtu0"
address = "10.99.0.2/24"
{tun_extra}
[gateway]
public_key = "{gw}"
[[gateway.endpoints]]
transport = "udp"
host = "127.0.0.1"
port = 9
[[gateway.endpoints]]
transport = "small"
host = "127.0.0.1"
port = 9
""")
    return conf


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> Any:
    FakeTun.mtus = []
    monkeypatch.setattr(node_module, "TunDevice", FakeTun)
    real = plugin.load
    made: list[SmallFactory] = []

    def load(iface: Any, name: str, **options: Any) -> Any:
        if name == "small":
            made.append(SmallFactory(options.get("path_limit", 1300)))
            return made[-1]
        return real(iface, name, **options)

    monkeypatch.setattr(plugin, "load", load)
    return made


def test_service_lowers_an_unset_mtu_to_the_smallest_transport(tmp_path: Path, small: Any) -> None:
    svc = NodeService(load_config(_client(tmp_path, "")))
    svc.prepare()
    try:
        assert FakeTun.mtus == [1300 - mtu.OVERHEAD] and svc.mtu == 1300 - mtu.OVERHEAD
        assert small[0].path in svc.paths  # fits: a candidate
    finally:
        svc._close_all()


def test_service_refuses_an_explicit_mtu_that_does_not_fit(tmp_path: Path, small: Any) -> None:
    svc = NodeService(load_config(_client(tmp_path, "mtu = 1420")))
    with pytest.raises(StartupError, match=r"\[tun\] mtu = 1420 does not fit transport 'small'"):
        svc.prepare()
    assert FakeTun.mtus == [], "nothing opened"


def test_a_path_smaller_than_announced_is_never_a_candidate(tmp_path: Path, small: Any) -> None:
    conf = _client(tmp_path, "")
    conf.write_text(conf.read_text() + "options = { path_limit = 1200 }\n")
    svc = NodeService(load_config(conf))
    svc.prepare()
    try:
        path = small[0].path
        assert path.closed and path not in svc.paths
        assert svc.paths_refused_mtu == 1
    finally:
        svc._close_all()


def test_file_options_are_relative_to_the_config(tmp_path: Path) -> None:
    conf = _client(tmp_path, "")
    conf.write_text(
        conf.read_text()
        + 'options = { ca_file = "ca.pem", abs_file = "/etc/x.pem", name = "n.pem" }\n'
    )
    ep = load_config(conf).gateway.endpoints[1]  # type: ignore[union-attr]
    assert ep.options == {
        "ca_file": str(tmp_path / "ca.pem"), "abs_file": "/etc/x.pem", "name": "n.pem"
    }  # fmt: skip
