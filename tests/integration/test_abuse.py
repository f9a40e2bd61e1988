"""Wire-abuse floods against a real twistd gateway in namespaces (the CI-sized part of
tests/bench/abuse/abuse-matrix.sh): junk transport-data packets from 20 000 distinct spoofed
sources (the path-table attack) and random garbage, and the valid-mac1 initiation flood at
20 000 packets/s for 10 s with a second client starting during it, sent from an attacker
namespace into the gateway's veth while a session is up. The session must survive (no state change, pings
through the tunnel afterwards), the flood must show up as aggregated SECURITY_EVENTs with
counts, and the gateway's memory must not grow with the number of sources. No timing is
asserted: the rate only bounds how long the test takes."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from nodes import Pair, events, node_env, twistd

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


# -- each scenario of the abuse harness at 20 000 pkt/s for 10 s ----------------------------
ABUSE = Path(__file__).resolve().parents[1] / "bench" / "abuse"
FLOOD_C = ABUSE / "flood.c"
MAC1_RATE = 20_000  # packets per second, from the compiled generator of the abuse harness
MAC1_SECONDS = 10
NEW_CLIENT_KEY = "n.key"


def _frames() -> Any:
    sys.path.insert(0, str(ABUSE))
    try:
        import frames  # the harness's scenario builder (tests/bench/abuse/frames.py)
    finally:
        sys.path.remove(str(ABUSE))
    return frames


def _security(path: Path, t0_ms: float) -> list[dict[str, Any]]:
    return [
        e for e in events(path) if e.get("event_type") == "SECURITY_EVENT" and e["ts_ms"] >= t0_ms
    ]


@pytest.mark.parametrize(
    "scenario",
    ["exact_replay", "bitflip_replay", "random_garbage", "spoofed_handshake_size",
     "junk_100k_sources"],
)  # fmt: skip
def test_abuse_scenario_at_20k_pps_for_10s_leaves_the_session_alone(
    tmp_path: Path, scenario: str
) -> None:
    """One scenario of tests/bench/abuse/abuse-matrix.sh (the same frames, the same compiled
    generator) at 20 000 packets/s for 10 s into the gateway's veth, a session up: it keeps
    its state and its path (pings get through), every packet that reached the gateway is in
    a handful of aggregated SECURITY_EVENTs, and the gateway's memory stays put. Nothing is
    timed: the rate only bounds how long the test takes."""
    from jumping.keys import decode_key

    frames = _frames()
    flood = tmp_path / "flood"
    subprocess.run(["gcc", "-O2", "-o", str(flood), str(FLOOD_C)], check=True, timeout=60)
    with Topology("jas") as topo:
        cns, gns, xns = topo.ns("c"), topo.ns("g"), topo.ns("x")
        topo.link(cns, "ca", "10.201.1.1/24", gns, "ga", "10.201.1.2/24")
        topo.link(xns, "xg", "10.202.0.2/24", gns, "gx", GATEWAY + "/24")
        topo.run(gns, "ip", "route", "add", "198.18.0.0/15", "via", "10.202.0.2", "dev", "gx")
        pair = Pair(topo, tmp_path, cns, gns, ["10.201.1.2"])
        gx_mac = topo.run(gns, "cat", "/sys/class/net/gx/address").stdout.strip()
        try:
            pair.start()
            assert pair.gw is not None
            topo.run(cns, "ping", "-c", "5", "-i", "0.05", "-W", "2", "10.99.0.1")
            capture = None
            if frames.SCENARIOS[scenario].replay:
                # sealed packets of the live session as they reach the gateway: replayed
                pinger = topo.popen(cns, "ping", "-n", "-i", "0.002", "-c", "2500", "-s", "200",
                                    "10.99.0.1")  # fmt: skip
                capture = tmp_path / "replay.frames"
                topo.run(
                    gns, sys.executable, str(ABUSE / "capture.py"), "replay", "--if", "ga",
                    "--port", "51820", "--count", "2048", "--timeout", "6", "--out", str(capture),
                    timeout=30,
                )  # fmt: skip
                topo.stop(pinger)
            frames.build(scenario, "jumping", decode_key(pair.gw_pub), (GATEWAY, 51820),
                         tmp_path / "s.frames", capture)  # fmt: skip
            time.sleep(1.0)
            rss0 = rss_kib(pair.gw.pid)
            t0_ms = time.time() * 1000
            gen = topo.run(
                xns, str(flood), "-i", "xg", "-m", gx_mac, "-f", str(tmp_path / "s.frames"),
                "-r", str(MAC1_RATE), "-d", str(MAC1_SECONDS),
                *frames.SCENARIOS[scenario].generator_args(), timeout=60,
            )  # fmt: skip
            sent = json.loads(gen.stdout)["sent"]
            topo.run(cns, "ping", "-c", "5", "-i", "0.05", "-W", "2", "10.99.0.1")
            rss1 = rss_kib(pair.gw.pid)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # aggregated events are flushed every 10 s
                total = sum(e["count"] for e in _security(pair.gw_events, t0_ms))
                if total >= sent * 0.5 and time.time() * 1000 - t0_ms > (MAC1_SECONDS + 11) * 1000:
                    break
                time.sleep(0.5)
            gw_events = events(pair.gw_events)
            assert pair.gw.poll() is None, pair.diagnostics()
        finally:
            pair.stop()
    assert sent >= MAC1_RATE * MAC1_SECONDS * 0.9, sent
    sec = [e for e in gw_events if e.get("event_type") == "SECURITY_EVENT" and e["ts_ms"] >= t0_ms]
    total = sum(e["count"] for e in sec)
    # every attack packet that reached the gateway is counted once (some may be lost in the
    # socket buffer on a loaded machine), in a few events per violation type
    assert sent * 0.5 <= total <= sent + 100, (total, sent)
    by_type: dict[str, int] = {}
    for e in sec:
        by_type[e["violation_type"]] = by_type.get(e["violation_type"], 0) + 1
    assert all(n <= 4 for n in by_type.values()), by_type
    changes = [e for e in gw_events if e.get("event_type") == "SESSION_STATE_CHANGE"
               and e["ts_ms"] >= t0_ms]  # fmt: skip
    assert changes == [], changes
    assert rss1 - rss0 <= RSS_GROWTH_LIMIT_KIB, f"gateway RSS grew {rss1 - rss0} KiB"


def mac1_flood_file(path: Path, gw_pub: bytes) -> None:
    """256 real initiations from a key the gateway does not know, each with a valid mac1
    (which needs only the gateway's public key); the generator spoofs their sources."""
    from jumping.core.handshake import Identity, Initiation
    from jumping.testing.sim import seeded_rng

    stranger = Identity(seeded_rng(5)(32))
    dst = bytes(int(x) for x in GATEWAY.split("."))
    now = time.time()
    with open(path, "wb") as f:
        for i in range(256):
            msg = Initiation(stranger, gw_pub, seeded_rng(i), now, i + 1).message
            p = _udp(bytes((198, 18, 0, 1)), 40000 + i, dst, msg)
            f.write(struct.pack("<H", len(p)) + p)


def test_valid_mac1_initiation_flood_keeps_the_session_and_lets_a_new_client_in(
    tmp_path: Path,
) -> None:
    """20 000 valid-mac1 initiations per second from 65 536 spoofed sources for 10 s (the
    harness's valid_mac1_init_flood, its generator compiled here): the live session keeps
    its state and its path, a second client that starts during the flood attaches (it is
    answered with a cookie reply and sends its attempt again with mac2) and the flood is a
    handful of aggregated HANDSHAKE_FLOOD events. Nothing here is timed: the rates only
    bound how long the test takes."""
    from jumping.keys import decode_key, encode_key, write_keypair

    flood = tmp_path / "flood"
    subprocess.run(["gcc", "-O2", "-o", str(flood), str(FLOOD_C)], check=True, timeout=60)
    with Topology("jam") as topo:
        cns, gns, xns, nns = topo.ns("c"), topo.ns("g"), topo.ns("x"), topo.ns("n")
        topo.link(cns, "ca", "10.201.1.1/24", gns, "ga", "10.201.1.2/24")
        topo.link(xns, "xg", "10.202.0.2/24", gns, "gx", GATEWAY + "/24")
        topo.link(nns, "ng", "10.203.0.2/24", gns, "gn", "10.203.0.1/24")
        topo.run(gns, "ip", "route", "add", "198.18.0.0/15", "via", "10.202.0.2", "dev", "gx")
        n_pub = encode_key(write_keypair(tmp_path / NEW_CLIENT_KEY))
        extra = f'[[peers]]\npublic_key = "{n_pub}"\nallowed_ips = ["10.99.0.3/32"]\n'
        pair = Pair(topo, tmp_path, cns, gns, ["10.201.1.2"], gw_extra=extra)
        (tmp_path / "n.toml").write_text(f"""
[node]
role = "client"
node_id = "c2"
private_key = "{NEW_CLIENT_KEY}"
[tun]
name = "jmpn0"
address = "10.99.0.3/24"
[gateway]
public_key = "{pair.gw_pub}"
[[gateway.endpoints]]
transport = "udp"
host = "10.203.0.1"
port = 51820
[[events]]
sink = "jsonl"
path = "{tmp_path / "n-events.jsonl"}"
[control]
socket = "{tmp_path / "c2.sock"}"
""")
        mac1_flood_file(tmp_path / "mac1.frames", decode_key(pair.gw_pub))
        gx_mac = topo.run(gns, "cat", "/sys/class/net/gx/address").stdout.strip()
        try:
            pair.start()
            assert pair.gw is not None
            topo.run(cns, "ping", "-c", "5", "-i", "0.05", "-W", "2", "10.99.0.1")
            time.sleep(1.0)
            t0_ms = time.time() * 1000
            gen = topo.popen(
                xns, str(flood), "-i", "xg", "-m", gx_mac, "-f", str(tmp_path / "mac1.frames"),
                "-r", str(MAC1_RATE), "-d", str(MAC1_SECONDS), "-n", "65536", "-s", "198.18.0.0",
                log=tmp_path / "gen.json",
            )  # fmt: skip
            time.sleep(3.0)  # well into the flood: cookies are required by now
            second = topo.popen(
                nns, twistd(), "-n", "--pidfile=", f"--logfile={tmp_path / 'client2.log'}",
                "jumping", "client", "--config", str(tmp_path / "n.toml"),
                env=node_env(), log=tmp_path / "client2.out",
            )  # fmt: skip
            attached_during_flood = False
            while gen.poll() is None:
                attached_during_flood = attached_during_flood or any(
                    e.get("new_state") == "ATTACHED" for e in events(tmp_path / "n-events.jsonl")
                )
                time.sleep(0.2)
            generated = json.loads((tmp_path / "gen.json").read_text())
            # the session kept its path: pings get through at once
            topo.run(cns, "ping", "-c", "5", "-i", "0.05", "-W", "2", "10.99.0.1")
            topo.run(nns, "ping", "-c", "3", "-i", "0.05", "-W", "2", "10.99.0.1")
            deadline = time.monotonic() + 30
            sec: dict[str, list[int]] = {}
            while time.monotonic() < deadline:
                sec = {}
                for e in events(pair.gw_events):
                    if e.get("event_type") == "SECURITY_EVENT" and e["ts_ms"] >= t0_ms:
                        sec.setdefault(e["violation_type"], []).append(e["count"])
                if sum(sec.get("HANDSHAKE_FLOOD", [])) >= generated["sent"] * 0.5 and (
                    time.time() * 1000 - t0_ms > (MAC1_SECONDS + 11) * 1000
                ):
                    break
                time.sleep(0.5)
            gw_events = events(pair.gw_events)
            assert pair.gw.poll() is None, pair.diagnostics()
            topo.stop(second)
            # the gateway's own account (jumpctl status): the UDP read loop's gate refused
            # the flood while cookies were required (jumping/service/gate.py)
            st = subprocess.run(
                [sys.executable, "-m", "jumping.cli", "status", "--json",
                 "--socket", str(tmp_path / "gw.sock")],
                capture_output=True, text=True, timeout=30, env=node_env(),
            )  # fmt: skip
            assert st.returncode == 0, st.stderr
            gate = json.loads(st.stdout)["handshakes"]["gate"]
        finally:
            pair.stop()
    assert generated["sent"] >= MAC1_RATE * MAC1_SECONDS * 0.9, generated
    assert gate["available"] and gate["errors"] == 0, gate
    assert generated["sent"] * 0.5 <= gate["refused"] <= generated["sent"], (gate, generated)
    assert attached_during_flood, "the second client did not attach while the flood ran"
    # every initiation that reached the gateway is counted as a handshake flood (some may
    # be lost in the socket buffer on a loaded machine): a few events with counts
    floods = sec.get("HANDSHAKE_FLOOD", [])
    assert 0 < len(floods) <= 4, sec
    assert generated["sent"] * 0.5 <= sum(floods) <= generated["sent"], (sec, generated)
    first_sid = next(
        e["session_id"] for e in gw_events
        if e.get("event_type") == "SESSION_STATE_CHANGE" and e.get("new_state") == "ATTACHED"
    )  # fmt: skip
    changes = [e for e in gw_events if e.get("event_type") == "SESSION_STATE_CHANGE"
               and e["ts_ms"] >= t0_ms and e["session_id"] == first_sid]  # fmt: skip
    assert changes == [], changes
