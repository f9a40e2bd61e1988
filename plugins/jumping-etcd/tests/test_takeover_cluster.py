"""
Session takeover on another gateway (issue 5 item 3) with real processes: three gateways
under twistd in their own network namespaces sharing the cluster identity key and session
ownership on a real 3-member etcd cluster (deploy/cluster/etcd.sh, run in a hub namespace as
deploy/cluster/gateways.sh does), a client namespace listing the three gateways as
endpoints, and a server namespace behind the gateways.

(a) the owning gateway is SIGKILLed during a TCP transfer: the client resumes the same
    SessionID on another gateway and the transfer completes (sha256 on both ends);
(b) the owning gateway is cut from etcd with nftables but stays reachable: it fails closed
    within the lease TTL, tells the client OWNERSHIP_LOST, and the client resumes the same
    SessionID on another gateway;
(c) a rekey initiation copied off the client's link is sent, from another host, to the other
    gateways and to the owner: nothing moves (owner, state, events), and each gateway counts
    it as a replay (the ownership record carries the last accepted handshake timestamp);
(d) the etcd member under the owner's watch is isolated from the other two (it stays up and
    reachable: its watch stream just goes quiet) and the client moves to another gateway,
    which takes the session over through the healthy members: the old owner learns it
    within its lease TTL and ends the session (OWNERSHIP_LOST), forwarding nothing after;
(e) etcd loses its quorum for longer than the gateways' lease deadline: every gateway fails
    closed, and once the quorum is back the client resumes the same SessionID (the old
    owner's lease lapses, it is not revoked, so the record is there to be taken over).

Every run is checked by checker.py (events of all gateways + the gateways' TUN counters
sampled from outside) and by ``jumpctl audit``.

The route back to the client's inner address is announced by the test (a thread playing
the router that follows the owning gateway's OWNERSHIP_CHANGE): anycast or BGP does that in
a deployment; it is not Jumping's job.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from checker import check, read_counters

from jumping import audit
from jumping.keys import encode_key, write_keypair
from jumping.testing.netns import Topology, available

REPO = Path(__file__).resolve().parents[3]
ETCD_SH = REPO / "deploy" / "cluster" / "etcd.sh"
HUB_IP = "10.210.0.1"
SERVER_IP = "10.220.0.2"
N = 3

pytestmark = pytest.mark.netns

SAMPLER = r"""
import sys, time
path = f"/sys/class/net/{sys.argv[1]}/statistics/rx_packets"
out = open(sys.argv[2], "w", buffering=1)
while True:
    try:
        with open(path) as f:
            v = f.read().strip()
    except OSError:
        v = "-"
    out.write(f"{time.time() * 1000:.1f} {v}\n")
    time.sleep(0.01)
"""

SENDER = r"""
import socket, sys, time
data = open(sys.argv[1], "rb").read()
c = socket.create_connection((sys.argv[2], 5001), timeout=60)
for i in range(0, len(data), 65536):
    c.sendall(data[i:i + 65536]); time.sleep(0.02)
c.shutdown(socket.SHUT_WR); print(c.recv(100).decode())
"""

RECEIVER = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1); s.settimeout(60)
c, _ = s.accept(); c.settimeout(60); h = hashlib.sha256(); n = 0
while (b := c.recv(65536)):
    h.update(b); n += len(b)
c.sendall(h.hexdigest().encode()); print(n, h.hexdigest())
"""


def _twistd() -> str:
    local = Path(sys.executable).parent / "twistd"
    found = str(local) if local.exists() else shutil.which("twistd")
    if not found:
        raise RuntimeError("twistd not found next to the interpreter or on PATH")
    return found


def _env() -> dict[str, str]:
    """Make twistd find jumping and jumping_etcd (and their drop-ins) where we import them."""
    import jumping_etcd

    import jumping

    env = dict(os.environ)
    extra = []
    for mod in (jumping, jumping_etcd):
        src = Path(mod.__file__).resolve().parents[1]  # type: ignore[arg-type]
        if (src / "twisted" / "plugins").exists():
            extra.append(str(src))
    if extra:
        env["PYTHONPATH"] = os.pathsep.join([*extra, env.get("PYTHONPATH", "")])
    return env


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


class Cluster:
    def __init__(self, topo: Topology, tmp: Path, extra: str = "") -> None:
        """``extra``: TOML appended to every node's configuration (e.g. a [policy])."""
        self.topo, self.tmp = topo, tmp
        self.hub = topo.ns("hub")
        self.gns = {f"gw{n}": topo.ns(f"g{n}") for n in range(1, N + 1)}
        self.cns = topo.ns("c")
        self.sns = topo.ns("s")
        run = topo.run
        for br, addr in (("br0", f"{HUB_IP}/24"), ("br1", "10.220.0.1/24")):
            run(self.hub, "ip", "link", "add", br, "type", "bridge")
            run(self.hub, "ip", "addr", "add", addr, "dev", br)
            run(self.hub, "ip", "link", "set", br, "up")

        def plug(ns: str, ifname: str, addr: str, br: str, port: str) -> None:
            subprocess.run(["ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer",
                            "name", port, "netns", self.hub], check=True)  # fmt: skip
            run(self.hub, "ip", "link", "set", port, "master", br, "up")
            run(ns, "ip", "addr", "add", addr, "dev", ifname)
            run(ns, "ip", "link", "set", ifname, "up")

        for n in range(1, N + 1):
            ns = self.gns[f"gw{n}"]
            plug(ns, "pub", f"10.210.0.1{n}/24", "br0", f"p{n}")
            plug(ns, "priv", f"10.220.0.1{n}/24", "br1", f"q{n}")
            topo.forward(ns)
        plug(self.cns, "pub", "10.210.0.100/24", "br0", "pc")
        plug(self.sns, "priv", f"{SERVER_IP}/24", "br1", "ps")
        self.etcd_dir = tmp / "etcd"
        # secure as in production: TLS with client certificates, etcd authentication
        r = run(self.hub, "env", f"ETCD_HOST={HUB_IP}", "ETCD_ISOLATABLE=1", "ETCD_SECURE=1", "bash",
                str(ETCD_SH), "start", str(self.etcd_dir), timeout=60)  # fmt: skip
        self.endpoints = r.stdout.strip().splitlines()[-1]
        members = self.endpoints.split(",")
        # gateway n talks to member n first (its watch starts there): test (d) knows which
        # member to isolate
        self.gw_endpoints = {f"gw{n}": ",".join(members[n - 1:] + members[: n - 1])
                             for n in range(1, N + 1)}  # fmt: skip
        # one identity for the whole cluster (the client's Noise responder key)
        gw_pub = encode_key(write_keypair(tmp / "gateway.key"))
        c_pub = encode_key(write_keypair(tmp / "client.key"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.gw_events = {g: tmp / f"{g}-events.jsonl" for g in self.gns}
        self.c_events = tmp / "c-events.jsonl"
        for g in self.gns:
            (tmp / f"{g}.toml").write_text(f"""
[node]
role = "gateway"
node_id = "{g}"
private_key = "gateway.key"
[tun]
name = "jmp{g}"
address = "10.99.0.1/24"
[[listen]]
transport = "udp"
host = "0.0.0.0"
port = 51820
[[peers]]
public_key = "{c_pub}"
allowed_ips = ["10.99.0.2/32"]
[ownership]
backend = "etcd"
endpoints = "{self.gw_endpoints[g]}"
ttl = 5
ca_cert = "{self.etcd_dir}/tls/ca.pem"
cert = "{self.etcd_dir}/tls/client.pem"
key = "{self.etcd_dir}/tls/client.key"
user = "jumping"
password_file = "{self.etcd_dir}/tls/jumping.password"
[metrics]
listen = "127.0.0.1:9477"
[[events]]
sink = "jsonl"
path = "{g}-events.jsonl"
{extra}
""")
        eps = "".join(
            f'[[gateway.endpoints]]\ntransport = "udp"\nhost = "10.210.0.1{n}"\nport = 51820\n'
            for n in range(1, N + 1)
        )
        (tmp / "c.toml").write_text(f"""
[node]
role = "client"
node_id = "c1"
private_key = "client.key"
[tun]
name = "jmpc0"
address = "10.99.0.2/24"
routes = ["10.220.0.0/24"]
[gateway]
public_key = "{gw_pub}"
{eps}
[[events]]
sink = "jsonl"
path = "c-events.jsonl"
{extra}
""")
        self.counter_files = {g: tmp / f"{g}-rx.txt" for g in self.gns}
        self._route_stop = threading.Event()
        self.route_changes: list[tuple[float, str]] = []
        self._router = threading.Thread(target=self._announce, daemon=True)

    # ------------------------------------------------------------------ processes
    def _cmd(self, role: str, name: str) -> list[str]:
        return [_twistd(), "-n", "--pidfile=", f"--logfile={self.tmp / (name + '.log')}",
                "jumping", role, "--config", str(self.tmp / f"{name}.toml")]  # fmt: skip

    def start(self) -> None:
        env = _env()
        for g, ns in self.gns.items():
            self.procs[g] = self.topo.popen(ns, *self._cmd("gateway", g), env=env,
                                            log=self.tmp / f"{g}.out")  # fmt: skip
            self.topo.popen(ns, sys.executable, "-c", SAMPLER, f"jmp{g}",
                            str(self.counter_files[g]))  # fmt: skip
        for g in self.gns:
            self._wait_up(g)
        self._router.start()
        self.procs["c"] = self.topo.popen(self.cns, *self._cmd("client", "c"), env=env,
                                          log=self.tmp / "c.out")  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.owner() is not None and self._client_attached():
                return
            time.sleep(0.05)
        raise AssertionError("client not attached and owned within 20 s\n" + self.diagnostics())

    def _wait_up(self, g: str) -> None:
        log = self.tmp / f"{g}.log"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if log.exists() and " up: tun " in log.read_text():
                return
            if self.procs[g].poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{g} did not start\n" + self.diagnostics())

    def _client_attached(self) -> bool:
        return any(e["event_type"] == "SESSION_STATE_CHANGE" and e["new_state"] == "ATTACHED"
                   for e in events(self.c_events))  # fmt: skip

    def owner(self) -> tuple[str, str, int, int] | None:
        """(gateway, session id, fencing token, ts_ms) of the newest ownership claim."""
        best = None
        for g, path in self.gw_events.items():
            for e in events(path):
                if e["event_type"] == "OWNERSHIP_CHANGE" and e.get("owner") == g:
                    tok = int(e["fencing_token"])
                    if best is None or tok > best[2]:
                        best = (g, e["session_id"], tok, e["ts_ms"])
        return best

    def _announce(self) -> None:
        """The router: the route to the client's inner address follows the owner."""
        current = None
        while not self._route_stop.is_set():
            o = self.owner()
            if o is not None and o[0] != current:
                current = o[0]
                n = current[2:]
                self.topo.run(self.sns, "ip", "route", "replace", "10.99.0.2/32", "via",
                              f"10.220.0.1{n}", check=False)  # fmt: skip
                self.route_changes.append((time.time() * 1000, current))
            self._route_stop.wait(0.02)

    def etcd(self, *args: str) -> None:
        self.topo.run(self.hub, "env", f"ETCD_HOST={HUB_IP}", "bash", str(ETCD_SH), *args,
                      timeout=60)  # fmt: skip

    def stop(self) -> None:
        self._route_stop.set()
        for p in self.procs.values():
            if p.poll() is None:
                self.topo.stop(p)
        self.topo.run(self.hub, "env", f"ETCD_HOST={HUB_IP}", "bash", str(ETCD_SH), "stop",
                      str(self.etcd_dir), check=False, timeout=60)  # fmt: skip

    # ------------------------------------------------------------------ evidence
    def all_gateway_events(self) -> list[dict[str, Any]]:
        return [e for p in self.gw_events.values() for e in events(p)]

    def counters(self) -> dict[str, list[tuple[float, int | None]]]:
        return {g: read_counters(p) for g, p in self.counter_files.items() if p.exists()}

    def client_sessions(self) -> set[str]:
        return {e["session_id"] for e in events(self.c_events)
                if e["event_type"] == "SESSION_STATE_CHANGE"}  # fmt: skip

    def diagnostics(self) -> str:
        parts = []
        for name in [*(f"{g}.log" for g in self.gns), "c.log", "c-events.jsonl",
                     *(f"{g}-events.jsonl" for g in self.gns)]:  # fmt: skip
            p = self.tmp / name
            if p.exists():
                parts.append(f"--- {name}\n" + "\n".join(p.read_text().splitlines()[-25:]))
        return "\n".join(parts)

    def audit(self) -> None:
        files = [str(p) for p in [*self.gw_events.values(), self.c_events] if p.exists()]
        rc = audit.main([*files, "--no-timeline", "--tolerance-ms", "1000"])
        assert rc == 0, "jumpctl audit found violations in this run's events"


def _cluster(tmp_path: Path, extra: str = "") -> Iterator[Cluster]:
    why = available()
    if why:
        pytest.skip(why)
    if shutil.which("etcd") is None or shutil.which("nft") is None:
        pytest.fail("etcd and nft are needed (deploy/setup.sh)")
    with Topology("jk") as topo:
        c = Cluster(topo, tmp_path, extra)
        try:
            c.start()
            yield c
        finally:
            c.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from _cluster(tmp_path)


@pytest.fixture
def rekeying_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Keys rotate every 2 s, so that a rekey initiation is on the wire to be copied."""
    yield from _cluster(tmp_path, "[policy]\nrekey_after_s = 2\n")


def _takeover(c: Cluster, old: str, sid: str, timeout: float) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        o = c.owner()
        if o is not None and o[0] != old and o[1] == sid:
            for e in events(c.gw_events[o[0]]):
                if e["event_type"] == "SESSION_STATE_CHANGE" and e["reason_code"] == "REATTACH_OK":
                    return o[0], e["ts_ms"]
        time.sleep(0.02)
    raise AssertionError(f"no takeover of {sid} within {timeout}s\n" + c.diagnostics())


def _checked(c: Cluster, ends: dict[str, float] | None = None) -> None:
    problems = check(c.all_gateway_events(), c.counters(), ends)
    assert not problems, "\n".join(problems)
    c.audit()


def test_a_owner_killed_during_tcp_transfer_resumes_elsewhere(cluster: Cluster) -> None:
    c = cluster
    o = c.owner()
    assert o is not None
    first, sid, token, _ = o
    payload = os.urandom(6 * 1024 * 1024)
    (c.tmp / "p.bin").write_bytes(payload)
    server = c.topo.popen(c.sns, sys.executable, "-c", RECEIVER, SERVER_IP,
                          log=c.tmp / "recv.out")  # fmt: skip
    time.sleep(0.3)
    sender = subprocess.Popen(
        ["ip", "netns", "exec", c.cns, sys.executable, "-c", SENDER, str(c.tmp / "p.bin"),
         SERVER_IP], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        killed_at = time.time() * 1000
        c.procs[first].send_signal(signal.SIGKILL)
        second, reattached_ms = _takeover(c, first, sid, 10)
        out, err = sender.communicate(timeout=90)
    finally:
        if sender.poll() is None:
            sender.kill()
    assert server.wait(30) == 0, err
    digest = hashlib.sha256(payload).hexdigest()
    assert out.strip() == digest, (out, err)
    assert (c.tmp / "recv.out").read_text().split() == [str(len(payload)), digest]
    assert c.client_sessions() == {sid}, "a new session instead of a takeover"
    new = c.owner()
    assert new is not None and new[0] == second and new[1] == sid and new[2] > token
    took = reattached_ms - killed_at
    fwd = [a for a, _b in _windows_after(c.counters().get(second, []), killed_at)]
    first_fwd = (fwd[0] - killed_at) if fwd else float("nan")
    print(f"\n[takeover] {first} SIGKILLed -> {second} owns {sid[:8]} (token {token} -> "
          f"{new[2]}): REATTACH_OK after {took:.0f} ms, first packet forwarded by {second} "
          f"within {first_fwd:.0f}..{first_fwd + 10:.0f} ms")  # fmt: skip
    c_ev = events(c.c_events)
    assert any(e["event_type"] == "TRANSPORT_SWITCH" for e in c_ev)
    versions = [e["state_version"] for e in c_ev if e["event_type"] == "SESSION_STATE_CHANGE"]
    assert versions == sorted(set(versions))
    _checked(c, ends={first: killed_at})


def _windows_after(samples: list[tuple[float, int | None]], t: float) -> list[tuple[float, float]]:
    from checker import windows

    return [w for w in windows(samples) if w[0] >= t]


def test_b_owner_cut_from_etcd_stops_and_client_moves(cluster: Cluster) -> None:
    c = cluster
    o = c.owner()
    assert o is not None
    first, sid, token, _ = o
    ping = subprocess.Popen(
        ["ip", "netns", "exec", c.cns, "ping", "-i", "0.02", "-c", "600", "-W", "1", SERVER_IP],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        rules = (
            "table inet jcut {\n"
            " chain o { type filter hook output priority 0; policy accept;"
            f" ip daddr {HUB_IP} tcp dport 23791-23796 drop; }}\n"
            " chain i { type filter hook input priority 0; policy accept;"
            f" ip saddr {HUB_IP} tcp sport 23791-23796 drop; }}\n"
            "}\n"
        )
        cut_at = time.time() * 1000
        subprocess.run(["ip", "netns", "exec", c.gns[first], "nft", "-f", "-"], input=rules,
                       text=True, check=True, capture_output=True)  # fmt: skip
        second, reattached_ms = _takeover(c, first, sid, 10)
        out, _ = ping.communicate(timeout=30)
    finally:
        if ping.poll() is None:
            ping.kill()
    lost = [e for e in events(c.gw_events[first])
            if e["event_type"] == "SESSION_TERMINATED" and e["session_id"] == sid]  # fmt: skip
    assert lost and lost[0]["reason_code"] == "OWNERSHIP_LOST", c.diagnostics()
    stopped = lost[0]["ts_ms"] - cut_at
    assert stopped <= 5000, f"{first} kept the session {stopped:.0f} ms (lease TTL 5 s)"
    # the fenced gateway forwarded nothing after it stopped (outside evidence)
    late = _windows_after(c.counters().get(first, []), lost[0]["ts_ms"] + 50)
    assert not late, f"{first} forwarded after losing the session: {late[:3]}"
    assert c.client_sessions() == {sid}, "a new session instead of a takeover"
    assert second != first
    c_ev = events(c.c_events)
    told = [e for e in c_ev if e["event_type"] == "SESSION_STATE_CHANGE"
            and e.get("detail") == "gateway_lost_ownership"]  # fmt: skip
    assert told, "the client was not told OWNERSHIP_LOST"
    print(f"\n[fenced] {first} cut from etcd: stopped after {stopped:.0f} ms, {second} took "
          f"{sid[:8]} over {reattached_ms - lost[0]['ts_ms']:.0f} ms later; "
          f"ping: {out.strip().splitlines()[-2] if out.strip() else '?'}")  # fmt: skip
    _checked(c)


SNIFFER = r"""
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))  # outgoing too
s.bind((sys.argv[1], 0))
out = open(sys.argv[2], "w", buffering=1)
while True:
    try:
        frame = s.recv(65535)
    except OSError:
        continue
    ip = frame[14:]
    if frame[12:14] != b"\x08\x00" or ip[9] != 17:
        continue
    udp = ip[(ip[0] & 15) * 4:]
    if int.from_bytes(udp[2:4], "big") == 51820 and udp[8:9] == b"\x01":
        out.write(f"{time.time() * 1000:.1f} {ip[16:20].hex()} {udp[8:].hex()}\n")
"""

SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[3], 0))
for _ in range(int(sys.argv[4])):
    s.sendto(bytes.fromhex(sys.argv[1]), (sys.argv[2], 51820))
"""


def _drops(c: Cluster, g: str) -> dict[str, float]:
    """Drop counters of gateway ``g``, read from its Prometheus endpoint."""
    r = c.topo.run(c.gns[g], sys.executable, "-c", "import urllib.request; print(urllib."
                   "request.urlopen('http://127.0.0.1:9477/metrics', timeout=5).read().decode())")  # fmt: skip
    out = {}
    for line in r.stdout.splitlines():
        if line.startswith("jumping_drops_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def test_c_replayed_initiation_moves_nothing(rekeying_cluster: Cluster) -> None:
    c = rekeying_cluster
    o = c.owner()
    assert o is not None
    owner, sid, token, _ = o
    caught = c.tmp / "caught.txt"
    c.topo.popen(c.cns, sys.executable, "-c", SNIFFER, "pub", str(caught), log=c.tmp / "sniff.out")
    # traffic: a client rekeys when it sends under keys older than rekey_after_s
    ping = c.topo.popen(c.cns, "ping", "-i", "0.2", "-c", "100", SERVER_IP)
    deadline = time.monotonic() + 15
    rekeys: list[list[str]] = []
    while time.monotonic() < deadline and not rekeys:
        time.sleep(0.2)
        lines = [x.split() for x in caught.read_text().splitlines()] if caught.exists() else []
        rekeys = lines  # every initiation caught after the session exists is a rekey
    assert rekeys, "no rekey initiation seen on the client's link"
    c.topo.stop(ping)  # no more rekeys: the one caught stays the newest
    time.sleep(1.0)  # the owner confirmed it and renewed the record
    _ts, _dst, init = rekeys[-1]
    before = {g: len(events(p)) for g, p in c.gw_events.items()}
    c_before = len(events(c.c_events))
    drops_before = {g: _drops(c, g).get("HANDSHAKE_REPLAY", 0) for g in c.gns}
    # the attacker: the hub host, its own address, three copies to every gateway
    for n in range(1, N + 1):
        c.topo.run(c.hub, sys.executable, "-c", SEND, init, f"10.210.0.1{n}", HUB_IP, "3")
    time.sleep(2.0)
    assert c.owner() == o, f"ownership moved: {o} -> {c.owner()}"
    for g, p in c.gw_events.items():
        new = [e for e in events(p)[before[g]:] if e["event_type"] != "SESSION_STATS"
               and e["session_id"] is not None]  # fmt: skip
        if g != owner:
            assert new == [], f"{g}: {new}"
        else:
            assert not [e for e in new if e["event_type"] in ("OWNERSHIP_CHANGE",
                        "SESSION_TERMINATED", "SESSION_STATE_CHANGE")], new  # fmt: skip
    c_new = [e for e in events(c.c_events)[c_before:] if e["event_type"] == "SESSION_STATE_CHANGE"]
    assert c_new == [], c_new
    assert c.client_sessions() == {sid}
    for g in c.gns:
        got = _drops(c, g).get("HANDSHAKE_REPLAY", 0) - drops_before[g]
        assert got >= 3, f"{g} counted {got} replays of 3"
    print(f"\n[replay] rekey initiation sent 3x to each of {N} gateways from {HUB_IP}: owner "
          f"{owner} (token {token}) unchanged, no session event, HANDSHAKE_REPLAY counted by all")  # fmt: skip
    _checked(c)


def test_checker_fails_on_a_bad_history() -> None:
    """Hand-made: gw2 claims with a higher token but gw1 keeps forwarding afterwards, and
    gw3 claims with a lower token while gw2 holds it."""
    sid = "ab" * 16

    def ev(node: str, ts: int, et: str, **f: Any) -> dict[str, Any]:
        return {"node_id": node, "session_id": sid, "ts_ms": ts, "event_type": et, **f}

    good_events = [
        ev("gw1", 1000, "OWNERSHIP_CHANGE", owner="gw1", fencing_token=5),
        ev("gw1", 3000, "SESSION_TERMINATED", reason_code="OWNERSHIP_LOST"),
        ev("gw2", 3100, "OWNERSHIP_CHANGE", owner="gw2", fencing_token=9),
    ]
    gw1 = [(t, 10 + t // 100 if t <= 3000 else 40) for t in range(900, 6000, 100)]
    gw2 = [(t, 0 if t < 3200 else t // 100) for t in range(900, 6000, 100)]
    assert check(good_events, {"gw1": gw1, "gw2": gw2}) == []
    # gw1 keeps forwarding until 5 s: interleaved with gw2, and without ownership
    gw1_bad = [(t, 10 + t // 100) for t in range(900, 6000, 100)]
    problems = check(good_events, {"gw1": gw1_bad, "gw2": gw2})
    kinds = {p.split(":")[0] for p in problems}
    assert {"TWO_FORWARDERS", "FORWARD_WITHOUT_OWNERSHIP"} <= kinds, problems
    # a claim without a higher token while the other still owns it
    bad_claim = [*good_events, ev("gw3", 4000, "OWNERSHIP_CHANGE", owner="gw3", fencing_token=7)]
    assert any(p.startswith("TWO_OWNERS") for p in check(bad_claim, {})), "missed TWO_OWNERS"
    # and the command line says so
    assert _cli_rc(good_events, {"gw1": gw1_bad, "gw2": gw2}) == 1


def _cli_rc(evs: list[dict[str, Any]], counters: dict[str, list[tuple[int, int]]]) -> int:
    import tempfile

    from checker import main

    with tempfile.TemporaryDirectory() as d:
        ep = Path(d) / "e.jsonl"
        ep.write_text("".join(json.dumps(e) + "\n" for e in evs))
        args = ["--events", str(ep), "--counters"]
        for g, samples in counters.items():
            cp = Path(d) / f"{g}.txt"
            cp.write_text("".join(f"{t} {v}\n" for t, v in samples))
            args.append(f"{g}={cp}")
        return main(args)


def test_d_owner_watch_member_isolated_owner_still_learns_the_takeover(cluster: Cluster) -> None:
    c = cluster
    o = c.owner()
    assert o is not None
    first, sid, token, _ = o
    member = int(first[2:])  # the member under the owner's watch (its first endpoint)
    ping = subprocess.Popen(
        ["ip", "netns", "exec", c.cns, "ping", "-i", "0.02", "-c", "600", "-W", "1", SERVER_IP],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        c.etcd("isolate-member", str(c.etcd_dir), str(member))
        isolated_at = time.time() * 1000
        # the client loses its path to the owner (the owner itself stays up and in etcd)
        rules = (
            "table inet jcut {\n"
            " chain o { type filter hook output priority 0; policy accept;"
            " ip daddr 10.210.0.100 udp sport 51820 drop; }\n"
            " chain i { type filter hook input priority 0; policy accept;"
            " ip saddr 10.210.0.100 udp dport 51820 drop; }\n"
            "}\n"
        )
        subprocess.run(["ip", "netns", "exec", c.gns[first], "nft", "-f", "-"], input=rules,
                       text=True, check=True, capture_output=True)  # fmt: skip
        second, reattached_ms = _takeover(c, first, sid, 15)
        taken = [e for e in events(c.gw_events[second]) if e["event_type"] == "OWNERSHIP_CHANGE"
                 and e.get("owner") == second and e["session_id"] == sid]  # fmt: skip
        taken_at = taken[0]["ts_ms"]
        deadline = time.monotonic() + 8
        lost: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not lost:
            lost = [e for e in events(c.gw_events[first])
                    if e["event_type"] == "SESSION_TERMINATED" and e["session_id"] == sid]  # fmt: skip
            time.sleep(0.05)
        ping.kill()
    finally:
        if ping.poll() is None:
            ping.kill()
        c.etcd("rejoin-member", str(c.etcd_dir), str(member))
    assert lost, f"{first} never learnt that {second} took {sid[:8]} over\n" + c.diagnostics()
    assert lost[0]["reason_code"] == "OWNERSHIP_LOST", lost
    learnt = lost[0]["ts_ms"] - taken_at
    assert learnt <= 5000, f"{first} learnt the takeover after {learnt:.0f} ms (lease TTL 5 s)"
    late = _windows_after(c.counters().get(first, []), lost[0]["ts_ms"] + 50)
    assert not late, f"{first} forwarded after losing the session: {late[:3]}"
    assert c.client_sessions() == {sid}, "a new session instead of a takeover"
    print(f"\n[watch member isolated] m{member} cut from the quorum under {first}'s watch; "
          f"{second} took {sid[:8]} over {taken_at - isolated_at:.0f} ms later; {first} "
          f"ended it {lost[0]['ts_ms'] - isolated_at:.0f} ms after the isolation, "
          f"{learnt:.0f} ms after the takeover{' (it had failed closed)' if learnt < 0 else ''}")  # fmt: skip
    _checked(c)


def _etcd_leader(c: Cluster) -> int:
    """The number (1..3) of the etcd member that leads the raft group now."""
    out = c.topo.run(c.hub, "env", f"ETCD_HOST={HUB_IP}", "bash", str(ETCD_SH), "ctl",
                     str(c.etcd_dir), "endpoint", "status", "-w", "json")  # fmt: skip
    for st in json.loads(out.stdout):
        status = st["Status"]
        if status["header"]["member_id"] == status["leader"]:
            return int(st["Endpoint"].rsplit(":", 1)[1]) - 23790
    raise AssertionError(f"no etcd leader in {out.stdout}")


def test_e_quorum_lost_past_the_lease_deadline_the_session_resumes(cluster: Cluster) -> None:
    """etcd loses its quorum (both followers frozen) for longer than the gateways' lease
    deadline: every gateway fails closed, the owner tells the client OWNERSHIP_LOST. Once
    the quorum is back, the client resumes the *same* session on a gateway of the cluster:
    the failed-closed owner's lease is left to lapse, not revoked, so the session's record
    is still there to be taken over (stop 43's CI: a leader election that took 4 s on a
    loaded machine revoked every record, and every client started a new session)."""
    c = cluster
    o = c.owner()
    assert o is not None
    first, sid, token, _ = o
    leader = _etcd_leader(c)
    followers = [n for n in (1, 2, 3) if n != leader]
    ping = subprocess.Popen(
        ["ip", "netns", "exec", c.cns, "ping", "-i", "0.05", "-c", "400", "-W", "1", SERVER_IP],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    frozen: list[int] = []
    try:
        time.sleep(1.0)
        for n in followers:  # the leader keeps running: it steps down, it revokes nothing
            c.etcd("freeze-member", str(c.etcd_dir), str(n))
            frozen.append(n)
        frozen_at = time.time() * 1000
        time.sleep(5.0)  # past the deadline: last counted renewal + TTL 5 s - guard 1 s
        for n in followers:
            c.etcd("thaw-member", str(c.etcd_dir), str(n))
        frozen.clear()
        thawed_at = time.time() * 1000
        deadline = time.monotonic() + 15
        now = c.owner()
        while time.monotonic() < deadline and c.client_sessions() == {sid}:
            now = c.owner()
            if now is not None and now[2] > token:
                break
            time.sleep(0.05)
        ping.kill()
    finally:
        if ping.poll() is None:
            ping.kill()
        for n in frozen:
            c.etcd("thaw-member", str(c.etcd_dir), str(n))
    ended = [e for e in events(c.gw_events[first])
             if e["event_type"] == "SESSION_TERMINATED" and e["session_id"] == sid]  # fmt: skip
    assert ended and ended[0]["reason_code"] == "OWNERSHIP_LOST", (
        f"{first} did not fail closed while etcd had no quorum\n" + c.diagnostics()
    )
    assert ended[0]["ts_ms"] < thawed_at
    assert c.client_sessions() == {sid}, "a new session instead of a takeover\n" + c.diagnostics()
    assert now is not None and now[1] == sid and now[2] > token, (
        f"{sid[:8]} not taken over within 15 s of the quorum's return\n" + c.diagnostics()
    )
    back = [e for e in events(c.gw_events[now[0]]) if e["event_type"] == "SESSION_STATE_CHANGE"
            and e["session_id"] == sid and e["reason_code"] == "REATTACH_OK"]  # fmt: skip
    assert back, f"{now[0]} claimed {sid[:8]} but never bound it\n" + c.diagnostics()
    print(f"\n[quorum lost] m{followers[0]} and m{followers[1]} frozen for "
          f"{thawed_at - frozen_at:.0f} ms; {first} failed closed "
          f"{ended[0]['ts_ms'] - frozen_at:.0f} ms in; {now[0]} took {sid[:8]} over "
          f"{now[3] - thawed_at:.0f} ms after the thaw")  # fmt: skip
    _checked(c)
