"""
A real twistd gateway and client in network namespaces with QUIC among their transports:

(a) everything blocked but UDP/443: the session comes up over QUIC and carries a TCP
    transfer (sha256 equal on both ends);
(b) during a transfer over UDP, UDP to the Jumping port is blocked: the session jumps to
    QUIC and the transfer completes, same SessionID;
(c) the QUIC path blackholed: the session jumps to TCP.

Faults are nftables rules in the namespaces; every run's events must pass `jumpctl audit`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nodes import Pair, events, node_env

from jumping import audit, cli
from jumping.testing.netns import Topology

pytestmark = pytest.mark.netns
GW, CL = "10.201.1.2", "10.201.1.1"
QUIC_PORT, PORT = 443, 51820

SENDER = r"""
import socket, sys, time
data = open(sys.argv[1], "rb").read()
c = socket.create_connection(("10.99.0.1", 5001), timeout=30)
for i in range(0, len(data), 65536):
    c.sendall(data[i:i + 65536]); time.sleep(float(sys.argv[2]))
c.shutdown(socket.SHUT_WR); print(c.recv(100).decode())
"""
RECEIVER = r"""
import hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.99.0.1", 5001)); s.listen(1); s.settimeout(60)
c, _ = s.accept(); c.settimeout(60); h = hashlib.sha256(); n = 0
while (b := c.recv(65536)):
    h.update(b); n += len(b)
c.sendall(h.hexdigest().encode()); print(n, h.hexdigest())
"""


def quic_pair(topo: Topology, tmp: Path, cns: str, gns: str, transports: tuple[str, ...]) -> Pair:
    """A Pair whose gateway also listens on QUIC/443 with a certificate from `jumpctl
    tls-cert`, and whose client has a QUIC endpoint pinned to it."""
    assert cli.main(["tls-cert", "--out", str(tmp / "gw-tls"), "--name", GW]) == 0
    pin = subprocess.run(
        ["python3", "-m", "jumping.cli", "tls-pin", str(tmp / "gw-tls.crt")],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    gw_quic = (
        f'\n[[listen]]\ntransport = "quic"\nhost = "0.0.0.0"\nport = {QUIC_PORT}\n'
        '[listen.options]\ncertificate_file = "gw-tls.crt"\nprivate_key_file = "gw-tls.key"\n'
    )
    c_quic = (
        f'\n[[gateway.endpoints]]\ntransport = "quic"\nhost = "{GW}"\nport = {QUIC_PORT}\n'
        f'[gateway.endpoints.options]\npin_sha256 = "{pin}"\n'
    )
    return Pair(
        topo, tmp, cns, gns, [GW], port=PORT, transports=transports,
        gw_extra=gw_quic, c_extra=c_quic,
    )  # fmt: skip


def nft(topo: Topology, ns: str, rules: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=rules, text=True, check=True, capture_output=True,
    )  # fmt: skip


def drop_udp_port(port: int, table: str) -> str:
    return (
        f"table inet {table} {{\n"
        f" chain o {{ type filter hook output priority 0; policy accept; udp dport {port} drop; udp sport {port} drop; }}\n"
        f" chain i {{ type filter hook input priority 0; policy accept; udp dport {port} drop; udp sport {port} drop; }}\n"
        "}\n"
    )


def only_udp_443(ifname: str) -> str:
    return (
        "table inet jonly443 {\n"
        f' chain o {{ type filter hook output priority 0; policy accept; oifname "{ifname}" udp dport 443 accept; oifname "{ifname}" udp sport 443 accept; oifname "{ifname}" drop; }}\n'
        f' chain i {{ type filter hook input priority 0; policy accept; iifname "{ifname}" udp sport 443 accept; iifname "{ifname}" udp dport 443 accept; iifname "{ifname}" drop; }}\n'
        "}\n"
    )


def _audit(pair: Pair) -> None:
    files = [str(p) for p in (pair.gw_events, pair.c_events) if p.exists()]
    rc = audit.main([*files, "--no-timeline", "--tolerance-ms", "1000"])
    assert rc == 0, "jumpctl audit found violations in this run's events"


def bound_kind(pair: Pair) -> str | None:
    """transport_kind of the client's current binding, from its events."""
    evs = [
        e
        for e in events(pair.c_events)
        if e["event_type"] in ("TRANSPORT_ATTACHED", "TRANSPORT_SWITCH")
    ]
    if not evs:
        return None
    return evs[-1].get("new_transport_kind") or evs[-1].get("transport_kind")


def session_ids(pair: Pair) -> set[str]:
    return {
        e["session_id"]
        for e in events(pair.c_events) + events(pair.gw_events)
        if e["event_type"] == "SESSION_STATE_CHANGE" and e["new_state"] != "TERMINATED"
    }


def wait(cond: Any, what: str, pair: Pair, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}:\n{pair.diagnostics()}")


def transfer(topo: Topology, pair: Pair, tmp: Path, size: int, pause: float,
             during: Any = None) -> None:  # fmt: skip
    """A TCP transfer client -> gateway through the tunnel, sha256 checked at both ends;
    ``during`` runs (in a thread) while it flows."""
    payload = os.urandom(size)
    (tmp / "p.bin").write_bytes(payload)
    server = topo.popen(pair.gns, "python3", "-c", RECEIVER, log=tmp / "recv.out")
    time.sleep(0.3)
    t = threading.Thread(target=during) if during else None
    if t:
        t.start()
    r = topo.run(pair.cns, "python3", "-c", SENDER, str(tmp / "p.bin"), str(pause), timeout=120)
    if t:
        t.join()
    assert server.wait(30) == 0, pair.diagnostics()
    digest = hashlib.sha256(payload).hexdigest()
    assert r.stdout.strip() == digest, pair.diagnostics()
    assert (tmp / "recv.out").read_text().split() == [str(len(payload)), digest]


@pytest.fixture
def topo() -> Iterator[tuple[Topology, str, str]]:
    with Topology("jq") as t:
        cns, gns = t.ns("c"), t.ns("g")
        t.link(cns, "ca", f"{CL}/24", gns, "ga", f"{GW}/24")
        yield t, cns, gns


def test_a_only_udp_443_open_session_comes_up_over_quic_and_carries_tcp(
    topo: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t, cns, gns = topo
    nft(t, cns, only_udp_443("ca"))
    pair = quic_pair(t, tmp_path, cns, gns, ("udp", "tcp"))
    try:
        pair.start(timeout=30)
        assert bound_kind(pair) == "quic"
        attached = [e for e in events(pair.gw_events) if e["event_type"] == "TRANSPORT_ATTACHED"]
        assert attached and attached[0]["transport_kind"] == "quic"
        assert attached[0]["transport_id"].startswith("quic:")
        transfer(t, pair, tmp_path, 8 * 1024 * 1024, 0.0)
        assert bound_kind(pair) == "quic" and len(session_ids(pair)) == 1
        log = (tmp_path / "client.log").read_text()
        assert "tun mtu 1410" in log, "the tunnel MTU was fitted to the QUIC path"
    finally:
        pair.stop()
        _audit(pair)
    capsys.readouterr()
    assert audit.main([str(pair.c_events), str(pair.gw_events)]) == 0
    timeline = capsys.readouterr().out
    assert "(quic)" in timeline, "jumpctl audit shows the transport kind of the binding"


def test_b_udp_blocked_mid_transfer_jumps_to_quic_same_session(topo: Any, tmp_path: Path) -> None:
    t, cns, gns = topo
    pair = quic_pair(t, tmp_path, cns, gns, ("udp",))
    try:
        pair.start(timeout=30)
        assert bound_kind(pair) == "udp"
        # the QUIC path is up within milliseconds; a second or two gives it answered probes
        time.sleep(2.5)

        def block() -> None:
            time.sleep(0.6)
            for ns in (cns, gns):
                nft(t, ns, drop_udp_port(PORT, "jblockudp"))

        transfer(t, pair, tmp_path, 12 * 1024 * 1024, 0.012, during=block)  # >= 2.3 s
        assert bound_kind(pair) == "quic", pair.diagnostics()
        assert len(session_ids(pair)) == 1
        sw = [e for e in events(pair.c_events) if e["event_type"] == "TRANSPORT_SWITCH"]
        assert sw[-1]["old_transport_kind"] == "udp" and sw[-1]["new_transport_kind"] == "quic"
    finally:
        pair.stop()
        _audit(pair)


def test_c_quic_blackholed_jumps_to_tcp(topo: Any, tmp_path: Path) -> None:
    t, cns, gns = topo
    block_tcp = (
        "table inet jnotcp {\n"
        f" chain o {{ type filter hook output priority 0; policy accept; tcp dport {PORT} drop; }}\n"
        "}\n"
    )
    nft(t, cns, block_tcp)  # the session starts on QUIC: TCP comes later
    pair = quic_pair(t, tmp_path, cns, gns, ("tcp",))
    try:
        pair.start(timeout=30)
        assert bound_kind(pair) == "quic"
        t.run(cns, "nft", "delete", "table", "inet", "jnotcp")

        def tcp_up() -> bool:
            r = t.run(cns, "ss", "-Htn", "state", "established", f"dport = :{PORT}", check=False)
            return bool(r.stdout.strip())

        wait(tcp_up, "the TCP path to connect", pair)
        time.sleep(1.5)  # a probe or two on it: a validated candidate

        def blackhole() -> None:
            time.sleep(0.6)
            for ns in (cns, gns):
                nft(t, ns, drop_udp_port(QUIC_PORT, "jblockquic"))

        transfer(t, pair, tmp_path, 12 * 1024 * 1024, 0.012, during=blackhole)  # >= 2.3 s
        assert bound_kind(pair) == "tcp", pair.diagnostics()
        assert len(session_ids(pair)) == 1
        sw = [e for e in events(pair.c_events) if e["event_type"] == "TRANSPORT_SWITCH"]
        assert sw[-1]["old_transport_kind"] == "quic" and sw[-1]["new_transport_kind"] == "tcp"
    finally:
        pair.stop()
        _audit(pair)


class DaemonPair(Pair):
    """The same nodes, daemonized by twistd (no -n): it forks into the background after
    makeService, so everything the QUIC paths started must survive the fork."""

    def cmd(self, role: str, conf: Path) -> list[str]:
        cmd = super().cmd(role, conf)
        cmd.remove("-n")
        cmd[cmd.index("--pidfile=")] = f"--pidfile={self.tmp / (role + '.pid')}"
        return cmd

    def stop(self) -> None:
        import signal

        for role in ("client", "gateway"):
            pidfile = self.tmp / f"{role}.pid"
            if not pidfile.exists():
                continue
            pid = int(pidfile.read_text().strip())
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
        super().stop()


def test_d_daemonized_nodes_come_up_over_quic(topo: Any, tmp_path: Path) -> None:
    """Only UDP/443 is open, so a tunnel that passes pings runs over QUIC. (Told by pings,
    not events: the event sinks' own behaviour across the fork is not this test's.)"""
    t, cns, gns = topo
    nft(t, cns, only_udp_443("ca"))
    pair = quic_pair(t, tmp_path, cns, gns, ("udp",))
    pair.__class__ = DaemonPair
    env = node_env()
    try:
        t.popen(gns, *pair.cmd("gateway", pair.gw_conf), env=env, log=tmp_path / "gateway.out")
        pair._wait_log("gateway", 30)
        t.popen(cns, *pair.cmd("client", pair.c_conf), env=env, log=tmp_path / "client.out")

        def pings() -> bool:
            r = t.run(cns, "ping", "-c", "1", "-W", "1", "10.99.0.1", check=False)
            return r.returncode == 0

        wait(pings, "a ping through the daemonized tunnel", pair, 30)
        r = t.run(cns, "ping", "-c", "5", "-i", "0.1", "-W", "1", "10.99.0.1", check=False)
        assert " 0% packet loss" in r.stdout, r.stdout + pair.diagnostics()
        assert (tmp_path / "client.pid").exists() and (tmp_path / "gateway.pid").exists()
    finally:
        pair.stop()
