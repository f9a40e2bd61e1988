"""
The spool under twistd, in namespaces, with the real broker (docs/events.md, "The spool"):

- a broker outage of ``JUMPING_KAFKA_OUTAGE_S`` seconds (60 in CI) while the tunnel
  carries traffic and the gateway emits events (policy reloads), with the gateway SIGKILLed
  in the middle of it and started again: afterwards every event either node wrote, both runs
  of the gateway included, is in the topic exactly once after deduplication on
  (node_id, boot_id, seq), read by kafka-python's consumer and by kcat, and
  ``jumpctl audit --kafka`` finds the restart (from boot_id) and no gap;
- a spool that fills during an outage: drops counted, the gap announced by EVENTS_LOST once
  the broker is back, and visible in ``jumpctl audit``; the session never notices.

``tests/bench/run-kafka-outage.sh`` runs the first one for 10 minutes at >= 100 events/s
(with 10 s throughput samples instead of 2).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, wait_for
from kafkahelp import audit_topic, kcat_topic, read_topic
from nodes import events, node_env
from test_kafka_tunnel import SCRAPE, kafka_tunnel, ping, spool_backlog, tcp_mbps

pytestmark = pytest.mark.netns
OUTAGE_S = float(os.environ.get("JUMPING_KAFKA_OUTAGE_S", "60"))
RATE = float(os.environ.get("JUMPING_KAFKA_EVENT_RATE", "20"))  # reloads per second
IPERF_S = int(os.environ.get("JUMPING_KAFKA_IPERF_S", "2"))  # each throughput sample


def scrape(topo: Any, pair: Any) -> dict[str, float]:
    text = topo.run(pair.gns, "python3", "-c", SCRAPE, check=False).stdout
    out = {}
    for name in ("event_spool_backlog", "event_spool_bytes", "event_sink_dropped_total",
                 "event_sink_delivered_total"):  # fmt: skip
        m = re.search(rf'^jumping_{name}{{node="gw1",sink="kafka1"}} (\S+)$', text, re.M)
        if m:
            out[name] = float(m.group(1))
    return out


class Reloads:
    """SIGHUP to the gateway RATE times a second (one POLICY_RELOADED each), pausable."""

    def __init__(self, pair: Any) -> None:
        self.pair = pair
        self.go = threading.Event()
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            if self.go.wait(0.1) and self.pair.gw is not None and self.pair.gw.poll() is None:
                try:
                    self.pair.gw.send_signal(signal.SIGHUP)
                    self.sent += 1
                except ProcessLookupError:
                    pass
            time.sleep(1.0 / RATE)

    def __enter__(self) -> Reloads:
        self.thread.start()
        self.go.set()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def identities(records: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    out: dict[tuple[str, str, int], dict[str, Any]] = {}
    for e in records:
        key = (e["node_id"], e["boot_id"], e["seq"])
        assert out.setdefault(key, e) == e, f"two different events with one identity {key}"
    return out


def diagnosis(topo: Any, pair: Any) -> str:
    """What a failed wait shows: the sink's metrics and the gateway's Kafka log lines
    (the sink's own, kafka-python's on stderr)."""
    text = topo.run(pair.gns, "python3", "-c", SCRAPE, check=False).stdout
    parts = ["--- metrics", *[line for line in text.splitlines() if 'sink="kafka1"' in line]]
    for name in ("gateway.log", "gateway.out", "gw2.out"):
        p = pair.tmp / name
        if p.exists():
            lines = [line for line in p.read_text(errors="replace").splitlines()
                     if "kafka" in line.lower()]  # fmt: skip
            parts += [f"--- {name} (Kafka lines, last 40 of {len(lines)})", *lines[-40:]]
    return "\n".join(parts)


def wait_or_explain(topo: Any, pair: Any, cond: Any, timeout: float, what: str) -> None:
    try:
        wait_for(cond, timeout, what)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{diagnosis(topo, pair)}") from None


def restart_gateway(pair: Any) -> None:
    """SIGKILL the gateway (no shutdown at all) and start it again."""
    log = pair.tmp / "gateway.log"
    ups = log.read_text().count(" up: tun ")
    assert pair.gw is not None
    pair.gw.kill()
    pair.gw.wait(10)
    pair.gw = pair.topo.popen(
        pair.gns, *pair.cmd("gateway", pair.gw_conf), env=node_env(), log=pair.tmp / "gw2.out"
    )
    wait_for(lambda: log.read_text().count(" up: tun ") > ups, 30, "the gateway up again")


def test_a_long_outage_and_a_gateway_killed_in_it_lose_nothing(
    broker: Broker, tmp_path: Path, record_property: Any
) -> None:
    topic = broker.topic("long-outage")
    broker.create_topic(topic, partitions=3)
    report: dict[str, Any] = {"outage_s": OUTAGE_S, "rate": RATE}
    with kafka_tunnel(broker, tmp_path, topic, policy={"hysteresis": 3.0}) as (topo, pair):
        wait_for(
            lambda: scrape(topo, pair).get("event_sink_delivered_total", 0) > 0, 30, "delivery"
        )
        with Reloads(pair) as reloads:
            # "before" carries the same event load as the outage (RATE reloads/s): what is
            # compared is shipping to the broker against spooling to disk, not the cost of
            # the reloads themselves
            time.sleep(1.0)
            report["up_tcp_mbps"] = tcp_mbps(topo, pair, IPERF_S)
            broker.stop()
            t0 = time.monotonic()
            report["down_tcp_mbps"] = tcp_mbps(topo, pair, IPERF_S)
            report["down_ping"] = ping(topo, pair, 100, 0.02)
            time.sleep(max(0.0, t0 + OUTAGE_S / 2 - time.monotonic()))
            reloads.go.clear()  # let both writers take what was emitted, then kill
            time.sleep(1.0)
            before_kill = identities(events(pair.gw_events))
            report["spool_before_kill"] = scrape(topo, pair)
            restart_gateway(pair)
            reloads.go.set()
            time.sleep(max(0.0, t0 + OUTAGE_S - time.monotonic()))
            during = report["spool_at_end"] = scrape(topo, pair)
            broker.start()
            report["down_s"] = round(time.monotonic() - t0, 1)
            time.sleep(2.0)
        report["reloads"] = reloads.sent
        wait_or_explain(
            topo, pair,
            lambda: scrape(topo, pair).get("event_spool_backlog", 1) == 0,
            120,
            "the gateway's spool delivered after the outage",
        )  # fmt: skip
        wait_for(lambda: spool_backlog(topo, pair.cns, "c1") == 0, 60, "the client's spool")
        report["after"] = scrape(topo, pair)
    record_property("kafka_long_outage", report)
    print("long outage:", json.dumps(report))
    assert during.get("event_spool_bytes", 0) <= 256 << 20
    assert during.get("event_spool_backlog", 0) > 0, "the restarted gateway spooled events"
    assert report["after"]["event_sink_dropped_total"] == 0
    # every event either node wrote (both runs of the gateway) is in the topic, once
    truth = identities(events(pair.gw_events) + events(pair.c_events))
    got = identities([json.loads(r.value) for r in read_topic(broker.bootstrap, topic)])
    assert set(before_kill) <= set(got), "events spooled before the kill were not delivered"
    missing = sorted(set(truth) - set(got))
    assert missing == [], f"{len(missing)} event(s) missing, first {missing[:5]}"
    assert got == truth
    boots = {b for n, b, _s in truth if n == "gw1"}
    assert len(boots) == 2, "the gateway ran twice"
    # an independent consumer (librdkafka) sees the same events
    rows = kcat_topic(broker.bootstrap, topic)
    assert identities([json.loads(row["payload"]) for row in rows]) == got
    # and the auditor: every run complete, the restart known from boot_id
    r = audit_topic(broker.bootstrap, topic, "--no-timeline", "--tolerance-ms", "1000")
    out = r.stdout + r.stderr
    for check in ("SEQ_GAP", "SEQ_ORDER", "SEQ_START", "CHAIN", "SCHEMA"):
        assert f"VIOLATION [{check}]" not in out, out
    assert re.search(r"node gw1: \d+ events, .*restarts 1 \(runs by boot_id", out), out
    assert report["down_ping"]["lost"] <= 4, report


def test_a_full_spool_counts_announces_and_shows_its_gap(broker: Broker, tmp_path: Path) -> None:
    topic = broker.topic("spool-full")
    broker.create_topic(topic, partitions=3)
    small = "spool_max_bytes = 65536\nspool_segment_bytes = 8192\n"
    with kafka_tunnel(
        broker, tmp_path, topic, policy={"hysteresis": 3.0}, gw_spool_extra=small
    ) as (topo, pair):
        wait_for(
            lambda: scrape(topo, pair).get("event_sink_delivered_total", 0) > 0, 30, "delivery"
        )
        broker.stop()
        assert pair.gw is not None
        n = 0
        while scrape(topo, pair).get("event_sink_dropped_total", 0) < 20:
            for _ in range(20):
                pair.gw.send_signal(signal.SIGHUP)
                n += 1
                time.sleep(0.01)
            assert n < 2000, "the 64 KiB spool never filled"
        down_ping = ping(topo, pair, 50, 0.02)
        broker.start()
        wait_for(
            lambda: any(e["event_type"] == "EVENTS_LOST" for e in events(pair.gw_events)),
            120,
            "EVENTS_LOST once the spool has room",
        )
        wait_for(lambda: scrape(topo, pair).get("event_spool_backlog", 1) == 0, 120, "drained")
        final = scrape(topo, pair)
        cut = max(e["seq"] for e in events(pair.gw_events))  # delivered: the spool is empty
        changes = [e for e in events(pair.gw_events) + events(pair.c_events)
                   if e["event_type"] == "SESSION_STATE_CHANGE"]  # fmt: skip
    assert down_ping["lost"] <= 4, down_ping
    assert all(e["new_state"] != "TERMINATED" or e["reason_code"] == "OPERATOR_TERMINATED"
               for e in changes), "the node was unaffected"  # fmt: skip
    truth = identities([e for e in events(pair.gw_events) if e["seq"] <= cut])
    got = identities(
        [
            e
            for r in read_topic(broker.bootstrap, topic)
            if (e := json.loads(r.value))["node_id"] == "gw1"
        ]
    )
    missing = set(truth) - set(got)
    lost = [e for e in truth.values() if e["event_type"] == "EVENTS_LOST"]
    assert sum(e["count"] for e in lost) == final["event_sink_dropped_total"] == len(missing) > 0
    for e in lost:
        assert {
            (e["node_id"], e["lost_boot_id"], s) for s in range(e["first_seq"], e["last_seq"] + 1)
        } <= missing
    r = audit_topic(broker.bootstrap, topic, "--no-timeline")
    assert r.returncode == 1, r.stdout + r.stderr
    gaps = [line for line in r.stdout.splitlines() if line.startswith("VIOLATION [SEQ_GAP]")]
    assert gaps and all("announced by EVENTS_LOST" in line for line in gaps), r.stdout
    others = [line for line in r.stdout.splitlines()
              if line.startswith("VIOLATION") and not line.startswith("VIOLATION [SEQ_GAP]")]  # fmt: skip
    assert others == [], r.stdout
