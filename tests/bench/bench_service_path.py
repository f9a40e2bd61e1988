"""
Per-packet cost of the node service's hot path: what a transport and the TUN device hand the
service, through a real gateway core, to the TUN device and the transport again.

    python3 tests/bench/bench_service_path.py [--packets 200000] [--size 1400] [--rounds 5]

bench_dataplane.py times the core alone; this one adds the service layer around it (the
receiver the transports get, the output executor, the TUN reader and its flush), in-process:
the cores attach over the seeded simulated network (jumping.testing.sim), then a
:class:`~jumping.service.node.NodeService` serves the gateway core on a fake clock, with a
fake TUN device and a fake batch transport that only count (no network, no device).

- ``rx_batch_us``: ``datagramsReceived`` with runs of ``--batch`` DATA datagrams (UDP GRO),
  the inner packets written in one ``write_many``;
- ``rx_single_us``: ``datagramReceived`` per datagram (the TCP transport's way);
- ``tx_batch_us``: ``--batch`` TUN packets read, then the wake-up's flush: ``seal_batch`` and
  one ``send_batch``.

The client's sealing (what makes the datagrams) is outside the timed sections. Prints JSON:
the median of ``--rounds`` rounds of each, µs per packet. Runs against a tree with or
without jumping/service/dataplane.py (a before/after comparison of that split).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

from twisted.internet.task import Clock
from zope.interface import alsoProvides

from jumping.core import aead
from jumping.interfaces import IBatchTransport
from jumping.service.node import NodeService
from jumping.testing.sim import SimNet


class CountingTun:
    """What the service writes to: counts the packets."""

    name = "bench0"
    vnet_hdr = False
    write_errors = 0

    def __init__(self) -> None:
        self.packets = 0

    def write_many(self, packets: Any) -> None:
        self.packets += len(packets)

    def write(self, packet: bytes) -> None:
        self.packets += 1


def serve(core: Any, clock: Clock, tun: CountingTun) -> tuple[Any, Any, Any]:
    """A gateway service serving ``core``, wired as its start wires it (the hot-path state
    only: nothing else of the start runs). Returns the receiver the transports get, the TUN
    device's reader and its end-of-wake-up flush."""
    svc = NodeService(None, reactor=clock)
    svc.queue_handshakes = True
    dp = getattr(svc, "dataplane", None)
    if dp is not None:  # jumping/service/dataplane.py
        dp.start(core, tun)
        svc.limits_changed()
        return dp, dp.tun_packet, dp.flush
    # before the split: what NodeService._serve set
    svc.tun = tun  # type: ignore[assignment]
    svc.core = core
    svc.limits_changed()
    svc._now = clock.seconds  # type: ignore[attr-defined]
    svc._write_many = tun.write_many  # type: ignore[attr-defined]
    return svc, svc._tx.append, svc._flush  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=1400)
    ap.add_argument("--batch", type=int, default=44, help="packets per call (64 KiB / 1448)")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    payload = os.urandom(a.size)
    up = bytes([0x45, 0]) + payload[2:12] + bytes([10, 99, 0, 2, 10, 99, 0, 1]) + payload[20:]
    down = bytes([0x45, 0]) + payload[2:12] + bytes([10, 99, 0, 1, 10, 99, 0, 2]) + payload[20:]

    net = SimNet(seed=1)
    net.start()
    net.run_for(0.5)
    assert net.states() == ("ATTACHED", "ATTACHED")
    client, gateway = net.client, net.gateway
    gpath = net.links[0].gateway_side
    sent = [0]

    def send(data: bytes) -> None:
        sent[0] += 1

    def send_batch(datagrams: list[bytes]) -> None:
        sent[0] += len(datagrams)

    gpath.send = send  # type: ignore[attr-defined]
    gpath.send_batch = send_batch  # type: ignore[attr-defined]
    alsoProvides(gpath, IBatchTransport)  # as the UDP listener's paths
    clock = Clock()
    clock.advance(net.now)
    tun = CountingTun()
    rx, tun_packet, flush = serve(gateway, clock, tun)
    now = net.now
    rounds = a.packets // a.batch
    n = rounds * a.batch
    batch = [up] * a.batch

    def rx_batch() -> float:
        spent = 0.0
        for _ in range(rounds):
            datagrams = client.seal_batch(now, batch).sends[0][1]
            t0 = time.perf_counter()
            rx.datagramsReceived(gpath, datagrams)
            spent += time.perf_counter() - t0
        return spent

    def rx_single() -> float:
        spent = 0.0
        receive = rx.datagramReceived
        for _ in range(rounds):
            datagrams = client.seal_batch(now, batch).sends[0][1]
            t0 = time.perf_counter()
            for d in datagrams:
                receive(gpath, d)
            spent += time.perf_counter() - t0
        return spent

    def tx_batch() -> float:
        t0 = time.perf_counter()
        for _ in range(rounds):
            for _ in range(a.batch):
                tun_packet(down)
            flush()
        return time.perf_counter() - t0

    results: dict[str, list[float]] = {"rx_batch_us": [], "rx_single_us": [], "tx_batch_us": []}
    for _ in range(a.rounds):
        for name, fn in (("rx_batch_us", rx_batch), ("rx_single_us", rx_single),
                         ("tx_batch_us", tx_batch)):  # fmt: skip
            before = tun.packets if name != "tx_batch_us" else sent[0]
            spent = fn()
            after = tun.packets if name != "tx_batch_us" else sent[0]
            assert after - before == n, (name, after - before, n)  # every packet went through
            results[name].append(spent / n * 1e6)
    print(
        json.dumps(
            {
                "tree": "dataplane" if hasattr(rx, "tun_packet") else "node",
                "packets": n,
                "size": a.size,
                "batch": a.batch,
                "rounds": a.rounds,
                "implementation": aead.IMPLEMENTATION,
                **{k: round(statistics.median(v), 3) for k, v in results.items()},
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
