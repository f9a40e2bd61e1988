"""OCSF export: every event of a full scenario (both nodes of a failover with traffic, a
replay flood, a policy reload) and every documented event type maps to an OCSF 1.5.0
event that validates offline against the JSON Schema of its class (generated from
ocsf-emitter's models of OCSF 1.5.0) and ocsf-emitter's class invariants (type_uid,
category, names); a malformed event is rejected on both sides; ``jumpctl export --ocsf``."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from jumping import cli, ocsf
from jumping.core.outputs import Emit
from jumping.service.events import EventPipeline
from jumping.testing.sim import SimNet, capture, ipv4

ocsf_emitter = pytest.importorskip("ocsf_emitter")
from ocsf_emitter import models, validate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = {
    ocsf.NETWORK_ACTIVITY: models.NetworkActivity,
    ocsf.AUTHENTICATION: models.Authentication,
    ocsf.DETECTION_FINDING: models.DetectionFinding,
    ocsf.CONFIG_CHANGE: models.DeviceConfigStateChange,
}
SCHEMAS = {uid: m.model_json_schema() for uid, m in MODEL.items()}


def check(o: dict[str, Any]) -> None:
    """Valid OCSF 1.5.0: the class's JSON Schema, then the model and its invariants."""
    jsonschema.validate(o, SCHEMAS[o["class_uid"]])
    validate(MODEL[o["class_uid"]].model_validate(o))
    assert o["metadata"]["version"] == "1.5.0" == ocsf_emitter.defaults.OCSF_SCHEMA_VERSION


def scenario() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    class Sink:
        def emit(self, event: dict[str, Any]) -> None:
            out.append(event)

    pipes: dict[str, EventPipeline] = {}

    class Net(SimNet):
        def apply(self, side: str, outputs: list[Any]) -> None:
            for o in outputs:
                if isinstance(o, Emit):
                    pipes[side].emit(o)
                super().apply(side, [o])

    net = Net(seed=5, links=2)
    for side in ("client", "gateway"):
        pipes[side] = EventPipeline(
            net.core(side).node_id, [Sink()], bytes(32), lambda: "7", lambda: net.now
        )
    net.echo = True
    net.start()
    net.run_for(2.0)
    net.traffic(until=net.now + 4.0)
    net.run_for(1.0)
    packet = capture(net, "client", ipv4("10.99.0.2", "10.99.0.1", b"r" * 40))
    for _ in range(20):
        net.gateway.receive(net.now, net.links[0].gateway_side, packet)  # replays
    net.links[0].up = False
    net.run_for(12.0)
    net.apply("gateway", net.gateway.set_policy(net.now, net.policy))
    return out


def test_every_event_of_a_full_scenario_maps_and_validates() -> None:
    events = scenario()
    types = {e["event_type"] for e in events}
    assert {"TRANSPORT_SWITCH", "SECURITY_EVENT", "POLICY_RELOADED", "REATTACH_RESULT"} <= types
    exporter = ocsf.Exporter()
    mapped = [exporter.map(e) for e in events]
    for o in mapped:
        check(o)
    classes = {o["class_uid"] for o in mapped}
    assert classes == set(MODEL), classes
    for e, o in zip(events, mapped, strict=True):
        assert o["unmapped"]["jumping"] == e  # seq, prev_hash and all: the chain stays
        assert o["metadata"]["sequence"] == e["seq"] and o["time"] == e["ts_ms"]
        assert o["metadata"]["log_provider"] == f"{e['node_id']}@{e['boot_id']}"
        assert o["metadata"]["uid"] == f"{e['node_id']}@{e['boot_id']}:{e['seq']}"
    sec = [o for o in mapped if o["class_uid"] == ocsf.DETECTION_FINDING]
    assert any(o["finding_info"]["title"] == "REPLAY_DETECTED" for o in sec)
    switch = [o for o in mapped if o["unmapped"]["jumping"]["event_type"] == "TRANSPORT_SWITCH"]
    assert all(o["duration"] == o["unmapped"]["jumping"]["outage_ms"] for o in switch)


def test_every_documented_event_type_maps() -> None:
    path = ROOT / "tests" / "data" / "audit" / "clean.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    seen = set()
    for e in events:
        check(ocsf.to_ocsf(e))
        seen.add(e["event_type"])
    from jumping import schema

    assert seen == set(schema.event_types())


def test_a_malformed_event_is_rejected() -> None:
    good = scenario()[0]
    for bad in ({**good, "seq": -1}, {k: v for k, v in good.items() if k != "ts_ms"}):
        with pytest.raises(ocsf.OcsfMappingError, match="jumping.event/1"):
            ocsf.to_ocsf(bad)
    o = ocsf.to_ocsf(good)
    check(o)
    for change in (
        lambda x: x.pop("time"),
        lambda x: x.update(activity_id=42),
        lambda x: x["metadata"].pop("product"),
        lambda x: x.update(time="yesterday"),
    ):
        broken = copy.deepcopy(o)
        change(broken)
        with pytest.raises((jsonschema.ValidationError, ocsf_emitter.errors.InvalidFindingError)):
            check(broken)
    wrong_type = {**copy.deepcopy(o), "type_uid": o["type_uid"] + 1}
    with pytest.raises(Exception):  # noqa: B017 - a JSON Schema enum or an invariant
        check(wrong_type)


def test_jumpctl_export_ocsf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "events.jsonl"
    events = scenario()
    src.write_text("".join(json.dumps(e) + "\n" for e in events))
    out = tmp_path / "ocsf.jsonl"
    assert cli.main(["export", "--ocsf", str(src), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == len(events)
    for line in lines:
        check(json.loads(line))
    src.write_text(src.read_text() + '{"event_type": "SESSION_STATS"}\n')
    assert cli.main(["export", "--ocsf", str(src), "--out", str(out)]) == 2
    assert f"{src}:{len(events) + 1}:" in capsys.readouterr().err


def test_the_uid_is_the_event_identity_across_restarts_and_partial_exports() -> None:
    """metadata.uid is (node_id, boot_id, seq): two runs of one node that reuse seq numbers get
    different uids, and an export that starts in the middle of a run gives the uids a full
    export gives. Events without boot_id (older nodes) keep the ts_ms-of-seq-0 identity."""
    events = scenario()
    node = events[0]["node_id"]
    run1 = [e for e in events if e["node_id"] == node]
    run2 = [{**e, "boot_id": "f" * 32} for e in run1]  # the same node started again
    full = [o["metadata"]["uid"] for o in map(ocsf.Exporter().map, run1 + run2)]
    assert len(set(full)) == len(full) == 2 * len(run1)
    tail = [o["metadata"]["uid"] for o in map(ocsf.Exporter().map, run1[3:])]
    assert tail == full[3 : len(run1)]
    assert all("?" not in uid for uid in tail)
    old = [{k: v for k, v in e.items() if k != "boot_id"} for e in run1]
    legacy = [o["metadata"]["log_provider"] for o in map(ocsf.Exporter().map, old)]
    assert set(legacy) == {f"{node}@{run1[0]['ts_ms']}"}
    assert ocsf.Exporter().map(old[3])["metadata"]["log_provider"] == f"{node}@?"
