"""Start a Jumping gateway and client under twistd inside test namespaces."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jumping
from jumping.keys import encode_key, write_keypair
from jumping.testing.netns import Topology

REPO = Path(__file__).resolve().parents[2]


def twistd() -> str:
    local = Path(sys.executable).parent / "twistd"
    found = str(local) if local.exists() else shutil.which("twistd")
    if not found:
        raise RuntimeError("twistd not found next to the interpreter or on PATH")
    return found


def node_env() -> dict[str, str]:
    env = dict(os.environ)
    src = Path(jumping.__file__).resolve().parents[1]
    if (src / "twisted" / "plugins" / "jumping_twistd.py").exists():
        # running from a source checkout: make twistd find the package and its drop-ins
        env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
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


def _control(sock: Path, extra: str) -> str:
    """A control socket of this test's own (the default, /run/jumping/NODE_ID.sock, is
    shared by every test run on the machine), unless the test configures one."""
    if "[control]" in extra or len(bytes(sock)) > 107:
        return ""
    return f'[control]\nsocket = "{sock}"\n'


class Pair:
    """Keys, configs and the two daemons of one tunnel (gateway in ``gns``, client in ``cns``)."""

    def __init__(
        self,
        topo: Topology,
        tmp: Path,
        cns: str,
        gns: str,
        endpoints: list[str],
        port: int = 51820,
        policy: dict[str, Any] | None = None,
        transports: tuple[str, ...] = ("udp",),
        gw_extra: str = "",
        c_extra: str = "",
        psk: tuple[str | None, str | None] = (None, None),
        gw_offload: bool = True,
        node_extra: str = "",
        daemon: bool = False,
        twistd_args: tuple[str, ...] = (),
        events_dir: Path | None = None,
        own_control: bool = True,
    ) -> None:
        """``psk``: pre-shared key files (relative to ``tmp``) of the gateway's [[peers]]
        entry and of the client's [gateway] table (None: no psk at that end).
        ``gw_offload``: the gateway's ``[tun] offload``.
        ``node_extra``: lines for both ``[node]`` tables; ``daemon``: twistd forks into
        the background (its default) with a pidfile, instead of ``-n``; ``own_control``:
        each node's control socket in ``tmp`` (False: the default, /run/jumping/NODE.sock,
        for tests that give the nodes a private /run/jumping)."""
        self.topo, self.tmp, self.cns, self.gns = topo, tmp, cns, gns
        self.port = port
        self.daemon = daemon
        self.twistd_args = twistd_args
        self.gw_pub = encode_key(write_keypair(tmp / "gw.key"))
        self.c_pub = encode_key(write_keypair(tmp / "c.key"))
        evdir = events_dir or tmp
        pol = "".join(f"{k} = {json.dumps(v)}\n" for k, v in (policy or {}).items())
        listens = "".join(
            f'[[listen]]\ntransport = "{t}"\nhost = "0.0.0.0"\nport = {port}\n' for t in transports
        )
        self.gw_conf = tmp / "gw.toml"
        self.gw_conf.write_text(f"""
[node]
role = "gateway"
node_id = "gw1"
private_key = "gw.key"
{node_extra}
[tun]
name = "jmpg0"
address = "10.99.0.1/24"
offload = {"true" if gw_offload else "false"}
{listens}
[[peers]]
public_key = "{self.c_pub}"
allowed_ips = ["10.99.0.2/32"]
{f'psk = "{psk[0]}"' if psk[0] else ""}
[[events]]
sink = "jsonl"
path = "{evdir / "gw-events.jsonl"}"
{_control(tmp / "gw.sock", gw_extra) if own_control else ""}
[policy]
{pol}{gw_extra}
""")
        eps = "".join(
            f'[[gateway.endpoints]]\ntransport = "{t}"\nhost = "{h}"\nport = {port}\n'
            for t in transports
            for h in endpoints
        )
        self.c_conf = tmp / "c.toml"
        self.c_conf.write_text(f"""
[node]
role = "client"
node_id = "c1"
private_key = "c.key"
{node_extra}
[tun]
name = "jmpc0"
address = "10.99.0.2/24"
[gateway]
public_key = "{self.gw_pub}"
{f'psk = "{psk[1]}"' if psk[1] else ""}
{eps}
[[events]]
sink = "jsonl"
path = "{evdir / "c-events.jsonl"}"
{_control(tmp / "c.sock", c_extra) if own_control else ""}
[policy]
{pol}{c_extra}
""")
        self.gw_events = evdir / "gw-events.jsonl"
        self.c_events = evdir / "c-events.jsonl"
        self.gw: subprocess.Popen[bytes] | None = None
        self.client: subprocess.Popen[bytes] | None = None

    def pidfile(self, role: str) -> Path:
        return self.tmp / f"{role}.pid"

    def cmd(self, role: str, conf: Path) -> list[str]:
        mode = [f"--pidfile={self.pidfile(role)}"] if self.daemon else ["-n", "--pidfile="]
        return [
            twistd(),
            *mode,
            *self.twistd_args,
            f"--logfile={self.tmp / (role + '.log')}",
            "jumping",
            role,
            "--config",
            str(conf),
        ]

    def pid(self, role: str) -> int:
        """The node's process id (the daemon's, from its pidfile)."""
        if self.daemon:
            return int(self.pidfile(role).read_text().strip())
        proc = self.gw if role == "gateway" else self.client
        assert proc is not None
        return proc.pid

    def _start_daemon(self, role: str, ns: str, conf: Path, env: dict[str, str]) -> None:
        """twistd forks, its parent exits 0 once the child started (or 1, with the reason)."""
        r = subprocess.run(
            ["ip", "netns", "exec", ns, *self.cmd(role, conf)],
            capture_output=True, text=True, timeout=30, env=env,
        )  # fmt: skip
        (self.tmp / f"{role}.out").write_text(r.stdout + r.stderr)
        assert r.returncode == 0, f"twistd {role} exited {r.returncode}:\n{r.stdout}{r.stderr}"

    def start(self, timeout: float = 15, client_first: float = 0.0) -> None:
        """Start both daemons (the gateway first, or the client ``client_first`` s earlier)."""
        env = node_env()
        if self.daemon:
            self._start_daemon("gateway", self.gns, self.gw_conf, env)
            self._wait_log("gateway", timeout)
            self._start_daemon("client", self.cns, self.c_conf, env)
            self.wait_attached(timeout)
            return
        if client_first:
            self.client = self.topo.popen(
                self.cns, *self.cmd("client", self.c_conf), env=env, log=self.tmp / "client.out"
            )
            time.sleep(client_first)
        self.gw = self.topo.popen(
            self.gns, *self.cmd("gateway", self.gw_conf), env=env, log=self.tmp / "gateway.out"
        )
        self._wait_log("gateway", timeout)
        if not client_first:
            self.client = self.topo.popen(
                self.cns, *self.cmd("client", self.c_conf), env=env, log=self.tmp / "client.out"
            )
        self.wait_attached(timeout)

    def _wait_log(self, role: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        log = self.tmp / f"{role}.log"
        while time.monotonic() < deadline:
            if log.exists() and " up: tun " in log.read_text():
                return
            proc = self.gw if role == "gateway" else self.client
            if proc is not None and proc.poll() is not None:
                break
            if self.daemon and not self.pidfile(role).exists():
                break
            time.sleep(0.05)
        raise AssertionError(f"{role} did not start:\n{self.diagnostics()}")

    def attached(self, path: Path) -> list[dict[str, Any]]:
        return [
            e
            for e in events(path)
            if e.get("event_type") == "SESSION_STATE_CHANGE" and e.get("new_state") == "ATTACHED"
        ]

    def wait_attached(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.attached(self.gw_events) and self.attached(self.c_events):
                return
            time.sleep(0.05)
        raise AssertionError(f"tunnel not attached within {timeout}s:\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        parts = []
        for name in (
            "gateway.log",
            "client.log",
            "gateway.out",
            "client.out",
            self.gw_events,
            self.c_events,
        ):
            p = self.tmp / name
            if p.exists():
                parts.append(f"--- {name}\n" + "\n".join(p.read_text().splitlines()[-30:]))
        return "\n".join(parts)

    def stop(self) -> None:
        if self.daemon:
            for role in ("client", "gateway"):
                if self.pidfile(role).exists():
                    stop_pid(self.pid(role))
            return
        for p in (self.client, self.gw):
            if p is not None:
                self.topo.stop(p)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 10) -> bool:
    """Signal ``pid`` and wait until it is gone; SIGKILL after ``timeout``. True if it
    exited on ``sig``."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return False
