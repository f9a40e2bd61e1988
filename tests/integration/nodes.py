"""Start a Jumping gateway and client under twistd inside test namespaces."""

from __future__ import annotations

import json
import os
import shutil
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
    ) -> None:
        """``psk``: pre-shared key files (relative to ``tmp``) of the gateway's [[peers]]
        entry and of the client's [gateway] table (None: no psk at that end).
        ``gw_offload``: the gateway's ``[tun] offload``."""
        self.topo, self.tmp, self.cns, self.gns = topo, tmp, cns, gns
        self.port = port
        self.gw_pub = encode_key(write_keypair(tmp / "gw.key"))
        self.c_pub = encode_key(write_keypair(tmp / "c.key"))
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
path = "gw-events.jsonl"
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
[tun]
name = "jmpc0"
address = "10.99.0.2/24"
[gateway]
public_key = "{self.gw_pub}"
{f'psk = "{psk[1]}"' if psk[1] else ""}
{eps}
[[events]]
sink = "jsonl"
path = "c-events.jsonl"
[policy]
{pol}{c_extra}
""")
        self.gw_events = tmp / "gw-events.jsonl"
        self.c_events = tmp / "c-events.jsonl"
        self.gw: subprocess.Popen[bytes] | None = None
        self.client: subprocess.Popen[bytes] | None = None

    def cmd(self, role: str, conf: Path) -> list[str]:
        return [
            twistd(),
            "-n",
            "--pidfile=",
            f"--logfile={self.tmp / (role + '.log')}",
            "jumping",
            role,
            "--config",
            str(conf),
        ]

    def start(self, timeout: float = 15, client_first: float = 0.0) -> None:
        """Start both daemons (the gateway first, or the client ``client_first`` s earlier)."""
        env = node_env()
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
            "gw-events.jsonl",
            "c-events.jsonl",
        ):
            p = self.tmp / name
            if p.exists():
                parts.append(f"--- {name}\n" + "\n".join(p.read_text().splitlines()[-30:]))
        return "\n".join(parts)

    def stop(self) -> None:
        for p in (self.client, self.gw):
            if p is not None:
                self.topo.stop(p)
