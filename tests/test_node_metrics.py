"""What the Prometheus collector exports comes from where things are counted: TUN write
errors from the device, takeovers from the core, control actions from the service."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from jumping import keys
from jumping.config import load_config
from jumping.service import node as node_module
from jumping.service.metrics import NodeCollector
from jumping.service.node import NodeService


class CountingTun:
    """The device's own counter is the only one: the service must read it."""

    def __init__(self, *a: object, **k: object) -> None:
        self.fd = -1
        self.write_errors = 0

    def close(self) -> None:
        pass


def _gateway(tmp_path: Path) -> NodeService:
    keys.write_keypair(tmp_path / "g.key")
    peer = keys.encode_key(keys.public_key(keys.generate_private_key()))
    conf = tmp_path / "g.toml"
    conf.write_text(
        f"""
[node]
role = "gateway"
node_id = "g1"
private_key = "g.key"
[tun]
name = "jmet0"
address = "10.98.0.1/24"
[[listen]]
transport = "udp"
host = "127.0.0.1"
port = 0
[[peers]]
public_key = "{peer}"
allowed_ips = ["10.98.0.2/32"]
[policy]
version = "one"
"""
    )
    return NodeService(load_config(conf))


def _sample(text: str, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def test_collector_reads_the_real_counters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_module, "TunDevice", CountingTun)
    svc = _gateway(tmp_path)
    svc.prepare()
    svc.core = svc.built  # serving (what _serve does once every plugin started)
    try:
        reg = CollectorRegistry(auto_describe=False)
        reg.register(NodeCollector(svc))  # type: ignore[arg-type]
        svc.tun.write_errors = 3  # type: ignore[union-attr]
        svc.core.counters["sessions_adopted"] += 2  # type: ignore[union-attr]
        svc.core.counters["adopt_refused:wrong_client"] += 1  # type: ignore[union-attr]
        assert svc.reload_policy()
        (tmp_path / "g.toml").write_text("not toml [")
        assert not svc.reload_policy()
        text = generate_latest(reg).decode()
        assert _sample(text, "jumping_tun_write_errors_total", node="g1") == 3
        assert _sample(text, "jumping_takeovers_total", outcome="taken_over") == 2
        assert _sample(text, "jumping_takeovers_total", outcome="wrong_client") == 1
        for result in ("applied", "rejected"):
            got = _sample(text, "jumping_control_actions_total", action="reload", result=result)
            assert got == 1, (result, got)
        assert svc.status()["tun_write_errors"] == 3
    finally:
        svc._close_all()
