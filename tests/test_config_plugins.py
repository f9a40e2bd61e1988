"""The ``[rate_limit]`` table picks the IRateLimitPolicy plugin that caps switches."""

from __future__ import annotations

from pathlib import Path

import pytest

from jumping import keys
from jumping.config import load_config
from jumping.errors import ConfigError
from jumping.service import node as node_module
from jumping.service.node import NodeService, StartupError


class FakeTun:
    """Stands in for the TUN device: this test is about plugin wiring, not packets."""

    def __init__(self, *a: object, **k: object) -> None:
        self.fd = -1

    def close(self) -> None:
        pass


def _config(tmp_path: Path, extra: str) -> Path:
    keys.write_keypair(tmp_path / "c.key")
    gw = keys.encode_key(keys.public_key(keys.generate_private_key()))
    conf = tmp_path / "c.toml"
    conf.write_text(
        f"""
[node]
role = "client"
node_id = "c1"
private_key = "c.key"
[tun]
name = "jrl0"
address = "10.99.0.2/24"
[gateway]
public_key = "{gw}"
[[gateway.endpoints]]
transport = "udp"
host = "127.0.0.1"
port = 9
[policy]
max_switches_per_min = 5
switch_cooldown_ms = 700
{extra}
"""
    )
    return conf


@pytest.fixture(autouse=True)
def _no_tun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_module, "TunDevice", FakeTun)


def test_default_token_bucket_takes_its_caps_from_the_policy(tmp_path: Path) -> None:
    svc = NodeService(load_config(_config(tmp_path, "")))
    svc.build()
    try:
        lim = svc.built.switch_limiter  # type: ignore[union-attr]
        assert (lim.max_per_min, lim.cooldown_ms) == (5, 700)
    finally:
        svc._close_all()


def test_table_options_go_to_the_plugin(tmp_path: Path) -> None:
    extra = '[rate_limit]\npolicy = "token-bucket"\nmax_per_min = 2\nmax_keys = 10\n'
    svc = NodeService(load_config(_config(tmp_path, extra)))
    svc.build()
    try:
        lim = svc.built.switch_limiter  # type: ignore[union-attr]
        assert (lim.max_per_min, lim.cooldown_ms, lim.max_keys) == (2, 700, 10)
    finally:
        svc._close_all()


def test_unknown_policy_plugin_lists_the_installed_ones(tmp_path: Path) -> None:
    svc = NodeService(load_config(_config(tmp_path, '[rate_limit]\npolicy = "leaky"\n')))
    with pytest.raises(
        StartupError, match=r"unknown rate-limit policy plugin 'leaky'.*token-bucket"
    ):
        svc.build()


def test_bad_option_is_a_clear_error(tmp_path: Path) -> None:
    svc = NodeService(load_config(_config(tmp_path, "[rate_limit]\nmax_per_min = 0\n")))
    with pytest.raises(StartupError, match="max_per_min must be an integer >= 1"):
        svc.build()


def test_bad_plugin_name_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[rate_limit\] policy: plugin names"):
        load_config(_config(tmp_path, '[rate_limit]\npolicy = "Token Bucket"\n'))


def test_tun_offload_is_a_boolean(tmp_path: Path) -> None:
    conf = _config(tmp_path, "")
    text = conf.read_text().replace(
        'address = "10.99.0.2/24"', 'address = "10.99.0.2/24"\noffload = "yes"'
    )
    conf.write_text(text)
    with pytest.raises(ConfigError, match=r"\[tun\] offload: must be true or false, got 'yes'"):
        load_config(conf)
    conf.write_text(text.replace('"yes"', "false"))
    assert load_config(conf).tun.offload is False
