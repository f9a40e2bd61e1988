"""
Claims per second, claim latency (p50/p99) and etcd storage per session for the ``etcd``
ownership backend: N sessions (default 10 000) spread over 3 backends ("gateways"), each
keeping ``--window`` claims in flight, against a real 3-member cluster. Then every session
is taken over by the next gateway, as after a gateway failure: read the record, claim it by
compare-and-swap on its fencing token (the ownership half of a session takeover; the client's
resume handshake adds one round trip and the Noise work on top). Handovers/s and their
latency (read + CAS) p50/p99 are reported the same way.

    python3 plugins/jumping-etcd/bench/bench_claims.py                 # own cluster on tmpfs
    python3 plugins/jumping-etcd/bench/bench_claims.py --data-dir /var/tmp/etcd-bench  # disk
    python3 plugins/jumping-etcd/bench/bench_claims.py --endpoints http://127.0.0.1:23791,...

Without ``--endpoints`` it starts a cluster with deploy/cluster/etcd.sh (ports 23791-23796)
and stops it at the end; ``--secure`` starts it secure (etcd.sh ``ETCD_SECURE=1``: TLS with
client certificates, etcd authentication) and the backends log in as its user ``jumping``.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
ETCD_SH = REPO / "deploy" / "cluster" / "etcd.sh"


def db_size(endpoints: str, data_dir: str | None) -> tuple[int, int]:
    """(dbSize, dbSizeInUse) of the first member, bytes."""
    # etcd.sh ctl brings the cluster's credentials along when it was started secure
    ctl = ["bash", str(ETCD_SH), "ctl", data_dir] if data_dir else ["etcdctl"]
    out = subprocess.run(
        [*ctl, "--endpoints", endpoints.split(",")[0], "endpoint", "status", "-w", "json"],
        capture_output=True, text=True, check=True, env={**os.environ, "ETCDCTL_API": "3"},
    ).stdout  # fmt: skip
    st = json.loads(out)[0]["Status"]
    return int(st["dbSize"]), int(st.get("dbSizeInUse", st["dbSize"]))


def security(args: argparse.Namespace) -> dict[str, str]:
    if not args.secure:
        return {}
    tls = Path(args.data_dir) / "tls"
    return {"ca_cert": str(tls / "ca.pem"), "cert": str(tls / "client.pem"),
            "key": str(tls / "client.key"), "user": "jumping",
            "password_file": str(tls / "jumping.password")}  # fmt: skip


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def run(args: argparse.Namespace, endpoints: str) -> dict[str, Any]:
    from jumping_etcd.backend import EtcdOwnership
    from twisted.internet import defer

    eps = endpoints.split(",")
    # each gateway prefers a different member, as gateways spread over a cluster would
    backends = [
        EtcdOwnership(
            node_id=f"gw{i + 1}",
            endpoints=eps[i % len(eps) :] + eps[: i % len(eps)],
            threads=args.window,
            max_sessions=args.sessions,
            **security(args),
        )  # fmt: skip
        for i in range(3)
    ]
    await defer.gatherResults([b.start() for b in backends])  # leases, threads, watches
    sids = [secrets.token_hex(16) for _ in range(args.sessions)]
    latencies: list[float] = []
    before = db_size(endpoints, args.ctl_dir)

    async def gateway(b: Any, mine: list[str]) -> None:
        queue = list(reversed(mine))

        async def worker() -> None:
            while queue:
                s = queue.pop()
                rec = {"client_public_key": secrets.token_hex(32), "state_version": 1,
                       "owner": b.node_id}  # fmt: skip
                t = time.perf_counter()
                await b.claim(s, rec, None)
                latencies.append(time.perf_counter() - t)

        await defer.gatherResults(
            [defer.ensureDeferred(worker()) for _ in range(args.window)], consumeErrors=True
        )

    t0 = time.perf_counter()
    await defer.gatherResults(
        [defer.ensureDeferred(gateway(b, sids[i::3])) for i, b in enumerate(backends)],
        consumeErrors=True,
    )
    elapsed = time.perf_counter() - t0
    after = db_size(endpoints, args.ctl_dir)

    # takeover: gateway i+1 adopts gateway i's sessions (get, then CAS on the token)
    handovers: list[float] = []

    async def adopt(b: Any, theirs: list[str]) -> None:
        queue = list(reversed(theirs))

        async def worker() -> None:
            while queue:
                s = queue.pop()
                t = time.perf_counter()
                got = await b.get(s)
                assert got is not None
                record, token = got
                await b.claim(s, dict(record, owner=b.node_id, state_version=2), token)
                handovers.append(time.perf_counter() - t)

        await defer.gatherResults(
            [defer.ensureDeferred(worker()) for _ in range(args.window)], consumeErrors=True
        )

    t0 = time.perf_counter()
    await defer.gatherResults(
        [defer.ensureDeferred(adopt(b, sids[(i - 1) % 3 :: 3])) for i, b in enumerate(backends)],
        consumeErrors=True,
    )
    handover_elapsed = time.perf_counter() - t0
    got = await backends[0].get(sids[0])
    key = backends[0].prefix + sids[0]
    ctl = ["bash", str(ETCD_SH), "ctl", args.ctl_dir] if args.ctl_dir else ["etcdctl"]
    value = subprocess.run(
        [*ctl, "--endpoints", endpoints, "get", key, "--print-value-only"],
        capture_output=True, check=True, env={**os.environ, "ETCDCTL_API": "3"},
    ).stdout.rstrip(b"\n")  # fmt: skip
    for b in backends:
        await b.close()
    assert got is not None and len(latencies) == args.sessions == len(handovers)
    return {
        "sessions": args.sessions,
        "gateways": 3,
        "window_per_gateway": args.window,
        "claims_per_s": round(args.sessions / elapsed),
        "elapsed_s": round(elapsed, 2),
        "latency_ms": {
            "p50": round(statistics.median(latencies) * 1000, 2),
            "p99": round(pct(latencies, 99) * 1000, 2),
            "max": round(max(latencies) * 1000, 2),
        },
        "handovers_per_s": round(len(handovers) / handover_elapsed),
        "handover_latency_ms": {
            "p50": round(statistics.median(handovers) * 1000, 2),
            "p99": round(pct(handovers, 99) * 1000, 2),
            "max": round(max(handovers) * 1000, 2),
        },
        "bytes_per_session": {
            "key_plus_value": len(key) + len(value),
            "db_size_delta": round((after[0] - before[0]) / args.sessions, 1),
            "db_in_use_delta": round((after[1] - before[1]) / args.sessions, 1),
        },
        "data_dir": args.data_dir or "(given endpoints)",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--window", type=int, default=8, help="claims in flight per gateway")
    ap.add_argument("--endpoints", help="use this cluster instead of starting one")
    ap.add_argument("--data-dir", help="where the started cluster keeps its data")
    ap.add_argument("--secure", action="store_true",
                    help="start the cluster with TLS, client certificates and authentication")  # fmt: skip
    args = ap.parse_args()
    from twisted.internet import defer, task

    started = None
    endpoints = args.endpoints
    if endpoints is None:
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        started = Path(args.data_dir or tempfile.mkdtemp(prefix="jumping-bench-", dir=shm))
        args.data_dir = str(started)
        env = {**os.environ, "ETCD_SECURE": "1" if args.secure else "0"}
        endpoints = subprocess.run(["bash", str(ETCD_SH), "start", str(started)], check=True,
                                   capture_output=True, text=True, env=env,
                                   ).stdout.strip().splitlines()[-1]  # fmt: skip
    elif args.secure:
        ap.error("--secure starts its own cluster: leave out --endpoints")
    args.ctl_dir = str(started) if started is not None else None
    try:
        result: dict[str, Any] = {}

        async def go(reactor: Any) -> None:
            result.update(await run(args, endpoints))

        task.react(lambda r: defer.ensureDeferred(go(r)))
    except SystemExit as e:
        if e.code:
            raise
    finally:
        if started is not None:
            subprocess.run(["bash", str(ETCD_SH), "stop", str(started)], capture_output=True)
            shutil.rmtree(started, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
