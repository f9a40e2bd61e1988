"""
Idle cost of a gateway: N attached, idle sessions against one real gateway (twistd, its TUN
device, UDP) in a network namespace of its own; a load generator in the same namespace runs
N client cores (one UDP socket each, on the namespace's loopback). Every session attaches
and carries one packet each way, then nothing: the figures are what idleness costs.

    python3 tests/bench/bench_idle.py [--sessions 1000] [--settle 10] [--window 60]

Prints one JSON line: packets/s on the wire (UDP datagrams received in the namespace, both
ends included, /proc/net/snmp, over the window), per session, and the gateway process's CPU
(utime + stime over the window, % of one core). Needs root (namespace, TUN).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the tree this script is in, not an installed copy
GW_PORT = 51820


def udp_counters() -> int:
    """UDP datagrams received in this network namespace so far."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()]
    udp = [ln for ln in lines if ln[0] == "Udp:"]
    names, values = udp[0][1:], [int(v) for v in udp[1][1:]]
    row = dict(zip(names, values, strict=True))
    # both ends live in this namespace: every datagram on the wire is received once here
    return row["InDatagrams"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- generator
def generator(args: argparse.Namespace) -> int:
    """N client cores on real UDP sockets; prints 'attached N' then keeps them idle."""
    from twisted.internet import protocol, reactor

    from jumping.core.client import ClientCore
    from jumping.core.outputs import ArmTimer, Send
    from jumping.core.policy import Policy
    from jumping.keys import decode_key
    from jumping.testing.sim import ipv4

    gw_pub = decode_key(Path(args.gateway_pub).read_text())
    keys = [bytes.fromhex(k) for k in Path(args.client_keys).read_text().split()]
    clock: Any = reactor
    attached = [0]

    class UDPPath(protocol.DatagramProtocol):
        transport_id = "udp"
        kind = "udp"
        connected = True

        def __init__(self) -> None:
            self.core: Any = None
            self.remote_address = ("127.0.0.1", GW_PORT)
            self.timer: Any = None

        def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
            self.run(self.core.receive(clock.seconds(), self, data))

        def send(self, data: bytes) -> None:
            self.transport.write(data, self.remote_address)

        def run(self, outs: list[Any]) -> None:
            for o in outs:
                if isinstance(o, Send):
                    o.path.send(o.data)
                elif isinstance(o, ArmTimer):
                    if self.timer is not None and self.timer.active():
                        if self.timer.getTime() <= o.at:
                            continue
                        self.timer.cancel()
                    self.timer = clock.callLater(max(0.0, o.at - clock.seconds()), self.fire)
            s = self.core.session
            if s is not None and s.fsm.state.value == "ATTACHED" and not getattr(self, "up", 0):
                self.up = 1
                attached[0] += 1
                me = f"10.77.{1 + self.n // 250}.{1 + self.n % 250}"
                self.run(self.core.seal(clock.seconds(), ipv4(me, "10.77.0.1", b"x" * 32)))
                if attached[0] == len(keys):
                    print(f"attached {attached[0]}", flush=True)

        def fire(self) -> None:
            self.timer = None
            self.run(self.core.tick(clock.seconds()))

    policy = Policy()
    for n, key in enumerate(keys):
        p = UDPPath()
        p.n = n  # type: ignore[attr-defined]
        reactor.listenUDP(0, p, interface="127.0.0.1")
        p.core = ClientCore(
            gateway_public_key=gw_pub, paths=[p], node_id=f"c{n}", private_key=key,
            policy=policy, rng=os.urandom, now=clock.seconds(),
        )  # fmt: skip
        clock.callLater(n * 0.002, lambda p=p: p.run(p.core.start(clock.seconds())))
    reactor.run()
    return 0


# ---------------------------------------------------------------------------- driver
def driver(args: argparse.Namespace) -> int:
    from nacl.public import PrivateKey

    from jumping.core.noise import public_key
    from jumping.keys import encode_key

    ns = f"jidle{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="jumping-idle."))
    procs: list[subprocess.Popen[Any]] = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    twistd = shutil.which("twistd") or str(Path(sys.executable).with_name("twistd"))
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run([sys.executable, "-m", "jumping.cli", "keygen", "--out",
                        str(work / "g.key")], check=True, env=env, capture_output=True)  # fmt: skip
        clients = [PrivateKey.generate().encode() for _ in range(args.sessions)]
        (work / "clients.keys").write_text("\n".join(k.hex() for k in clients))
        peers = "".join(
            f'[[peers]]\npublic_key = "{encode_key(public_key(k))}"\n'
            f'allowed_ips = ["10.77.{1 + n // 250}.{1 + n % 250}/32"]\n'
            for n, k in enumerate(clients)
        )
        (work / "g.toml").write_text(
            '[node]\nrole = "gateway"\nnode_id = "idle-gw"\nprivate_key = "g.key"\n'
            f'[tun]\nname = "jidle0"\naddress = "10.77.0.1/16"\n'
            f'[[listen]]\ntransport = "udp"\nhost = "127.0.0.1"\nport = {GW_PORT}\n' + peers
        )
        nsx = ["ip", "netns", "exec", ns]
        gw = subprocess.Popen(
            nsx + [twistd, "-n", "--pidfile=", f"--logfile={work / 'gw.log'}", "jumping",
                   "gateway", "--config", str(work / "g.toml")], env=env,
        )  # fmt: skip
        procs.append(gw)
        time.sleep(3.0)
        gen = subprocess.Popen(
            nsx + [sys.executable, __file__, "--role", "generator", "--gateway-pub",
                   str(work / "g.pub"), "--client-keys", str(work / "clients.keys")],
            env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(gen)
        assert gen.stdout is not None
        line = gen.stdout.readline().strip()
        if not line.startswith("attached"):
            print(json.dumps({"bench": "idle", "error": f"generator: {line!r}"}))
            return 1
        time.sleep(args.settle)
        c0 = subprocess.run(nsx + [sys.executable, __file__, "--role", "snmp"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
        cpu0, t0 = cpu_seconds(gw.pid), time.monotonic()
        time.sleep(args.window)
        c1 = subprocess.run(nsx + [sys.executable, __file__, "--role", "snmp"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
        cpu1, t1 = cpu_seconds(gw.pid), time.monotonic()
        pps = (int(c1) - int(c0)) / (t1 - t0)
        version = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip()  # fmt: skip
        print(json.dumps({
            "bench": "idle", "version": version, "sessions": args.sessions,
            "window_s": args.window, "wire_packets_per_s": round(pps, 1),
            "packets_per_s_per_session": round(pps / args.sessions, 4),
            "gateway_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
        }))  # fmt: skip
        return 0
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", default="driver", choices=["driver", "generator", "snmp"])
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--gateway-pub")
    ap.add_argument("--client-keys")
    a = ap.parse_args()
    if a.role == "snmp":
        print(udp_counters())
        return 0
    return generator(a) if a.role == "generator" else driver(a)


if __name__ == "__main__":
    raise SystemExit(main())
