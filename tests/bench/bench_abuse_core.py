"""
Wire-abuse scenarios against the gateway core in-process (no sockets): per scenario, the
core's cost per attack packet (µs, measured under tracemalloc: 2-3x the plain cost), the
memory the core grows by (tracemalloc), whether the established session survived
untouched, and the SECURITY_EVENTs it produced.

This isolates what the core spends and keeps; the namespace harness (a running twistd
gateway, ping, iperf3, wireguard-go beside it) measures the whole node. Seeded, prints one
JSON line per scenario:

    python3 tests/bench/bench_abuse_core.py [--packets 200000]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
import tracemalloc
from typing import Any

from jumping.core import wire
from jumping.core.handshake import Identity, Initiation
from jumping.core.noise import public_key
from jumping.testing.sim import SimNet, SimPath, ipv4, seeded_rng

UP = ipv4("10.99.0.2", "10.99.0.1", b"x" * 64)


def spoofed(i: int) -> SimPath:
    p = SimPath(
        f"s{i}",
        ("10.201.1.2", 51820),
        (f"198.{18 + (i >> 16) % 2}.{(i >> 8) & 255}.{i & 255}", 40000 + i % 20000),
    )
    p.provisional = True
    return p


def scenarios(net: SimNet, n: int) -> dict[str, Any]:
    r = random.Random(7)
    kp = net.client.session.current
    path = net.links[0].gateway_side
    captured = [kp.seal(kp.data_prefix, UP) for _ in range(64)]
    for c in captured:  # delivered once: from now on they are replays
        net.gateway.receive(net.now, path, c)
    gw_pub = public_key(net.gateway_key)
    stranger = Identity(seeded_rng(5)(32))
    inits = [
        Initiation(stranger, gw_pub, seeded_rng(i), net.now, i + 1).message for i in range(256)
    ]

    def flip(b: bytes) -> bytes:
        x = bytearray(b)
        x[r.randrange(16, len(x))] ^= 1 << r.randrange(8)
        return bytes(x)

    one = spoofed(1)
    return {
        "exact_replay": lambda i: (path, captured[i % 64]),
        "bitflip_replay": lambda i: (path, flip(captured[i % 64])),
        "random_garbage": lambda i: (one, r.randbytes(r.randrange(1, 1400))),
        "spoofed_handshake_size": lambda i: (
            spoofed(i % 65536),
            wire.HEADER.pack(1, 1, 0) + r.randbytes(wire.INIT_LEN - 4),
        ),
        "junk_100k_sources": lambda i: (
            spoofed(i % 100_000),
            wire.HEADER.pack(4, 1, 0) + r.randbytes(60),
        ),
        "valid_mac1_init_flood": lambda i: (spoofed(i % 65536), inits[i % 256]),
    }


def run(name: str, make: Any, n: int) -> dict[str, Any]:
    net = SimNet(seed=3)
    net.start()
    net.run_for(3.0)
    gen = scenarios(net, n)[name]
    packets = [gen(i) for i in range(n)]
    gw = net.gateway
    s = next(iter(gw.sessions.values()))
    before = (s.fsm.state, s.fsm.state_version, s.path)
    gc.collect()
    tracemalloc.start()
    m0 = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    now = net.now
    for i, (p, d) in enumerate(packets):
        gw.receive(now + i * 1e-5, p, d)
    dt = time.perf_counter() - t0
    gc.collect()
    grew = tracemalloc.get_traced_memory()[0] - m0
    tracemalloc.stop()
    net.now = now + n * 1e-5
    net.run_for(gw.security_interval + 1)
    events = [e.fields for e in net.events("gateway", "SECURITY_EVENT")]
    return {
        "scenario": name,
        "packets": n,
        "us_per_packet_traced": round(dt / n * 1e6, 2),
        "core_bytes_grown": grew,
        "session_untouched": (s.fsm.state, s.fsm.state_version, s.path) == before,
        "tunnel_attached": net.states() == ("ATTACHED", "ATTACHED"),
        "security_events": [
            (e["violation_type"], e["count"], e.get("other_sources_count")) for e in events
        ],
        "cookie_replies": gw.counters["cookie_replies"],
        "rate_limited": gw.drops["HANDSHAKE_RATE_LIMITED"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=200_000)
    a = ap.parse_args()
    for name in (
        "exact_replay",
        "bitflip_replay",
        "random_garbage",
        "spoofed_handshake_size",
        "junk_100k_sources",
        "valid_mac1_init_flood",
    ):
        print(json.dumps(run(name, None, a.packets)), flush=True)


if __name__ == "__main__":
    main()
