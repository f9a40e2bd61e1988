"""Independent readers of a topic (kafka-python's consumer and kcat) and a source of real
events (the seeded simulator running a jump, through the node's event pipeline)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from jumping.core.fsm import Reason
from jumping.core.outputs import Emit
from jumping.service.events import EventPipeline
from jumping.testing.sim import SimNet


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record of ``topic`` from the beginning of each partition to its current end,
    with kafka-python's KafkaConsumer (no consumer group)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout
        parts: Any = None
        while not parts and time.monotonic() < deadline:
            parts = c.partitions_for_topic(topic)
            if not parts:
                time.sleep(0.2)
        assert parts, f"topic {topic} not found"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out: list[Any] = []
        while any(c.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"timed out reading {topic}"
            for _tp, msgs in c.poll(timeout_ms=500).items():
                out.extend(msgs)
        return out
    finally:
        c.close()


def kcat_topic(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """The same topic read by kcat (librdkafka), one JSON envelope per record."""
    r = subprocess.run(
        ["kcat", "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def audit_topic(bootstrap: str, topic: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``jumpctl audit --kafka`` in its own process (``python -m jumping.audit`` is the same
    command, and works whether or not the console script is on PATH)."""
    return subprocess.run(
        [sys.executable, "-m", "jumping.audit", "--kafka", bootstrap, "--topic", topic, *extra],
        capture_output=True,
        text=True,
        timeout=90,
    )


def sim_jump(
    sinks: dict[str, list[Any]], chain_key: bytes = bytes(32), seed: int = 1
) -> dict[str, list[dict[str, Any]]]:
    """
    A client and a gateway (real cores, seeded simulated network, two paths): attach, carry
    traffic, blackhole path 0 so the session jumps to path 1, keep going, then end the
    session. Each node's events go through its own :class:`EventPipeline` (as in a node
    process) into ``sinks[side]``; returns what each pipeline emitted.
    """
    net = SimNet(seed=seed, links=2, stats_interval_s=1.0)
    net.echo = True
    pipes = {
        side: EventPipeline(
            node, sinks.get(side, []), chain_key, lambda: "default", lambda: net.now
        )
        for side, node in (("client", "c1"), ("gateway", "gw1"))
    }
    emitted: dict[str, list[dict[str, Any]]] = {"client": [], "gateway": []}
    apply = net.apply

    def apply_and_emit(side: str, outputs: list[Any]) -> None:
        for out in outputs:  # one at a time: nested outputs keep their exact order
            apply(side, [out])
            if isinstance(out, Emit):
                emitted[side].append(pipes[side].emit(out))

    net.apply = apply_and_emit  # type: ignore[method-assign]
    net.start()
    net.run_for(3.0)
    assert net.states() == ("ATTACHED", "ATTACHED")
    net.traffic(until=net.now + 6.0)
    net.run_for(1.0)
    net.links[0].up = False
    net.run_for(6.0)
    assert net.client.session is not None
    assert net.client.session.path is net.links[1].client_side
    sid = net.client.session.session_id
    net.apply("gateway", net.gateway.terminate(net.now, sid, Reason.OPERATOR_TERMINATED))
    net.run_for(1.0)
    return emitted
