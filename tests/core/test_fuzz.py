"""
Fuzz-style robustness: >= 100 000 random and mutated datagrams into live sessions.

Asserts that nothing escapes the core, the sessions' state is untouched, every datagram
is accounted for (a counted drop or a legitimate effect), and memory stays flat.
"""

from __future__ import annotations

import gc
import random
import tracemalloc

from jumping.core import wire
from jumping.core.outputs import Drop, Send
from jumping.testing.sim import SimNet, capture, ipv4

UP = ipv4("10.99.0.2", "10.99.0.1", b"hello gateway")
DOWN = ipv4("10.99.0.1", "10.99.0.2", b"hello client")

N = 100_000


def _mutate(r: random.Random, seed: bytes) -> bytes:
    b = bytearray(seed)
    choice = r.randrange(7)
    if choice == 0 and b:
        for _ in range(r.randint(1, 4)):
            b[r.randrange(len(b))] ^= 1 << r.randrange(8)
    elif choice == 1:
        b = b[: r.randrange(len(b) + 1)]
    elif choice == 2:
        b += r.randbytes(r.randrange(1, 64))
    elif choice == 3 and b:
        b[0] = r.randrange(256)
    elif choice == 4 and len(b) > 8:
        b[4:8] = r.randbytes(4)  # another receiver index
    elif choice == 5:
        b = bytearray(r.randbytes(r.randrange(0, 200)))
    else:
        b = bytearray(b[:4]) + r.randbytes(r.randrange(0, 300))
    if bytes(b) == seed:  # never resend an original: it would legitimately have an effect
        b.append(r.randrange(256))
    return bytes(b)


def _snapshot(net: SimNet) -> tuple[object, ...]:
    c = net.client.session
    g = next(iter(net.gateway.sessions.values()))
    assert c is not None
    return (
        c.fsm.state, c.fsm.state_version, c.current, c.path, c.session_id,
        g.fsm.state, g.fsm.state_version, g.current, g.path, g.session_id,
        len(net.gateway.sessions), len(net.gateway.index), len(net.client.index),
    )  # fmt: skip


def test_random_and_mutated_packets_never_escape_or_change_state() -> None:
    net = SimNet(seed=11)
    net.start()
    net.run_for(0.5)
    assert net.states() == ("ATTACHED", "ATTACHED")
    r = random.Random(2026)
    # Seeds: a handshake initiation, data and control packets both ways.
    seeds_gw = [capture(net, "client", UP) for _ in range(8)]
    seeds_cl = [capture(net, "gateway", DOWN) for _ in range(8)]
    from jumping.core.handshake import Identity, Initiation
    from jumping.core.noise import public_key

    me = Identity(net.client_key)
    # an older timestamp than the real handshake: any variant that authenticates is a replay
    hs = Initiation(me, public_key(net.gateway_key), r.randbytes, net.now - 100, 1234)
    seeds_gw.append(hs.message)
    seeds_gw.append(bytes([wire.MessageType.CONTROL, 1, 0, 0]) + bytes(40))
    before = _snapshot(net)
    gpath, cpath = net.links[0].gateway_side, net.links[0].client_side

    def batch(count: int) -> tuple[int, int]:
        drops = effects = 0
        for i in range(count):
            to_gateway = i & 1 == 0
            seed = r.choice(seeds_gw if to_gateway else seeds_cl)
            data = _mutate(r, seed)
            core = net.gateway if to_gateway else net.client
            out = core.receive(net.now, gpath if to_gateway else cpath, data)
            if out and all(isinstance(o, Drop) for o in out):
                drops += 1
            else:
                effects += 1
                # only a valid replay-free original could have an effect; we never resend
                # originals unmodified, so effects must be sends of cookie/handshake replies
                assert all(isinstance(o, (Drop, Send)) for o in out), out
        return drops, effects

    batch(5_000)  # warm-up: caches, counters' keys
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    drops, effects = batch(N)
    gc.collect()
    after, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert drops + effects == N
    assert drops >= N * 0.99
    assert net.gateway.counters["internal_error"] == 0
    assert net.client.counters["internal_error"] == 0
    assert _snapshot(net) == before
    assert after - base < 256 * 1024, f"memory grew by {after - base} bytes"
    # the sessions still work
    net.send_inner("client", UP)
    net.run_for(0.1)
    assert net.log["gateway"].tun[-1] == UP
