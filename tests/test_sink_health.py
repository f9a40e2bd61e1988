"""Sinks seen from the node: each sink's health in ``jumpctl status`` and the metrics, the
state directory the spool lives in, and EVENTS_LOST, the announcement of what a sink
dropped (docs/events.md; docs/operations.md, "Event sinks")."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from zope.interface import implementer

from jumping import keys, plugin, schema
from jumping.config import STATE_DIR, load_config
from jumping.ctl import format_status
from jumping.interfaces import IDurableEventSink, IEventSink, ISinkHealth
from jumping.service import commands
from jumping.service import node as node_module
from jumping.service.metrics import Metrics
from jumping.service.node import NodeService, StartupError


class Tun:
    def __init__(self, *a: object, **k: object) -> None:
        self.fd = -1
        self.write_errors = 0
        self.name = "jsh0"

    def close(self) -> None:
        pass


@implementer(IEventSink, ISinkHealth, IDurableEventSink)
class LossySink:
    """An IEventSink that dropped seq 40..49 of one run and says so once."""

    name = "lossy"
    delivered = dropped = queue_depth = 0

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.pending = [("ab" * 16, 40, 49, 10)]

    def emit(self, event: dict[str, Any]) -> None:
        self.got.append(event)

    def bind_state_dir(self, path: str) -> None:
        return None

    def take_losses(self) -> list[tuple[str | None, int, int, int]]:
        out, self.pending = self.pending, []
        return out

    def health(self) -> dict[str, Any]:
        return {"state": "degraded", "last_error": "disk full", "last_error_at": 1.8e9}


def gateway(tmp_path: Path, extra: str = "") -> NodeService:
    if not (tmp_path / "g.key").exists():
        keys.write_keypair(tmp_path / "g.key")
    peer = keys.encode_key(keys.public_key(keys.generate_private_key()))
    conf = tmp_path / "g.toml"
    conf.write_text(f"""
[node]
role = "gateway"
node_id = "g1"
private_key = "g.key"
{extra}
[tun]
name = "jsh0"
address = "10.97.0.1/24"
[[listen]]
transport = "udp"
host = "127.0.0.1"
port = 0
[[peers]]
public_key = "{peer}"
allowed_ips = ["10.97.0.2/32"]
[[events]]
sink = "jsonl"
path = "{tmp_path / "events.jsonl"}"
""")
    return NodeService(load_config(conf))


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(node_module, "TunDevice", Tun)
    s = gateway(tmp_path)
    s.build()
    yield s
    s._close_all()


def test_events_lost_is_announced_to_every_sink_and_validates(svc: NodeService) -> None:
    lossy = LossySink()
    svc.sinks.append(lossy)
    svc.events.sinks.append(lossy)  # type: ignore[union-attr]
    svc.announce_losses()
    svc.announce_losses()  # once: the sink handed the range over
    lost = [e for e in lossy.got if e["event_type"] == "EVENTS_LOST"]
    assert len(lost) == 1
    e = lost[0]
    assert schema.validate(e) == [], e
    assert (e["sink"], e["first_seq"], e["last_seq"], e["count"]) == ("lossy1", 40, 49, 10)
    assert e["lost_boot_id"] == "ab" * 16 and e["session_id"] is None
    assert e["boot_id"] == svc.events.boot_id  # type: ignore[union-attr]


def test_status_and_metrics_show_each_sinks_health(svc: NodeService, tmp_path: Path) -> None:
    svc.sinks.append(LossySink())
    svc.sinks[0].start()
    svc.core = svc.built
    svc.started_at = svc.reactor.seconds()
    st = commands.status(svc)
    jsonl, lossy = st["sinks"]
    assert jsonl["state"] == "ok" and jsonl["last_error"] is None
    assert lossy["state"] == "degraded" and lossy["last_error"] == "disk full"
    text = format_status(st)
    assert "event sink: jsonl ok: delivered 0, dropped 0, queued 0" in text
    assert "event sink: lossy degraded" in text
    assert "  last error (2027-01-15 08:00:00 UTC): disk full" in text
    metrics = generate_latest(Metrics(svc).registry).decode()
    assert 'jumping_event_sink_state{node="g1",sink="lossy1",state="degraded"} 1.0' in metrics
    assert 'jumping_event_sink_state{node="g1",sink="jsonl0",state="ok"} 1.0' in metrics


def test_a_sink_that_cannot_write_is_failing_then_degraded_once_it_delivers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.jsonl"
    sink = plugin.load(IEventSink, "jsonl", path=str(path))
    sink.start()
    try:
        sink._writer.note_error(OSError(28, "No space left on device"))
        h = sink.health()
        assert h["state"] == "failing" and "No space left" in h["last_error"]
        sink.emit({"seq": 1})
        deadline = time.monotonic() + 10
        while sink.delivered < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sink.health()["state"] == "degraded"  # delivering again, the error is recent
    finally:
        sink.close()


def test_state_dir_default_and_relative(tmp_path: Path) -> None:
    keys.write_keypair(tmp_path / "g.key")
    conf = tmp_path / "c.toml"
    base = 'role = "client"\nnode_id = "c9"\nprivate_key = "g.key"\n'
    gw = keys.encode_key(keys.public_key(keys.generate_private_key()))
    rest = (
        f'[tun]\nname = "j0"\naddress = "10.97.0.2/24"\n[gateway]\npublic_key = "{gw}"\n'
        '[[gateway.endpoints]]\ntransport = "udp"\nhost = "127.0.0.1"\nport = 1\n'
    )
    conf.write_text(f"[node]\n{base}{rest}")
    assert load_config(conf).state_dir == STATE_DIR / "c9" == Path("/var/lib/jumping/c9")
    conf.write_text(f'[node]\n{base}state_dir = "state"\n{rest}')
    assert load_config(conf).state_dir == tmp_path / "state"


def test_the_state_dir_is_made_for_the_nodes_user_or_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_module, "TunDevice", Tun)
    svc = gateway(tmp_path, f'state_dir = "{tmp_path / "var" / "g1"}"')
    svc.build()
    assert svc.state_users == []  # jsonl keeps no state: nothing is created
    svc.state_users = [object()]
    if os.geteuid() == 0:
        svc.run_as = (65534, 65534)
    svc._make_state_dir()
    st = (tmp_path / "var" / "g1").stat()
    assert stat.S_IMODE(st.st_mode) == 0o750
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (65534, 65534)
    (tmp_path / "file").write_text("")
    bad = gateway(tmp_path, f'state_dir = "{tmp_path / "file" / "g1"}"')
    bad.build()
    bad.state_users = [object()]
    with pytest.raises(StartupError, match=r"^state directory .*/file/g1: cannot create it: "):
        bad._make_state_dir()
    svc._close_all()
    bad._close_all()
