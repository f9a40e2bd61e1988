"""
Kafka event sink benchmark against a real broker (deploy/kafka): events/s delivered
(acknowledged with acks=all) and the reactor-thread cost of one ``emit`` in microseconds.

    python3 tests/bench/bench_kafka_sink.py                 # starts a broker on a free port
    python3 tests/bench/bench_kafka_sink.py --bootstrap 127.0.0.1:19092   # an existing one
    python3 tests/bench/bench_kafka_sink.py --modes spool   # only the disk spool (default:
                                                            # memory, then spool, one run)

Needs the plugin importable (installed, or PYTHONPATH=.:plugins/jumping-kafka), kafka-python,
java and the jars of deploy/kafka/install.sh. Events are realistic (SESSION_STATS, ~400 B).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def event(i: int) -> dict:
    return {
        "schema": "jumping.event/1",
        "ts_ms": 1_800_000_000_000 + i,
        "event_type": "SESSION_STATS",
        "session_id": f"{i % 1000:032x}",
        "node_id": "gw1",
        "policy_version": "1",
        "state_version": 3,
        "reason_code": None,
        "seq": i,
        "prev_hash": "ab" * 32,
        "bytes_in": i * 1400,
        "bytes_out": i * 1300,
        "packets_in": i,
        "packets_out": i,
        "transport_id": "udp:10.201.2.2:51820>203.0.113.9:41622#2",
        "rtt_ms": 12,
        "loss": 0.0,
    }


def run(bootstrap: str, n: int, max_queue: int, mode: str = "memory") -> dict:
    """One sink: ``memory`` (``spool = false``) or ``spool`` (the disk spool, in a fresh
    temporary directory, default settings)."""
    from jumping import plugin
    from jumping.interfaces import IEventSink

    topic = f"bench-{uuid.uuid4().hex[:8]}"
    tmp = tempfile.mkdtemp(prefix="bench-spool-")

    def spool(name: str) -> dict:
        if mode == "memory":
            return {"spool": False}
        return {"spool_dir": os.path.join(tmp, name)}

    sink = plugin.load(
        IEventSink, "kafka", bootstrap_servers=bootstrap, topic=topic, max_queue=max_queue,
        **spool("sink"),
    )  # fmt: skip
    sink.start()
    # warm up: producer connected, topic created, metadata known
    sink.emit(event(0))
    deadline = time.monotonic() + 30
    while sink.delivered < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.delivered == 1, sink.stats()
    evs = [event(i) for i in range(1, n + 1)]

    # 1. throughput: offer events as fast as the sink accepts them (paced by the bound)
    t0 = time.perf_counter()
    emit_ns: list[int] = []
    i = 0
    while i < n:
        if sink.queue_depth >= max_queue - 1:
            time.sleep(0.0005)
            continue
        t = time.perf_counter_ns()
        sink.emit(evs[i])
        emit_ns.append(time.perf_counter_ns() - t)
        i += 1
    while sink.delivered + sink.dropped < n + 1:
        time.sleep(0.001)
    elapsed = time.perf_counter() - t0

    # 2. reactor-thread cost when the sink is idle (the normal case: events are rare)
    idle_ns = []
    for j in range(2000):
        t = time.perf_counter_ns()
        sink.emit(evs[j])
        idle_ns.append(time.perf_counter_ns() - t)
        time.sleep(0.0002)
    # 3. cost of a drop (bound reached, e.g. broker down): the worst steady case
    full = plugin.load(
        IEventSink, "kafka", bootstrap_servers="127.0.0.1:1", max_queue=1, **spool("full")
    )
    full.start()
    drop_ns = []
    for j in range(20000):
        t = time.perf_counter_ns()
        full.emit(evs[j % n])
        drop_ns.append(time.perf_counter_ns() - t)
    sink.close()
    full.close()
    sink.join(10)
    full.join(10)

    def us(xs: list[int], q: float) -> float:
        xs = sorted(xs)
        return round(xs[min(len(xs) - 1, int(q * len(xs)))] / 1000, 2)

    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "mode": mode,
        "events": n,
        "event_bytes": len(json.dumps(evs[0], sort_keys=True, separators=(",", ":"))),
        "delivered_per_s": round(n / elapsed),
        "dropped": sink.dropped,
        "emit_us_under_load": {
            "mean": round(statistics.mean(emit_ns) / 1000, 2),
            "p50": us(emit_ns, 0.5),
            "p99": us(emit_ns, 0.99),
            "max": us(emit_ns, 1.0),
        },
        "emit_us_idle": {"p50": us(idle_ns, 0.5), "p99": us(idle_ns, 0.99)},
        "emit_us_drop": {"p50": us(drop_ns, 0.5), "p99": us(drop_ns, 0.99)},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", help="an existing broker (default: start one)")
    ap.add_argument("-n", type=int, default=50_000, help="events (default 50000)")
    ap.add_argument("--max-queue", type=int, default=10_000)
    ap.add_argument("--modes", default="memory,spool", help="memory,spool (default both)")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not set(modes) <= {"memory", "spool"}:
        ap.error("--modes: memory and/or spool")

    def all_modes(bootstrap: str) -> None:
        for m in modes:
            print(json.dumps(run(bootstrap, args.n, args.max_queue, m), indent=2), flush=True)

    if args.bootstrap:
        all_modes(args.bootstrap)
        return 0
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "KAFKA_PORT": str(port)}
        broker = ["bash", str(REPO / "deploy" / "kafka" / "broker.sh")]
        r = subprocess.run([*broker, "start", d], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout + r.stderr, file=sys.stderr)
            return 1
        try:
            all_modes(f"127.0.0.1:{port}")
        finally:
            subprocess.run([*broker, "stop", d], env=env, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
