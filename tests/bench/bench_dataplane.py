"""
Per-packet cost of the core data plane, beside the bare AEAD it wraps.

    python3 tests/bench/bench_dataplane.py [--packets 200000] [--size 1400]

Prints JSON: µs per packet for ChaCha20-Poly1305 encrypt+decrypt alone (cryptography's, and
the keypairs' own: ``implementation`` says which, the C loops or their Python twin, see
jumping/core/aead.py; ``JUMPING_PURE_PYTHON=1`` picks the latter), and for
``seal_batch`` + ``receive_batch`` through real client/gateway cores, in runs of ``--batch``
packets as the service calls them (replay window, counters, routing, source check
included). The difference is what Jumping adds per packet; the
target (docs/benchmarks.md#targets) is "a few microseconds at most".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from jumping.core import aead as keypair_aead
from jumping.testing.sim import SimNet


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=1400)
    ap.add_argument("--batch", type=int, default=44, help="packets per call (64 KiB / 1448)")
    a = ap.parse_args()
    n = a.packets
    payload = os.urandom(a.size)

    aead = ChaCha20Poly1305(os.urandom(32))
    hdr = bytes(16)
    t0 = time.perf_counter()
    for i in range(n):
        nonce = bytes(4) + i.to_bytes(8, "little")
        ct = aead.encrypt(nonce, payload, hdr)
        aead.decrypt(nonce, ct, hdr)
    bare = (time.perf_counter() - t0) / n * 1e6
    own = keypair_aead.Aead(os.urandom(32))
    t0 = time.perf_counter()
    for i in range(n):
        nonce = bytes(4) + i.to_bytes(8, "little")
        ct = own.encrypt(nonce, payload, hdr)
        own.decrypt(nonce, ct, hdr)
    bare_own = (time.perf_counter() - t0) / n * 1e6

    net = SimNet(seed=1)
    net.start()
    net.run_for(0.5)
    packet = bytes([0x45, 0]) + payload[2:12] + bytes([10, 99, 0, 2, 10, 99, 0, 1]) + payload[20:]
    client, gateway = net.client, net.gateway
    gpath = net.links[0].gateway_side
    now = net.now
    delivered = 0
    batch = [packet] * a.batch
    t0 = time.perf_counter()
    for _ in range(n // a.batch):
        sends, _out = client.seal_batch(now, batch)
        delivered += len(gateway.receive_batch(now, gpath, sends[0][1]).packets)
    n = n // a.batch * a.batch
    full = (time.perf_counter() - t0) / n * 1e6

    # DATA_SEGMENT: one TCP super-packet of --batch segments per call, sealed whole and
    # joined back into runs (what the service does with TSO/GSO on both ends)
    mss = a.size - 52
    hdr = bytearray(52)
    hdr[0], hdr[9], hdr[32] = 0x45, 6, 0x80  # IPv4, TCP, 32-byte TCP header
    hdr[12:20] = bytes([10, 99, 0, 2, 10, 99, 0, 1])
    total = 52 + mss * a.batch
    hdr[2:4] = total.to_bytes(2, "big")
    sp = bytes(hdr) + os.urandom(mss * a.batch)
    item = (sp, 52, mss)
    pieces = 0
    t0 = time.perf_counter()
    for _ in range(n // a.batch):
        sends, _out = client.seal_batch(now, [item])
        runs = gateway.receive_batch(now, gpath, sends[0][1]).packets
        pieces += sum(len(r.pieces) for r in runs)  # type: ignore[union-attr]
    seg = (time.perf_counter() - t0) / (n // a.batch * a.batch) * 1e6
    print(
        json.dumps(
            {
                "bench": "dataplane",
                "packets": n,
                "size": a.size,
                "batch": a.batch,
                "delivered": delivered,
                "implementation": keypair_aead.IMPLEMENTATION,
                "aead_only_us": round(bare, 3),
                "keypair_aead_only_us": round(bare_own, 3),
                "jumping_us": round(full, 3),
                "overhead_us": round(full - bare, 3),
                "segments_delivered": pieces,
                "segments_us": round(seg, 3),
                "segments_overhead_us": round(seg - bare, 3),
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
