"""
A real tunnel: TUN devices in network namespaces made here, gateway and client under twistd.

Handshake, ping, a multi-megabyte TCP transfer with checksum, and captures proving the
outer link never carries the transfer's plaintext (while the inner TUN capture does, so the
check can fail). Bad input at process level: each a one-line error, exit status != 0, and
no TUN device left behind.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from nodes import Pair, node_env, twistd

from jumping.core import wire
from jumping.testing.netns import Topology

pytestmark = pytest.mark.netns

SERVER = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.99.0.1", 5001)); s.listen(1); s.settimeout(30)
c, _ = s.accept(); c.settimeout(30); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(65536)
    if not b: break
    h.update(b); n += len(b)
c.sendall(h.hexdigest().encode()); c.close()
print(n, h.hexdigest())
"""

CLIENT = r"""
import socket, sys
data = open(sys.argv[1], "rb").read()
c = socket.create_connection(("10.99.0.1", 5001), timeout=30)
c.sendall(data); c.shutdown(socket.SHUT_WR)
print(c.recv(100).decode())
"""


@pytest.fixture(params=["offloads", "gateway-without-offloads"])
def tunnel(tmp_path: Path, request: pytest.FixtureRequest):
    """Both ends with TUN offloads (the client sends TCP super-packets as DATA_SEGMENT
    pieces), or a gateway without them (it does not offer the feature: DATA only)."""
    with Topology("jt") as topo:
        cns, gns = topo.ns("c"), topo.ns("g")
        topo.link(cns, "ca", "10.203.1.1/24", gns, "ga", "10.203.1.2/24")
        pair = Pair(topo, tmp_path, cns, gns, ["10.203.1.2"],
                    gw_offload=request.param == "offloads")  # fmt: skip
        pair.offloads = request.param == "offloads"  # type: ignore[attr-defined]
        try:
            pair.start()
            yield topo, pair
        finally:
            pair.stop()


def _capture(topo: Topology, ns: str, ifname: str, out: Path):
    p = topo.popen(
        ns,
        "tcpdump",
        "-i",
        ifname,
        "-U",
        "-n",
        "-s",
        "0",
        "-w",
        str(out),
        log=out.with_suffix(".log"),
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "listening on" not in (
        out.with_suffix(".log").read_text() if out.with_suffix(".log").exists() else ""
    ):
        time.sleep(0.05)
    return p


def test_handshake_ping_transfer_and_no_plaintext_on_the_wire(tunnel, tmp_path: Path) -> None:
    topo, pair = tunnel
    g_att, c_att = pair.attached(pair.gw_events), pair.attached(pair.c_events)
    assert g_att[0]["reason_code"] == c_att[0]["reason_code"] == "HANDSHAKE_OK"
    assert g_att[0]["session_id"] == c_att[0]["session_id"]

    ping = topo.run(pair.cns, "ping", "-c", "5", "-i", "0.2", "-W", "2", "10.99.0.1", check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert " 0% packet loss" in ping.stdout

    marker = os.urandom(16)
    payload = (marker + os.urandom(48)) * (8 * 1024 * 1024 // 64 + 1)
    src = tmp_path / "payload.bin"
    src.write_bytes(payload)
    outer = _capture(topo, pair.gns, "ga", tmp_path / "outer.pcap")
    inner = _capture(topo, pair.gns, "jmpg0", tmp_path / "inner.pcap")
    c_inner = _capture(topo, pair.cns, "jmpc0", tmp_path / "client-inner.pcap")
    server = topo.popen(pair.gns, "python3", "-c", SERVER, log=tmp_path / "server.out")
    time.sleep(0.3)
    sent = topo.run(pair.cns, "python3", "-c", CLIENT, str(src), timeout=60)
    assert server.wait(30) == 0
    time.sleep(0.5)
    topo.stop(outer)
    topo.stop(inner)
    topo.stop(c_inner)
    digest = hashlib.sha256(payload).hexdigest()
    assert sent.stdout.strip() == digest
    assert (tmp_path / "server.out").read_text().split() == [str(len(payload)), digest]

    outer_bytes = (tmp_path / "outer.pcap").read_bytes()
    inner_bytes = (tmp_path / "inner.pcap").read_bytes()
    assert len(outer_bytes) > len(payload) // 2, "the outer capture saw the transfer"
    assert marker in inner_bytes, (
        "the plaintext capture must see the marker (else the check is void)"
    )
    assert marker not in outer_bytes, "plaintext of the transfer appeared on the outer link"
    # the client's kernel handed its TUN device TCP super-packets (TSO)
    c_inner_bytes = (tmp_path / "client-inner.pcap").read_bytes()
    assert max(_pcap_lengths(c_inner_bytes)) > 4 * 1420, "no TSO super-packet was read"
    types = _outer_types(outer_bytes)
    if pair.offloads:
        # ... which it sent whole as DATA_SEGMENT pieces (no per-segment TCP work), in runs
        # of datagrams with UDP GSO; the gateway read them with UDP GRO and wrote each run
        # into its TUN as one TCP super-packet (vnet header, kernel GSO and checksums): the
        # inner capture holds packets larger than the tunnel MTU (captures see GSO packets
        # before the kernel cuts them); the transfer's digest proves what the kernel made
        assert types[wire.MessageType.DATA_SEGMENT] > len(payload) // 2, types
        assert max(_pcap_lengths(inner_bytes)) > 4 * 1420, "no GSO TUN write was seen"
    else:
        # a gateway that does not offer the feature gets complete packets (DATA) only,
        # which the client cut itself
        assert types[wire.MessageType.DATA_SEGMENT] == 0, types
        assert types[wire.MessageType.DATA] > len(payload) // 2, types


def _outer_types(pcap: bytes) -> Counter[int]:
    """Bytes per Jumping message type of the UDP frames in an Ethernet pcap (IPv4); a frame
    the receiving side coalesced (GRO) counts whole for its first datagram's type."""
    out: Counter[int] = Counter()
    off = 24
    while off + 16 <= len(pcap):
        incl, orig = struct.unpack_from("<II", pcap, off + 8)
        frame = pcap[off + 16 : off + 16 + incl]
        off += 16 + incl
        if len(frame) > 14 + 28 and frame[12:14] == b"\x08\x00" and frame[23] == 17:
            ihl = (frame[14] & 15) * 4
            out[frame[14 + ihl + 8]] += orig
    return out


def _pcap_lengths(pcap: bytes) -> list[int]:
    """Original lengths of the packets in a classic pcap file."""
    out, off = [], 24
    while off + 16 <= len(pcap):
        incl, orig = struct.unpack_from("<II", pcap, off + 8)
        out.append(orig)
        off += 16 + incl
    return out


def _run_gateway_expecting_failure(
    topo: Topology, ns: str, conf: Path, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    cmd = [
        "ip",
        "netns",
        "exec",
        ns,
        twistd(),
        "-n",
        "--pidfile=",
        "--logfile=-",
        "jumping",
        "gateway",
        "--config",
        str(conf),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=node_env())
    links = topo.run(ns, "ip", "-o", "link").stdout
    assert "jmpg0" not in links, "a TUN device was left behind"
    return r


@pytest.fixture
def gw_only(tmp_path: Path):
    with Topology("jb") as topo:
        gns = topo.ns("g")
        pair = Pair(topo, tmp_path, gns, gns, ["10.203.1.2"])
        yield topo, gns, pair


def test_key_file_readable_by_others_is_refused(gw_only) -> None:
    topo, gns, pair = gw_only
    (pair.tmp / "gw.key").chmod(0o644)
    r = _run_gateway_expecting_failure(topo, gns, pair.gw_conf)
    assert r.returncode != 0
    assert "chmod 600" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_unknown_transport_plugin_lists_installed(gw_only) -> None:
    topo, gns, pair = gw_only
    pair.gw_conf.write_text(
        pair.gw_conf.read_text().replace('transport = "udp"', 'transport = "udpx"')
    )
    r = _run_gateway_expecting_failure(topo, gns, pair.gw_conf)
    assert r.returncode != 0
    assert "unknown transport plugin 'udpx'; installed:" in r.stderr and "udp" in r.stderr, r.stderr


def test_malformed_config_is_a_clear_error(gw_only) -> None:
    topo, gns, pair = gw_only
    pair.gw_conf.write_text(
        pair.gw_conf.read_text().replace('address = "10.99.0.1/24"', "address = 12")
    )
    r = _run_gateway_expecting_failure(topo, gns, pair.gw_conf)
    assert r.returncode != 0
    assert "[tun] address: must be a non-empty string" in r.stderr, r.stderr
    pair.gw_conf.write_text("this is [not toml")
    r = _run_gateway_expecting_failure(topo, gns, pair.gw_conf)
    assert r.returncode != 0 and "not valid TOML" in r.stderr, r.stderr


def test_wrong_private_key_never_attaches(tmp_path: Path) -> None:
    with Topology("jk") as topo:
        cns, gns = topo.ns("c"), topo.ns("g")
        topo.link(cns, "ca", "10.203.1.1/24", gns, "ga", "10.203.1.2/24")
        pair = Pair(topo, tmp_path, cns, gns, ["10.203.1.2"])
        # the client presents a key the gateway does not know
        (tmp_path / "c.key").unlink()
        (tmp_path / "c.pub").unlink()
        from jumping.keys import write_keypair

        write_keypair(tmp_path / "c.key")
        with pytest.raises(AssertionError, match="not attached"):
            pair.start(timeout=4)
        pair.stop()
        drops = (tmp_path / "gateway.log").read_text()
        assert not pair.attached(pair.gw_events)
        assert "Traceback" not in drops


def test_psk_at_both_ends_attaches_a_different_one_never(tmp_path: Path) -> None:
    """A pre-shared key per peer: the same file at both ends gives a working tunnel; the
    client holding another psk never attaches (its handshake cannot complete)."""
    from jumping import cli

    for name in ("a.psk", "b.psk"):
        assert cli.main(["psk", "--out", str(tmp_path / name)]) == 0
    with Topology("jp") as topo:
        cns, gns = topo.ns("c"), topo.ns("g")
        topo.link(cns, "ca", "10.203.1.1/24", gns, "ga", "10.203.1.2/24")
        good = tmp_path / "good"
        good.mkdir(mode=0o700)
        for name in ("a.psk", "b.psk"):
            (good / name).write_bytes((tmp_path / name).read_bytes())
            (good / name).chmod(0o600)
        pair = Pair(topo, good, cns, gns, ["10.203.1.2"], psk=("a.psk", "a.psk"))
        try:
            pair.start()
            r = topo.run(cns, "ping", "-c", "2", "-W", "2", "10.99.0.1", check=False)
            assert r.returncode == 0, r.stdout
        finally:
            pair.stop()
        bad = tmp_path / "bad"
        bad.mkdir(mode=0o700)
        for name in ("a.psk", "b.psk"):
            (bad / name).write_bytes((tmp_path / name).read_bytes())
            (bad / name).chmod(0o600)
        pair = Pair(topo, bad, cns, gns, ["10.203.1.2"], psk=("a.psk", "b.psk"))
        try:
            with pytest.raises(AssertionError, match="not attached"):
                pair.start(timeout=4)
        finally:
            pair.stop()
        assert not pair.attached(pair.gw_events) and not pair.attached(pair.c_events)
        assert "Traceback" not in (bad / "gateway.log").read_text()


def test_port_in_use_fails_cleanly(gw_only) -> None:
    topo, gns, pair = gw_only
    holder = topo.popen(
        gns,
        "python3",
        "-c",
        "import socket,time; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        "s.bind(('0.0.0.0',51820)); time.sleep(60)",
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "51820" not in topo.run(gns, "ss", "-Hlun").stdout:
        time.sleep(0.05)
    r = _run_gateway_expecting_failure(topo, gns, pair.gw_conf)
    topo.stop(holder)
    assert r.returncode != 0
    assert (
        "cannot listen on udp 0.0.0.0:51820" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    ), r.stderr


def test_client_started_before_gateway_attaches(tmp_path: Path) -> None:
    # the client's first initiations meet ICMP port-unreachable; its path must survive that
    with Topology("jo") as topo:
        cns, gns = topo.ns("c"), topo.ns("g")
        topo.link(cns, "ca", "10.203.1.1/24", gns, "ga", "10.203.1.2/24")
        pair = Pair(topo, tmp_path, cns, gns, ["10.203.1.2"])
        try:
            pair.start(client_first=1.5)
            r = topo.run(cns, "ping", "-c", "2", "-W", "2", "10.99.0.1", check=False)
            assert r.returncode == 0, r.stdout
        finally:
            pair.stop()


def test_socket_helper_sanity() -> None:
    # keep the module importable without root: the pure helpers still work
    assert socket.AF_INET and twistd()
