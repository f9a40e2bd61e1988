"""
Many sessions against one real gateway: a twistd gateway (its TUN device, UDP) in a network
namespace this script creates, and load generator processes in the same namespace, each
running its share of N client cores, every one on its own UDP socket and its own source
address (127.0.0.0/8 is local: client n sends from 127.(1 + n >> 16).(n >> 8 & 255).(n & 255)),
so the gateway sees N distinct sources, as from N hosts, each inside its per-source limits.
The gateway runs on CPU 0 and the generators on the other CPUs (taskset), so they do not
steal its core.

    python3 tests/bench/scale/loadgen.py --sessions 10000 [--procs 4] [--rate 2000]
        [--hold 190] [--window 30] [--active 0] [--json out.json]

Phases, one JSON line at the end (and progress on stderr):
- **ramp**: clients start handshakes at ``--rate`` per second in all; reported: the rate the
  gateway completed them (wall), and handshakes per gateway CPU-second (utime + stime of the
  gateway process while it ramped: "per core" in docs/benchmarks.md) and the share of its
  core it used (``gateway_busy``: below 1 the generators, not the gateway, set the pace);
  then, on the gateway's CPU while it idles, the same handshakes by the core alone in one
  process and this machine's X25519 costs (``core_alone``: bench_controlplane.py
  --handshakes-only ``--core-handshakes``), and the service's CPU per handshake over the
  core's;
- **idle hold**: nothing but the quiet model's NAT keepalives for ``--hold`` seconds (default
  190: past ``rekey_after_s`` 120 plus ``key_expiry_grace_s`` 60, when idle keys are wiped),
  then over ``--window`` seconds: gateway RSS per session, defined as (RSS with N idle
  sessions - RSS with the same N peers configured and no session) / N, gateway CPU (% of a
  core) and UDP datagrams per second on the wire;
- **active** (``--active M``): M sessions send one ICMP echo per second through the tunnel
  to the gateway's TUN address, for ``--window`` seconds; the replies' round trips give
  p50/p99 latency, and the gateway's CPU is measured meanwhile;
- **churn** (``--churn R``): R actions per second for ``--churn-seconds`` (600): a client
  roams to a new source port (``--roam`` share), renews its expired keys (``--rekey``), or
  ends its session and starts a new one (a death and a birth); then ``--churn-settle``
  (240) s of quiet; reported: what was done, gateway CPU, RSS before / at most during /
  after, and the gateway's live sessions against the clients' attached ones
  (``left_behind``);
- **audit**: ``jumpctl audit`` of the gateway's event stream (invariants, gaps).

Needs root (namespace, TUN), taskset (util-linux). Memory: about 30 KiB per client core in the
generators (the gateway is what is measured).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))  # the tree this script is in, not an installed copy
GW_PORT = 51820
GW_ADDR = "10.64.0.1"
FD_SPARE = 512  # descriptors a generator needs besides its sockets
KEEP = 200  # rotated event files the gateway keeps (64 MiB each)


def client_source(n: int) -> str:
    return f"127.{1 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


def client_inner(n: int) -> str:
    m = n + 2  # 10.64.0.0/10: .0.0 is the network, .0.1 the gateway
    return f"10.{64 + (m >> 16)}.{(m >> 8) & 255}.{m & 255}"


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU-seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def udp_in(ns: str) -> int:
    """UDP datagrams that arrived in the namespace so far (both ends live there: each datagram
    on the wire arrives once): those read, and those the kernel dropped (``InErrors``: a full
    receive buffer, or the gateway's socket filter, which drops the NAT keepalives of idle
    sessions under expired keys) or had no socket for (``NoPorts``)."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("Udp:")]
    c = dict(zip(rows[0][1:], rows[1][1:], strict=True))
    return int(c["InDatagrams"]) + int(c["InErrors"]) + int(c["NoPorts"])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- generator
def icmp_echo(src: str, dst: str, ident: int, seq: int, stamp: float) -> bytes:
    """An IPv4 ICMP echo request carrying ``stamp`` (checksums right: the gateway's kernel
    answers it)."""
    import socket

    def csum(b: bytes) -> int:
        if len(b) % 2:
            b += b"\0"
        s = sum(struct.unpack(f"!{len(b) // 2}H", b))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return ~s & 0xFFFF

    body = struct.pack("!d", stamp) + b"j" * 24
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + body
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), seq & 0xFFFF, 0, 64, 1, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + icmp


def generator(args: argparse.Namespace) -> int:
    """Client cores ``--first`` .. ``--first + --count - 1`` on their own UDP sockets; reads
    commands on stdin (``active M SECONDS``, ``quit``), reports on stdout."""
    import random
    import traceback

    from twisted.internet import protocol, reactor, stdio
    from twisted.protocols.basic import LineReceiver

    from jumping.core.client import ClientCore
    from jumping.core.fsm import Reason
    from jumping.core.outputs import ArmTimer, Send, WriteTun
    from jumping.core.policy import Policy
    from jumping.keys import decode_key

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + FD_SPARE
    if want > hard:
        raise SystemExit(f"loadgen: {args.count} sockets need {want} descriptors, limit {hard}")
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    gw_pub = decode_key(Path(args.gateway_pub).read_text())
    keys = Path(args.client_keys).read_text().split()[args.first : args.first + args.count]
    clock: Any = reactor
    state = {"attached": 0, "rtts": [], "sent": 0}

    def say(line: str) -> None:
        # through StandardIO's transport, never sys.stdout: StandardIO makes the pipe
        # non-blocking, and a report larger than the pipe (the active phase's round trips)
        # written with sys.stdout is cut short by BlockingIOError, leaving the driver
        # waiting for the rest of its line for ever; the transport buffers and writes it
        # as the driver reads
        commands.sendLine(line.encode())

    class UDPPath(protocol.DatagramProtocol):
        transport_id = "udp"
        kind = "udp"
        connected = True

        def __init__(self, n: int) -> None:
            self.n = n
            self.core: Any = None
            self.remote_address = ("127.0.0.1", GW_PORT)
            self.timer: Any = None
            self.up = False

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
                elif isinstance(o, WriteTun):
                    d = o.data
                    if len(d) >= 36 and d[9] == 1 and d[20] == 0:  # an ICMP echo reply
                        (stamp,) = struct.unpack_from("!d", d, 28)
                        state["rtts"].append(clock.seconds() - stamp)
            s = self.core.session
            if not self.up and s is not None and s.fsm.state.value == "ATTACHED":
                self.up = True
                state["attached"] += 1
            elif self.up and (s is None or s.fsm.state.value == "TERMINATED"):
                self.up = False
                state["attached"] -= 1

        def fire(self) -> None:
            self.timer = None
            self.run(self.core.tick(clock.seconds()))

        def ping(self, seq: int) -> None:
            now = clock.seconds()
            packet = icmp_echo(client_inner(self.n), GW_ADDR, self.n & 0xFFFF, seq, now)
            state["sent"] += 1
            self.run(self.core.seal(now, packet))

    policy = Policy()
    paths: list[UDPPath] = []

    def new_core(p: UDPPath) -> None:
        p.core = ClientCore(
            gateway_public_key=gw_pub, paths=[p], node_id=f"c{p.n}",
            private_key=bytes.fromhex(keys[p.n - args.first]), policy=policy, rng=os.urandom,
            now=clock.seconds(),
        )  # fmt: skip

    for i in range(len(keys)):
        n = args.first + i
        p = UDPPath(n)
        reactor.listenUDP(0, p, interface=client_source(n))
        new_core(p)
        paths.append(p)
    gap = 1.0 / args.rate if args.rate > 0 else 0.0

    def start(i: int) -> None:
        # a batch per reactor turn, so that answers are read while the ramp goes on
        now = clock.seconds()
        end = min(len(paths), i + max(1, int(0.01 / gap)) if gap else len(paths))
        for p in paths[i:end]:
            p.run(p.core.start(now))
        if end < len(paths):
            clock.callLater(gap * (end - i), start, end)

    last = [-1]

    def report() -> None:
        if state["attached"] != last[0]:
            last[0] = state["attached"]
            say(f"attached {state['attached']}")
        clock.callLater(0.5, report)

    churn = {"deaths": 0, "births": 0, "roams": 0, "rekeys": 0, "skipped": 0, "errors": 0}
    rnd = random.Random(args.first)

    def expired(p: UDPPath) -> bool:
        s = p.core.session
        return s is not None and s.current is None

    def rekey(p: UDPPath) -> None:
        """A packet after idle: keys that expired are renewed first (a rekey, same id)."""
        churn["rekeys"] += 1
        p.ping(0)

    def die_and_reborn(p: UDPPath) -> None:
        """The client ends its session (TERMINATE, under live keys) and starts a new one."""
        now = clock.seconds()
        s = p.core.session
        if not p.up or s is None or s.current is None:
            churn["skipped"] += 1
            return
        p.run(p.core.terminate(now, s.session_id, Reason.OPERATOR_TERMINATED))
        # the timer stays: the core asked for it and arms no other while it is due (a tick
        # with nothing to do is cheap)
        if p.up:  # run() saw the session end
            p.up = False
            state["attached"] -= 1
        churn["deaths"] += 1
        # a new session from the same client core, as a real client starts again after its
        # session ended (its keys, and what it computed from them, are kept)
        p.run(p.core.start(now))
        churn["births"] += 1

    def roam(p: UDPPath) -> None:
        """The client's source port changes (a NAT rebinding): the gateway must validate
        the new address and move the session to it."""
        churn["roams"] += 1
        old, p.transport = p.transport, None
        new = reactor.listenUDP(0, p, interface=client_source(p.n))
        # the old port's end (a reactor turn later) clears the protocol's transport: the
        # new port is put back then
        old.stopListening().addCallback(lambda _: setattr(p, "transport", new))
        p.ping(1)

    settle = [0.0]  # seconds after the churn before the clients' states are told

    def churn_step(due: float, gap: float, until: float, roam_p: float, rekey_p: float) -> None:
        """The actions due by now, on a fixed schedule (``gap`` apart from the start): a
        turn that came late catches up, so the rate asked is the rate run while this
        process keeps up (``late_ms`` tells how far behind it ended); at most 64 a turn, so
        that answers are read between them."""
        now = clock.seconds()
        for _ in range(64):
            if due > now or due >= until:
                break
            due += gap
            p = paths[rnd.randrange(len(paths))]
            r = rnd.random()
            try:
                act(p, r, roam_p, rekey_p)
            except Exception:  # a bug in this script: counted and shown once, the churn goes on
                churn["errors"] += 1
                if churn["errors"] == 1:
                    traceback.print_exc()
        if due >= until:
            churn["late_ms"] = round(max(0.0, now - until) * 1000)
            say("churn " + json.dumps(churn))
            clock.callLater(settle[0], churn_report)
            return
        clock.callLater(max(0.0, due - clock.seconds()), churn_step, due, gap, until, roam_p,
                        rekey_p)  # fmt: skip

    def churn_report() -> None:
        """After the settle: the clients' states and what their cores counted (a session
        not attached again says why here)."""
        states: dict[str, int] = {}
        counted: dict[str, int] = {}
        for p in paths:
            s = p.core.session
            k = "NONE" if s is None else s.fsm.state.value
            states[k] = states.get(k, 0) + 1
            for name, table in (("drop", p.core.drops), ("count", p.core.counters)):
                for key, v in table.items():
                    counted[f"{name}:{key}"] = counted.get(f"{name}:{key}", 0) + v
        say("settled " + json.dumps({"states": states, "clients": counted}))

    def act(p: UDPPath, r: float, roam_p: float, rekey_p: float) -> None:
        if not p.up:
            churn["skipped"] += 1
        elif r < roam_p:
            roam(p)
        elif r < roam_p + rekey_p:
            rekey(p)  # renews its keys if they expired while idle, else only traffic
        elif expired(p):
            rekey(p)  # keys renewed first (TERMINATE needs live keys), then it ends
            clock.callLater(1.0, die_and_reborn, p)
        else:
            die_and_reborn(p)

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:  # noqa: N802
            words = line.decode().split()
            if not words:
                return
            if words[0] == "quit":
                reactor.stop()
            elif words[0] == "active":
                m, seconds = int(words[1]), float(words[2])
                state["rtts"], state["sent"] = [], 0
                for k, p in enumerate(paths[:m]):
                    for t in range(int(seconds)):
                        clock.callLater(t + k / max(1, m), p.ping, t)
                clock.callLater(seconds + 2.0, self.done)
            elif words[0] == "churn":
                rate, seconds, roam_p, rekey_p, settle[0] = map(float, words[1:6])
                now = clock.seconds()
                churn_step(now, 1.0 / rate, now + seconds, roam_p, rekey_p)

        def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
            # stdin or stdout closed: the driver ended without "quit" (killed, or failed),
            # nobody reads the reports and a generator has no reason to go on
            if reactor.running:
                reactor.stop()

        def done(self) -> None:
            rtts = state["rtts"]
            say("active " + json.dumps({"sent": state["sent"], "rtts_ms": [
                round(r * 1000, 3) for r in rtts]}))  # fmt: skip

    commands = Commands()
    stdio.StandardIO(commands)
    clock.callLater(0.0, start, 0)
    clock.callLater(0.5, report)
    profile_dir = os.environ.get("JUMPING_LOADGEN_PROFILE")
    if profile_dir:  # where a generator's own time goes (its rates are then not figures)
        import cProfile

        cProfile.runctx("reactor.run()", globals(), {"reactor": reactor},
                        str(Path(profile_dir) / f"gen{args.first}.prof"))  # fmt: skip
    else:
        reactor.run()
    return 0


# ---------------------------------------------------------------------------- driver
class Gen:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.attached = 0

    def poll_lines(self, timeout: float) -> list[str]:
        import select

        assert self.proc.stdout is not None
        lines = []
        r, _w, _x = select.select([self.proc.stdout], [], [], timeout)
        if r:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"generator {self.proc.pid} ended (rc {self.proc.poll()})")
            lines.append(line.strip())
        for line in lines:
            if line.startswith("attached "):
                self.attached = int(line.split()[1])
        return lines


def _terminated(signum: int, _frame: Any) -> None:
    """SIGTERM (or SIGHUP) ends the driver like Ctrl-C: its clean-up runs (the processes
    stopped, the namespace and the work directory removed); a second signal (``timeout``
    passes its own on) does not interrupt that clean-up."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def core_handshake_costs(n: int, env: dict[str, str]) -> dict[str, Any]:
    """tests/bench/bench_controlplane.py --handshakes-only N, pinned to the gateway's CPU:
    the core alone's handshakes per CPU-second and this machine's X25519 costs (its JSON
    line), or {"error": ...} if it failed (the ramp's own figures stand)."""
    script = ROOT / "tests" / "bench" / "bench_controlplane.py"
    try:
        out = subprocess.run(
            ["taskset", "-c", "0", sys.executable, str(script), "--handshakes-only", str(n)],
            env=env, capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))
    except (subprocess.SubprocessError, ValueError, IndexError, OSError) as e:
        err = getattr(e, "stderr", "") or ""
        return {"error": f"{type(e).__name__}: {e} {err.strip()[-300:]}".strip()}


def driver(args: argparse.Namespace) -> int:
    from nacl.public import PrivateKey

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminated)

    from jumping.core.noise import public_key
    from jumping.keys import encode_key

    n_cpu = os.cpu_count() or 1
    if n_cpu < 2:
        raise SystemExit("loadgen: needs 2 CPUs (the gateway on one, the generators on the rest)")
    if args.sessions > 250 * 65536:
        raise SystemExit("loadgen: --sessions beyond the address plan")
    gen_cpus = f"1-{n_cpu - 1}" if n_cpu > 2 else "1"
    ns = f"jscale{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="jumping-scale."))
    procs: list[subprocess.Popen[Any]] = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    twistd = shutil.which("twistd") or str(Path(sys.executable).with_name("twistd"))
    nsx = ["ip", "netns", "exec", ns]
    result: dict[str, Any] = {"bench": "scale", "sessions": args.sessions, "procs": args.procs}
    try:
        from jumping.core import aead

        result["compiled_dataplane"] = aead.Aead is not aead.PyAead
        result["version"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run([sys.executable, "-m", "jumping.cli", "keygen", "--out",
                        str(work / "g.key")], check=True, env=env, capture_output=True)  # fmt: skip
        log(f"keys for {args.sessions} clients")
        clients = [PrivateKey.generate().encode() for _ in range(args.sessions)]
        (work / "clients.keys").write_text("\n".join(k.hex() for k in clients))
        peers = "".join(
            f'[[peers]]\npublic_key = "{encode_key(public_key(k))}"\n'
            f'allowed_ips = ["{client_inner(n)}/32"]\n'
            for n, k in enumerate(clients)
        )
        (work / "g.toml").write_text(
            '[node]\nrole = "gateway"\nnode_id = "scale-gw"\nprivate_key = "g.key"\n'
            f'[tun]\nname = "jscale0"\naddress = "{GW_ADDR}/10"\n'
            f'[[listen]]\ntransport = "udp"\nhost = "127.0.0.1"\nport = {GW_PORT}\n'
            # every event kept for the audit (about 4 events and 1.7 KB per session)
            f'[[events]]\nsink = "jsonl"\npath = "{work / "gw-events.jsonl"}"\nkeep = {KEEP}\n'
            f'[control]\nsocket = "{work / "gw.sock"}"\n' + peers
        )
        log("gateway starting (CPU 0)")
        traced = ([sys.executable, str(Path(__file__).with_name("traced.py")),
                   args.trace_memory] if args.trace_memory else [twistd])  # fmt: skip
        profile = ([f"--profile={args.profile}", "--profiler=cprofile", "--savestats"]
                   if args.profile else [])  # fmt: skip
        gw = subprocess.Popen(
            nsx + ["taskset", "-c", "0", *traced, "-n", *profile, "--pidfile=",
                   f"--logfile={work / 'gw.log'}", "jumping", "gateway", "--config",
                   str(work / "g.toml")], env=env,
        )  # fmt: skip
        procs.append(gw)
        deadline = time.monotonic() + 60 + args.sessions / 5000
        while not (work / "gw.sock").exists():
            if gw.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "gateway did not start:\n" + (work / "gw.log").read_text()[-3000:]
                )
            time.sleep(0.2)
        time.sleep(args.settle)
        result["gateway_rss_peers_only_bytes"] = rss0 = rss_bytes(gw.pid)
        log(f"gateway up, {rss0 / 2**20:.1f} MiB with {args.sessions} peers and no session")
        if args.trace_memory:
            os.kill(gw.pid, signal.SIGUSR2)  # the baseline snapshot

        # one descriptor per session: as many processes as the hard limit needs (it cannot
        # be raised without CAP_SYS_RESOURCE)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        n_gen = max(args.procs, -(-args.sessions // max(1, hard - FD_SPARE)))
        if n_gen != args.procs:
            log(f"{n_gen} generator processes (RLIMIT_NOFILE hard limit {hard})")
        result["procs"] = n_gen
        per = -(-args.sessions // n_gen)
        gens: list[Gen] = []
        (user0, sys0), t0 = cpu_times(gw.pid), time.monotonic()
        cpu0 = user0 + sys0
        for k in range(n_gen):
            first, count = k * per, min(per, args.sessions - k * per)
            if count <= 0:
                break
            p = subprocess.Popen(
                nsx + ["taskset", "-c", gen_cpus, sys.executable, __file__, "--role",
                       "generator", "--gateway-pub", str(work / "g.pub"), "--client-keys",
                       str(work / "clients.keys"), "--first", str(first), "--count",
                       str(count), "--rate", str(args.rate / n_gen)],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            procs.append(p)
            gens.append(Gen(p))
        ramp_deadline = time.monotonic() + (
            args.ramp_timeout or args.sessions / max(1.0, args.rate) * 3 + 60
        )
        shown = 0.0
        while sum(g.attached for g in gens) < args.sessions:
            for g in gens:
                g.poll_lines(0.05)
            if time.monotonic() - shown > 5:
                shown = time.monotonic()
                log(f"ramp: {sum(g.attached for g in gens)}/{args.sessions} attached")
            if time.monotonic() > ramp_deadline:
                break
        (user1, sys1), t1 = cpu_times(gw.pid), time.monotonic()
        cpu1 = user1 + sys1
        done = sum(g.attached for g in gens)
        result["ramp"] = {
            "attached": done, "wall_s": round(t1 - t0, 2),
            "handshakes_per_s_wall": round(done / (t1 - t0)),
            "gateway_cpu_s": round(cpu1 - cpu0, 2),
            "gateway_user_s": round(user1 - user0, 2),
            "gateway_sys_s": round(sys1 - sys0, 2),
            "handshakes_per_gateway_cpu_s": round(done / max(1e-9, cpu1 - cpu0)),
            # the share of its core the gateway used: below 1 the generators set the pace,
            # and the figure per CPU-second includes the reactor's per-wakeup cost, which a
            # saturated gateway spreads over more handshakes per read pass
            "gateway_busy": round((cpu1 - cpu0) / max(1e-9, t1 - t0), 2),
            "offered_rate": args.rate,
        }  # fmt: skip
        log(f"ramp: {result['ramp']}")
        if args.core_handshakes:
            # the same work without the service, and what X25519 costs, on the gateway's
            # CPU while the gateway idles: "of the core alone, beside four X25519" (#18)
            costs = core_handshake_costs(args.core_handshakes, env)
            result["ramp"]["core_alone"] = costs
            if costs.get("core_us_per_handshake") and done:
                service_us = (cpu1 - cpu0) / done * 1e6
                result["ramp"]["service_us_per_handshake"] = round(service_us, 1)
                result["ramp"]["service_over_core"] = round(
                    service_us / float(costs["core_us_per_handshake"]), 2
                )
            log(f"core alone: {costs}")

        log(f"idle hold {args.hold} s")
        end = time.monotonic() + args.hold
        while time.monotonic() < end:
            for g in gens:
                g.poll_lines(0.2)
        u0, c0, w0 = udp_in(ns), cpu_seconds(gw.pid), time.monotonic()
        rss_idle = []
        while time.monotonic() < w0 + args.window:
            rss_idle.append(rss_bytes(gw.pid))
            for g in gens:
                g.poll_lines(0.2)
        u1, c1, w1 = udp_in(ns), cpu_seconds(gw.pid), time.monotonic()
        rss1 = int(statistics.median(rss_idle))
        if args.trace_memory:
            os.kill(gw.pid, signal.SIGUSR2)
            log(f"allocation sites grown since the baseline: {args.trace_memory}")
        # sessions still attaching after the ramp's deadline (handshake retries) count too
        idle_n = sum(g.attached for g in gens)
        result["idle"] = {
            "hold_s": args.hold, "window_s": round(w1 - w0, 1), "sessions": idle_n,
            "gateway_rss_bytes": rss1,
            "bytes_per_idle_session": round((rss1 - rss0) / max(1, idle_n)),
            "gateway_cpu_pct": round(100 * (c1 - c0) / (w1 - w0), 2),
            "wire_udp_per_s": round((u1 - u0) / (w1 - w0), 1),
        }  # fmt: skip
        log(f"idle: {result['idle']}")

        if args.active:
            m = args.active
            share: list[int] = []
            left = m
            for _g in gens:
                take = min(left, -(-m // len(gens)))
                share.append(take)
                left -= take
            c0, w0 = cpu_seconds(gw.pid), time.monotonic()
            for g, take in zip(gens, share, strict=True):
                assert g.proc.stdin is not None
                g.proc.stdin.write(f"active {take} {args.window}\n")
                g.proc.stdin.flush()
            rtts: list[float] = []
            sent = 0
            waiting = {id(g) for g, take in zip(gens, share, strict=True) if take}
            deadline = time.monotonic() + args.window + 60
            while waiting and time.monotonic() < deadline:
                for g in gens:
                    for line in g.poll_lines(0.1):
                        if line.startswith("active "):
                            r = json.loads(line[len("active ") :])
                            rtts += r["rtts_ms"]
                            sent += r["sent"]
                            waiting.discard(id(g))
            c1, w1 = cpu_seconds(gw.pid), time.monotonic()
            rtts.sort()

            def q(f: float) -> float | None:
                return rtts[min(len(rtts) - 1, int(f * len(rtts)))] if rtts else None

            result["active"] = {
                "sessions": m, "seconds": args.window, "echo_sent": sent,
                "echo_answered": len(rtts), "rtt_ms_p50": q(0.50), "rtt_ms_p99": q(0.99),
                "rtt_ms_max": rtts[-1] if rtts else None,
                "gateway_cpu_pct": round(100 * (c1 - c0) / (w1 - w0), 2),
            }  # fmt: skip
            log(f"active: {result['active']}")

        if args.churn:
            result["churn"] = run_churn(args, gw, gens, work, env)
            log(f"churn: {result['churn']}")

        for g in gens:
            assert g.proc.stdin is not None
            g.proc.stdin.write("quit\n")
            g.proc.stdin.flush()
        gw.terminate()
        gw.wait(60)
        # the rotated files first, oldest first (events.jsonl.N ... .1, then events.jsonl)
        rotated = sorted(work.glob("gw-events.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
        if len(rotated) >= KEEP:
            log(f"warning: {len(rotated)} rotated event files: the oldest may be gone")
        audit = subprocess.run(
            [sys.executable, "-m", "jumping.cli", "audit", "--no-timeline",
             *map(str, rotated), str(work / "gw-events.jsonl")],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
        summary = audit.stdout[audit.stdout.rfind("\nsummary\n") + 1 :].strip()
        result["audit"] = {"rc": audit.returncode, "summary": summary.splitlines()}
        log(f"audit rc {audit.returncode}")
        text = json.dumps(result)
        print(text)
        if args.json:
            Path(args.json).write_text(text + "\n")
        final = sum(g.attached for g in gens)
        return 0 if final == args.sessions and audit.returncode == 0 else 1
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")


def gateway_status(work: Path, env: dict[str, str]) -> dict[str, Any]:
    """``jumpctl status --json`` of the gateway."""
    out = subprocess.run(
        [sys.executable, "-m", "jumping.cli", "status", "--json", "--socket",
         str(work / "gw.sock")], capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    status: dict[str, Any] = json.loads(out)
    return status


def gateway_sessions(work: Path, env: dict[str, str]) -> dict[str, int]:
    """The gateway's sessions by state."""
    return {k: int(v) for k, v in gateway_status(work, env)["sessions"].items()}


def run_churn(
    args: argparse.Namespace, gw: subprocess.Popen[Any], gens: list[Gen], work: Path,
    env: dict[str, str],
) -> dict[str, Any]:  # fmt: skip
    """``--churn R`` actions per second for ``--churn-seconds``, spread over the generators:
    a client roams (new source port), renews its expired keys (a rekey), or ends its session
    (TERMINATE) and starts a new one (a death and a birth; keys expired while idle are
    renewed first). Then ``--churn-settle`` seconds of quiet (the churned sessions' keys
    expire and are trimmed), and: RSS before, during and after, the gateway's live sessions
    against the clients' (none left behind)."""
    rss_before = rss_bytes(gw.pid)
    before = gateway_sessions(work, env)
    share = args.churn / len(gens)
    for g in gens:
        assert g.proc.stdin is not None
        g.proc.stdin.write(
            f"churn {share} {args.churn_seconds} {args.roam} {args.rekey} {args.churn_settle}\n"
        )
        g.proc.stdin.flush()
    c0, w0 = cpu_seconds(gw.pid), time.monotonic()
    totals: dict[str, int] = {}
    waiting = {id(g) for g in gens}
    rss_during: list[int] = []
    ended_s: list[float] = []  # when each generator told its churn was done
    late_ms: list[int] = []
    shown = w0
    # every generator's report is waited for, however late (a late one ran the same
    # actions in more time: the rate is counted to the last report, not to the schedule)
    deadline = w0 + 3 * args.churn_seconds + 120
    c_end = c0
    while waiting and time.monotonic() < deadline:
        for g in gens:
            for line in g.poll_lines(0.1):
                if line.startswith("churn "):
                    for k, v in json.loads(line[len("churn ") :]).items():
                        if k == "late_ms":
                            late_ms.append(v)
                        else:
                            totals[k] = totals.get(k, 0) + v
                    waiting.discard(id(g))
                    ended_s.append(round(time.monotonic() - w0, 1))
                    c_end = cpu_seconds(gw.pid)
        if time.monotonic() - shown >= 10:
            shown = time.monotonic()
            rss_during.append(rss_bytes(gw.pid))
            log(f"churn: {round(shown - w0)} s, gateway RSS {rss_during[-1] / 2**20:.1f} MiB"
                + (f", {len(waiting)} generator(s) not done" if len(ended_s) else ""))  # fmt: skip
    if waiting:
        log(f"churn: {len(waiting)} generator(s) never reported: their actions are not counted")
    c1, w1 = c_end, w0 + (max(ended_s) if ended_s else time.monotonic() - w0)
    if args.trace_memory:  # what the churn left: a snapshot now, another after the settle
        os.kill(gw.pid, signal.SIGUSR2)
    log(f"churn done: {totals}; quiet for {args.churn_settle} s")
    end = time.monotonic() + args.churn_settle
    settled: dict[str, dict[str, int]] = {"states": {}, "clients": {}}
    told = 0
    while time.monotonic() < end or (told < len(gens) and time.monotonic() < end + 60):
        for g in gens:
            for line in g.poll_lines(0.2):
                if line.startswith("settled "):
                    told += 1
                    for part, table in json.loads(line[len("settled ") :]).items():
                        for k, v in table.items():
                            settled[part][k] = settled[part].get(k, 0) + v
    rss_after = [rss_bytes(gw.pid)]
    for _ in range(10):
        time.sleep(1)
        rss_after.append(rss_bytes(gw.pid))
    if args.trace_memory:
        os.kill(gw.pid, signal.SIGUSR2)
        log(f"allocation sites after the churn and after its settle: {args.trace_memory}")
    status = gateway_status(work, env)
    after = {k: int(v) for k, v in status["sessions"].items()}
    live = sum(v for k, v in after.items() if k != "TERMINATED")
    clients = sum(g.attached for g in gens)
    return {
        "rate": args.churn, "seconds": args.churn_seconds, "done": totals,
        "generators_ended_s": sorted(ended_s), "generators_late_ms": sorted(late_ms),
        "generators_missing": len(waiting),
        "births_per_s": round(totals.get("births", 0) / max(1e-9, w1 - w0), 1),
        "deaths_per_s": round(totals.get("deaths", 0) / max(1e-9, w1 - w0), 1),
        "gateway_cpu_pct": round(100 * (c1 - c0) / (w1 - w0), 2),
        "rss_before_bytes": rss_before, "rss_max_during_bytes": max(rss_during, default=0),
        "rss_after_bytes": int(statistics.median(rss_after)),
        "sessions_before": before, "sessions_after": after,
        "gateway_live": live, "clients_attached": clients, "left_behind": live - clients,
        "client_states": settled["states"], "client_counts": settled["clients"],
        "gateway_drops": status.get("drops", {}),
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--role", default="driver", choices=["driver", "generator"])
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--procs", type=int, default=4, help="generator processes")
    ap.add_argument("--rate", type=float, default=2000.0, help="handshakes started per second")
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--ramp-timeout", type=float, default=0.0,
                    help="seconds the ramp may take (default: 3 x sessions/rate + 60)")  # fmt: skip
    ap.add_argument("--core-handshakes", type=int, default=2000, metavar="N",
                    help="after the ramp, the core alone's cost over N initiations and the "
                    "X25519 costs, on the gateway's CPU (0: not measured)")  # fmt: skip
    ap.add_argument("--hold", type=float, default=190.0, help="idle hold before measuring")
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--active", type=int, default=0, help="sessions sending 1 echo/s")
    ap.add_argument(
        "--churn",
        type=float,
        default=0.0,
        metavar="R",
        help="after the idle (and active) phase: R churn actions per second",
    )
    ap.add_argument("--churn-seconds", type=float, default=600.0)
    ap.add_argument(
        "--churn-settle",
        type=float,
        default=240.0,
        help="quiet after the churn before RSS and sessions are read",
    )
    ap.add_argument("--roam", type=float, default=0.1, help="share of churn actions that roam")
    ap.add_argument(
        "--rekey",
        type=float,
        default=0.1,
        help="share that only renew a client's keys (the rest end and restart)",
    )
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--trace-memory", metavar="FILE",
                    help="run the gateway under tracemalloc (tests/bench/scale/traced.py) and "
                    "write the allocation sites its idle sessions grew to FILE (its RSS and "
                    "CPU figures are then not measurements)")  # fmt: skip
    ap.add_argument("--profile", metavar="FILE",
                    help="run the gateway under twistd's cProfile and write its pstats to FILE "
                    "when it stops (its CPU figures are then not measurements)")  # fmt: skip
    ap.add_argument("--gateway-pub")
    ap.add_argument("--client-keys")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=0)
    a = ap.parse_args()
    if a.profile and a.trace_memory:
        ap.error("--profile and --trace-memory do not go together")
    if a.role == "driver" and (a.sessions < 1 or a.procs < 1 or a.rate <= 0):
        ap.error("--sessions, --procs and --rate must be positive")
    if a.core_handshakes < 0:
        ap.error("--core-handshakes must be 0 (off) or a number of initiations")
    if (
        a.churn < 0
        or a.churn_seconds <= 0
        or not (0 <= a.roam and 0 <= a.rekey and a.roam + a.rekey <= 1)
    ):
        ap.error("--churn >= 0, --churn-seconds > 0, --roam and --rekey shares within 0..1")
    return generator(a) if a.role == "generator" else driver(a)


if __name__ == "__main__":
    raise SystemExit(main())
