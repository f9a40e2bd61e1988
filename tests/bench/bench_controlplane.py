"""
Control-plane cost of the gateway core (targets: docs/benchmarks.md): handshakes per second
on one core, memory per idle session, and the cost of one state transition, from 1 000 to
100 000 sessions on one gateway core.

    python3 tests/bench/bench_controlplane.py [--sizes 1000,10000,100000] [--rounds 3]

For each size N: N distinct clients (their own static keys, their own /32) each send one
Noise IK initiation to a fresh ``GatewayCore``; the time the gateway spends on those N
initiations gives handshakes/s (all of it: Noise, cookie MAC check, session and index
tables, outputs and events). Memory per session is the tracemalloc growth of the gateway
over those N sessions (keys, AEAD contexts, replay window, FSM, tables), measured in a
second pass without timing. The transition cost is the mean time of
``terminate(OPERATOR_TERMINATED)`` on 1 000 of the N sessions; ``transition_routed_us`` is
the same on 1 000 of N confirmed sessions that carry routes (each client's first packet under
its new keys confirmed it: its /32 is in the gateway's route table), the case where a scan
over the routes or the peers would show (the median of ``--rounds`` rounds, each of 1 000
other sessions, all listed in ``transition_routed_rounds_us``); ``transition_routed_cold_us`` the same again with
the session cold (the caches emptied, then the code warmed by terminating another
session), as for a session that has been idle in a running gateway: at 1 000 sessions the
warm figure has all of the gateway in L2, at 100 000 it does not, and the cold one
separates that from what grows with the tables (500 pairs at 1 000 sessions, 1 000 above). Client-side work (building the initiations, the first packets) is excluded. Prints
one JSON line per size.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from jumping.core import wire
from jumping.core.fsm import Reason, State
from jumping.core.gateway import GatewayCore
from jumping.core.handshake import Identity, Initiation
from jumping.core.node import Peer
from jumping.core.noise import public_key
from jumping.core.outputs import Send
from jumping.core.policy import Policy
from jumping.testing.sim import SimPath, seeded_rng

NOW = 1_800_000_000.0


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(
    n: int, seed: int
) -> tuple[bytes, list[tuple[bytes, str]], list[bytes], list[Initiation]]:
    r = random.Random(seed)
    gw_priv = r.randbytes(32)
    gw_pub = public_key(gw_priv)
    clients, inits, states = [], [], []
    rng = seeded_rng(seed)
    for i in range(n):
        priv = r.randbytes(32)
        ip = f"10.{100 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32"
        clients.append((public_key(priv), ip))
        states.append(Initiation(Identity(priv), gw_pub, rng, NOW, i + 1))
        inits.append(states[-1].message)
    return gw_priv, clients, inits, states


def first_packet(hs: Initiation, response: bytes) -> bytes:
    """The client's first packet under the keys a response gave it (an empty DATA message,
    as a keepalive): it confirms the session on the gateway, which then routes its /32."""
    est = hs.consume_response(response)
    header = wire.DATA_PREFIX + est.remote_index.to_bytes(4, "little") + bytes(8)
    return header + ChaCha20Poly1305(est.send_key).encrypt(bytes(4) + header[8:], b"", header)


def peers_of(clients: list[tuple[bytes, str]]) -> list[Peer]:
    """Fresh peer entries (they remember the last initiation's timestamp)."""
    return [Peer(pub, [ip]) for pub, ip in clients]


def gateway(gw_priv: bytes, peers: list[Peer], n: int) -> GatewayCore:
    return GatewayCore(
        peers=peers, node_id="bench-gw", private_key=gw_priv,
        policy=Policy(handshake_per_source_per_s=100_000, handshake_per_source_burst=100_000),
        rng=seeded_rng(99), now=NOW, max_sessions=n + 10, cookies="never",
    )  # fmt: skip


def answer_all(
    g: GatewayCore, paths: list[SimPath], inits: list[bytes], clock: Callable[[], float]
) -> float:
    """Seconds on ``clock`` that ``g`` takes to answer every initiation (one new session
    each; collected first, so that no earlier garbage is in the figure)."""
    gc.collect()
    t0 = clock()
    for path, init in zip(paths, inits, strict=True):
        g.receive(NOW + 0.001, path, init)
    spent = clock() - t0
    assert g.session_count() == len(inits), (g.session_count(), len(inits), dict(g.drops))
    return spent


def fill(
    gw_priv: bytes,
    clients: list[tuple[bytes, str]],
    inits: list[bytes],
    paths: list[SimPath],
    n: int,
    traced: bool,
) -> int:
    """Bytes the gateway grows by while N sessions are set up."""
    peers = peers_of(clients)  # configuration, not session state: allocated before
    gc.collect()
    if traced:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] if traced else rss()
    g = gateway(gw_priv, peers, n)
    for i in range(n):
        g.receive(NOW + 0.001, paths[i], inits[i])
    assert g.session_count() == n, (g.session_count(), n, dict(g.drops))
    g.take()
    g.tick(NOW + 0.002)  # settle: pending outputs and timers are not per-session state
    g.take()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if traced else rss()
    if traced:
        tracemalloc.stop()
    del g
    gc.collect()
    return after - before


def in_child(fn: Callable[[], int]) -> int:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        os.write(w, str(fn()).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return int(out)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Time a run of transitions without the cyclic collector: a full collection costs in
    proportion to the whole heap (the bench's clients included), lands in a timed run or
    not by chance, and then adds up to 10 us per termination to one run of 1 000 (at 1 000
    sessions the rounds went 16.0 / 25.9 / 16.2 us with it). The transition's own cost is
    what is compared across sizes; the collector's is the process's, whatever it runs."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


_EVICT = bytearray(64 << 20)


def _evict_caches() -> None:
    """Read one byte of every cache line of 64 MiB: what a transition touches is no longer
    in any cache level afterwards."""
    _EVICT[::64]  # noqa: B018 - a copy of 1 MiB, which reads every line


def routed_gateway(
    gw_priv: bytes, clients: list, inits: list, states: list, paths: list, n: int
) -> tuple[GatewayCore, list[bytes]]:
    """A gateway with ``n`` confirmed sessions (each client's first packet under the new keys
    put its /32 in the route table), and their ids."""
    g = gateway(gw_priv, peers_of(clients), n)
    responses = []
    for i in range(n):
        out = g.receive(NOW + 0.001, paths[i], inits[i])
        responses.append(next(o.data for o in out if isinstance(o, Send)))
    for i in range(n):
        g.receive(NOW + 0.002, paths[i], first_packet(states[i], responses[i]))
    routed = [sid for sid, s in g.sessions.items() if s.fsm.state is State.ATTACHED]
    assert len(routed) == n and len(g.routes) == n, (len(routed), len(g.routes), dict(g.drops))
    return g, routed


def run(n: int, seed: int = 1, rounds: int = 3) -> dict[str, object]:
    gw_priv, clients, inits, states = build(n, seed)
    paths = [
        SimPath(f"p{i}", ("10.0.0.1", 51820), ("10.1.0.1", 40000 + i % 20000)) for i in range(n)
    ]

    # pass 1, in a forked child whose heap has nothing to reuse yet: the resident set,
    # which is what counts (the AEAD contexts live outside Python's allocator)
    rss_grown = in_child(lambda: fill(gw_priv, clients, inits, paths, n, traced=False))

    # pass 2: time (building the gateway from its N peers is timed apart: configuration work,
    # such as the per-peer static-static DH, is done once when peers are added, not per
    # handshake)
    peers = peers_of(clients)
    t0 = time.perf_counter()
    g = gateway(gw_priv, peers, n)
    build_us = (time.perf_counter() - t0) / n * 1e6
    elapsed = answer_all(g, paths, inits, time.perf_counter)
    sample = random.Random(seed).sample(list(g.sessions), min(1000, n))
    with collector_paused():
        t0 = time.perf_counter()
        for sid in sample:
            g.terminate(NOW + 1, sid, Reason.OPERATOR_TERMINATED)
        transition_us = (time.perf_counter() - t0) / len(sample) * 1e6
    del g
    gc.collect()

    # pass 2b: the same transition on sessions that carry routes: every client confirms
    # (its first packet under the new keys), then 1 000 of them are terminated; ``rounds``
    # times (a fresh gateway whenever fewer than half of the sessions would be left), the
    # median reported: one round of 1 000 terminations spreads by a fifth from run to run
    g, routed = routed_gateway(gw_priv, clients, inits, states, paths, n)
    routes = len(g.routes)
    per_round = min(1000, n)
    rounds_us: list[float] = []
    left = list(routed)
    for r in range(rounds):
        if len(left) - per_round < min(n // 2, n - per_round):
            del g
            gc.collect()
            _, clients, inits, states = build(n, seed)
            g, left = routed_gateway(gw_priv, clients, inits, states, paths, n)
        sample = set(random.Random(seed + r).sample(left, per_round))
        left = [sid for sid in left if sid not in sample]
        with collector_paused():
            t0 = time.perf_counter()
            for sid in sample:
                g.terminate(NOW + 1, sid, Reason.OPERATOR_TERMINATED)
            rounds_us.append(round((time.perf_counter() - t0) / per_round * 1e6, 2))
        assert len(g.routes) == len(left)
    routed_us = statistics.median(rounds_us)
    del g
    gc.collect()

    # pass 2c: the same with the session cold, as a transition of a session that has been
    # idle meets it in a running gateway: before each timed termination 64 MiB are read
    # (twice this host's L3), then another session is terminated untimed (the code and
    # the shared tables are hot again, as they are in a gateway that serves others); the
    # timed session's own objects and table slots are still cold, at every size alike,
    # so what is left of the growth from 1 000 to 100 000 is what grows with the tables
    _, clients, inits, states = build(n, seed)  # the same clients, a handshake each to read
    g, routed = routed_gateway(gw_priv, clients, inits, states, paths, n)
    shuffled = random.Random(seed).sample(routed, n)
    pairs = min(1000, n // 2)
    spent = 0.0
    with collector_paused():
        for k in range(pairs):
            _evict_caches()
            g.terminate(NOW + 1, shuffled[2 * k + 1], Reason.OPERATOR_TERMINATED)  # warms code
            t0 = time.perf_counter()
            g.terminate(NOW + 1, shuffled[2 * k], Reason.OPERATOR_TERMINATED)
            spent += time.perf_counter() - t0
    routed_cold_us = spent / pairs * 1e6
    del g
    gc.collect()

    # pass 3: the Python objects alone, with tracemalloc
    grown = fill(gw_priv, clients, inits, paths, n, traced=True)
    return {
        "bench": "controlplane",
        "sessions": n,
        "handshakes_per_s": round(n / elapsed),
        "us_per_handshake": round(elapsed / n * 1e6, 1),
        "us_per_configured_peer": round(build_us, 1),
        "bytes_per_session_rss": round(rss_grown / n),
        "bytes_per_session_python": round(grown / n),
        "transition_us": round(transition_us, 2),
        "transition_routed_us": round(routed_us, 2),
        "transition_routed_rounds_us": rounds_us,
        "transition_routed_cold_us": round(routed_cold_us, 2),
        "routes": routes,
        "python": platform.python_version(),
        "cpu": os.cpu_count(),
    }


def _best_us(fn: Callable[[], object], n: int, repeats: int = 5) -> float:
    """CPU time of one call of ``fn`` (process time, best of ``repeats`` runs of ``n``)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


def handshake_costs(n: int = 2000, seed: int = 7) -> dict[str, object]:
    """What a handshake costs the core alone and what its X25519 costs, in one process:
    ``core_handshakes_per_cpu_s`` (N initiations answered by a fresh GatewayCore, process
    time), one X25519 (``x25519_us``: a scalar multiplication, pynacl as the core uses it)
    and a base-point multiplication (``x25519_base_us``: the responder's ephemeral key),
    ``four_x25519_us`` (the responder's four DH operations without a precomputed
    static-static) and ``responder_dh_us`` (what it computes with one: three and a base
    multiplication), and the handshakes per CPU-second that leaves as a ceiling
    (``dh_ceiling_per_cpu_s``: nothing but the DH)."""
    import nacl.bindings as sodium

    gw_priv, clients, inits, _states = build(n, seed)
    paths = [SimPath(f"p{i}", ("10.0.0.1", 51820), ("10.1.0.1", 40000 + i)) for i in range(n)]
    g = gateway(gw_priv, peers_of(clients), n)
    core_s = answer_all(g, paths, inits, time.process_time)
    k, pub = random.Random(seed).randbytes(32), clients[0][0]
    mult = _best_us(lambda: sodium.crypto_scalarmult(k, pub), 2000)
    base = _best_us(lambda: sodium.crypto_scalarmult_base(k), 2000)
    dh = 3 * mult + base
    return {
        "bench": "handshake_costs", "handshakes": n,
        "core_us_per_handshake": round(core_s / n * 1e6, 1),
        "core_handshakes_per_cpu_s": round(n / core_s),
        "x25519_us": round(mult, 1), "x25519_base_us": round(base, 1),
        "four_x25519_us": round(4 * mult, 1), "responder_dh_us": round(dh, 1),
        "dh_ceiling_per_cpu_s": round(1e6 / dh),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument(
        "--handshakes-only", type=int, metavar="N", default=0,
        help="only the core-alone handshake cost over N initiations and the X25519 costs of "
        "this machine, one JSON line (tests/bench/scale/loadgen.py's ramp runs this)",
    )  # fmt: skip
    ap.add_argument(
        "--rounds", type=int, default=3,
        help="rounds of 1 000 routed terminations per size (the median is reported)",
    )  # fmt: skip
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    if a.handshakes_only < 0:
        ap.error("--handshakes-only must be a positive number of initiations")
    if a.handshakes_only:
        print(json.dumps(handshake_costs(a.handshakes_only)), flush=True)
        return
    for n in (int(x) for x in a.sizes.split(",")):
        print(json.dumps(run(n, rounds=a.rounds)), flush=True)


if __name__ == "__main__":
    main()
