"""A small wire-abuse flood against a real twistd gateway in namespaces (the CI-sized part of
tests/bench/abuse/abuse-matrix.sh): junk transport-data packets from 20 000 distinct spoofed
sources (the path-table attack) and random garbage, sent from an attacker namespace into
the gateway's veth while a session is up. The session must survive (no state change, pings
through the tunnel afterwards), the flood must show up as aggregated SECURITY_EVENTs with
counts, and the gateway's memory must not grow with the number of sources. No timing is
asserted: the rate only bounds how long the test takes."""

from __future__ import annotations

import random
import struct
import time
from pathlib import Path

import pytest
from nodes import Pair, events

from jumping.core import wire
from jumping.testing.netns import Topology

pytestmark = pytest.mark.netns

SOURCES = 20_000
GARBAGE = 2_000
RATE = 5_000  # packets per second, paced in batches
RSS_GROWTH_LIMIT_KIB = 6 * 1024  # an unbounded per-source table costs ~1 KiB per source
GATEWAY = "10.202.0.1"

# The attacker's sender: IPv4 packets (with their spoofed sources) from a file of
# (u16 little-endian length, packet) records, through a raw socket, paced.
SENDER = """
import socket, struct, sys, time
data = open(sys.argv[1], "rb").read()
rate = float(sys.argv[2])
pkts, i = [], 0
while i < len(data):
    (n,) = struct.unpack_from("<H", data, i)
    pkts.append(data[i + 2 : i + 2 + n]); i += 2 + n
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
t0, sent = time.monotonic(), 0
for k in range(0, len(pkts), 100):
    for p in pkts[k : k + 100]:
        s.sendto(p, (sys.argv[3], 0)); sent += 1
    wait = t0 + sent / rate - time.monotonic()
    if wait > 0:
        time.sleep(wait)
print(sent)
"""


def _checksum(header: bytes) -> int:
    s = sum(struct.unpack("!10H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _udp(src: bytes, sport: int, dst: bytes, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, 51820, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, src, dst)
    return hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:] + udp


def flood_file(path: Path) -> None:
    """Junk DATA (a valid header, a random receiver index) from SOURCES distinct spoofed
    addresses in 198.18.0.0/15, then GARBAGE random datagrams from one of them."""
    r = random.Random(10)
    dst = bytes(int(x) for x in GATEWAY.split("."))
    with open(path, "wb") as f:
        for i in range(SOURCES + GARBAGE):
            k = i % SOURCES
            src = bytes((198, 18 + (k >> 16), (k >> 8) & 255, k & 255))
            if i < SOURCES:
                payload = wire.HEADER.pack(4, wire.VERSION, 0) + r.randbytes(60)
            else:
                payload = r.randbytes(r.randrange(1, 1400))
            p = _udp(src, 1024 + r.randrange(60000), dst, payload)
            f.write(struct.pack("<H", len(p)) + p)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_flood_from_spoofed_sources_leaves_the_session_and_memory_alone(tmp_path: Path) -> None:
    flood_file(tmp_path / "flood.frames")
    with Topology("jab") as topo:
        cns, gns, xns = topo.ns("c"), topo.ns("g"), topo.ns("x")
        topo.link(cns, "ca", "10.201.1.1/24", gns, "ga", "10.201.1.2/24")
        topo.link(xns, "xg", "10.202.0.2/24", gns, "gx", GATEWAY + "/24")
        # answers to the spoofed sources go back into the attacker (which drops them)
        topo.run(gns, "ip", "route", "add", "198.18.0.0/15", "via", "10.202.0.2", "dev", "gx")
        pair = Pair(topo, tmp_path, cns, gns, ["10.201.1.2"])
        try:
            pair.start()
            assert pair.gw is not None
            topo.run(cns, "ping", "-c", "5", "-i", "0.05", "-W", "2", "10.99.0.1")
            time.sleep(1.0)  # settled: handshake, first heartbeats
            rss0 = rss_kib(pair.gw.pid)
            t0_ms = time.time() * 1000
            sender = topo.run(
                xns, "python3", "-c", SENDER, str(tmp_path / "flood.frames"), str(RATE), GATEWAY,
                timeout=120,
            )  # fmt: skip
            assert int(sender.stdout) == SOURCES + GARBAGE
            # the live session kept its path: pings get through, nothing changed state
            topo.run(cns, "ping", "-c", "5", "-i", "0.05", "-W", "2", "10.99.0.1")
            rss1 = rss_kib(pair.gw.pid)
            # aggregated events are flushed every 10 s
            deadline = time.monotonic() + 30
            sec: dict[str, int] = {}
            while time.monotonic() < deadline:
                sec = {}
                for e in events(pair.gw_events):
                    if e.get("event_type") == "SECURITY_EVENT" and e["ts_ms"] >= t0_ms:
                        sec[e["violation_type"]] = sec.get(e["violation_type"], 0) + e["count"]
                if sec.get("UNKNOWN_RECEIVER", 0) >= SOURCES * 0.9 and "MALFORMED_PACKET" in sec:
                    break
                time.sleep(0.5)
            gw_events = events(pair.gw_events)
            assert pair.gw.poll() is None, pair.diagnostics()
        finally:
            pair.stop()
    # every junk packet that reached the gateway is counted (a few may be lost in the
    # socket buffer on a loaded machine), none more
    assert SOURCES * 0.9 <= sec.get("UNKNOWN_RECEIVER", 0) <= SOURCES, sec
    assert 0 < sec.get("MALFORMED_PACKET", 0) <= GARBAGE, sec
    floods = [
        e for e in gw_events if e.get("event_type") == "SECURITY_EVENT" and e["ts_ms"] >= t0_ms
    ]
    assert len(floods) <= 10, "a flood is a handful of aggregated events, not one per packet"
    changes = [e for e in gw_events if e.get("event_type") == "SESSION_STATE_CHANGE"
               and e["ts_ms"] >= t0_ms]  # fmt: skip
    assert changes == [], changes
    assert rss1 - rss0 <= RSS_GROWTH_LIMIT_KIB, f"gateway RSS grew {rss1 - rss0} KiB"
