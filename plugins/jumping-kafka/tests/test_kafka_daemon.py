"""
A daemonized (twistd's default, no ``-n``) gateway and client with the ``kafka`` sink next to
the JSON-lines one: the sink's sender thread runs in the daemon (started after the fork),
every event both nodes wrote to their files reaches the topic, a SIGHUP reload shows up
there too, and SIGTERM stops both cleanly with their last events (the terminations)
flushed to the broker before the process exits.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import Broker
from kafkahelp import read_topic
from nodes import Pair, events, stop_pid

from jumping.testing.netns import Topology
from jumping.testing.nsbridge import LoopbackBridge

pytestmark = pytest.mark.netns


def test_daemonized_nodes_publish_every_event_and_flush_at_stop(
    broker: Broker, tmp_path: Path
) -> None:
    topic = broker.topic("daemon")
    broker.create_topic(topic, partitions=3)
    section = (
        f'[[events]]\nsink = "kafka"\nbootstrap_servers = "{broker.bootstrap}"\ntopic = "{topic}"\n'
    )
    with Topology("jq") as topo:
        cns, gns = topo.ns("c"), topo.ns("g")
        topo.link(cns, "ca", "10.201.1.1/24", gns, "ga", "10.201.1.2/24")
        bridges = [LoopbackBridge(ns, broker.port) for ns in (cns, gns)]
        pair = Pair(topo, tmp_path, cns, gns, ["10.201.1.2"], daemon=True,
                    policy={"version": "1"}, gw_extra=section, c_extra=section)  # fmt: skip
        try:
            pair.start()
            for role in ("gateway", "client"):
                status = Path(f"/proc/{pair.pid(role)}/status").read_text()
                threads = int(status.split("Threads:")[1].split()[0])
                assert threads >= 3, f"{role}: jsonl writer + kafka sender + producer I/O"
            r = topo.run(cns, "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.99.0.1", check=False)
            assert r.returncode == 0, r.stdout + r.stderr
            pair.gw_conf.write_text(
                pair.gw_conf.read_text().replace('version = "1"', 'version = "2"')
            )
            os.kill(pair.pid("gateway"), signal.SIGHUP)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not [
                e for e in events(pair.gw_events) if e["event_type"] == "POLICY_RELOADED"
            ]:
                time.sleep(0.05)
            for role in ("client", "gateway"):
                assert stop_pid(pair.pid(role), timeout=20), f"{role} did not stop on SIGTERM"
                assert not pair.pidfile(role).exists()
        finally:
            pair.stop()
            for b in bridges:
                b.close()
    published = [json.loads(r.value) for r in read_topic(broker.bootstrap, topic)]
    for path, node in ((pair.gw_events, "gw1"), (pair.c_events, "c1")):
        written = [(e["seq"], e["event_type"]) for e in events(path)]
        sent = sorted((e["seq"], e["event_type"]) for e in published if e["node_id"] == node)
        assert sent == written, f"{node}: the topic has {len(sent)} of {len(written)} events"
        assert "SESSION_TERMINATED" in {t for _seq, t in written}, f"{node}: no termination"
    assert any(e["event_type"] == "POLICY_RELOADED" for e in published)
