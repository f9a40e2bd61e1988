"""
Network namespaces for tests and demos: create, wire, impair, and always clean up.

Everything lives inside namespaces this object creates (names carry the process id, so
parallel runs cannot collide); nothing is changed in the root namespace, no global sysctl
is touched. ``close()`` (also on exceptions, SIGTERM, and at interpreter exit) stops every
process it started and deletes the namespaces, which removes their veths, TUN devices and
nftables tables.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any


class NetnsError(Exception):
    pass


def available() -> str | None:
    """None if namespaces/TUN can be used here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    for cmd in ("ip", "nft"):
        if shutil.which(cmd) is None:
            return f"missing command {cmd!r}"
    return None


def _run(
    cmd: Sequence[str], check: bool = True, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {r.stderr.strip() or r.returncode}")
    return r


class Topology:
    """``with Topology("jt") as t: c = t.ns("c"); ...``"""

    def __init__(self, prefix: str = "jt") -> None:
        self.tag = f"{prefix}{os.getpid() % 100000}"
        self.namespaces: list[str] = []
        self.procs: list[tuple[subprocess.Popen[bytes], IO[bytes] | None]] = []
        self._closed = False
        self._old_term: Any = None

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> Topology:
        atexit.register(self.close)
        try:
            self._old_term = signal.signal(signal.SIGTERM, self._on_term)
        except ValueError:  # not the main thread
            self._old_term = None
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_term(self, signum: int, frame: Any) -> None:
        self.close()
        raise SystemExit(143)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for p, _log in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 3
        for p, log in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(2)
            if log is not None:
                log.close()
        for ns in reversed(self.namespaces):
            for pid in _run(["ip", "netns", "pids", ns], check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()
        if self._old_term is not None:
            try:
                signal.signal(signal.SIGTERM, self._old_term)
            except ValueError:
                pass

    # -------------------------------------------------------------- building
    def ns(self, name: str) -> str:
        full = f"{self.tag}{name}"
        if Path(f"/run/netns/{full}").exists():
            raise NetnsError(f"namespace {full} already exists")
        _run(["ip", "netns", "add", full])
        self.namespaces.append(full)
        self.run(full, "ip", "link", "set", "lo", "up")
        for k in ("all", "default"):
            self.run(full, "sysctl", "-q", "-w", f"net.ipv4.conf.{k}.rp_filter=0")
            self.run(full, "sysctl", "-q", "-w", f"net.ipv6.conf.{k}.disable_ipv6=1")
        return full

    def link(self, ns_a: str, if_a: str, addr_a: str, ns_b: str, if_b: str, addr_b: str) -> None:
        """A veth pair created directly inside the two namespaces, addressed and up."""
        _run(
            [
                "ip",
                "link",
                "add",
                if_a,
                "netns",
                ns_a,
                "type",
                "veth",
                "peer",
                "name",
                if_b,
                "netns",
                ns_b,
            ]
        )
        for ns, ifname, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
            self.run(ns, "ip", "addr", "add", addr, "dev", ifname)
            self.run(ns, "ip", "link", "set", ifname, "up")

    def forward(self, ns: str) -> None:
        self.run(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")

    # -------------------------------------------------------------- running
    def run(
        self, ns: str, *cmd: str, check: bool = True, timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "netns", "exec", ns, *cmd], check=check, timeout=timeout)

    def popen(
        self, ns: str, *cmd: str, log: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = open(log, "wb") if log is not None else None
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd],
            stdout=out or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.procs.append((p, out))
        return p

    def stop(self, p: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(2)
        return p.returncode

    # -------------------------------------------------------------- impairments
    def blackhole(self, ns: str, ifname: str) -> None:
        table = f"jbh_{ifname}"
        rules = (
            f"table inet {table} {{\n"
            f' chain o {{ type filter hook output priority 0; policy accept; oifname "{ifname}" drop; }}\n'
            f' chain i {{ type filter hook input priority 0; policy accept; iifname "{ifname}" drop; }}\n'
            f' chain f {{ type filter hook forward priority 0; policy accept; oifname "{ifname}" drop; iifname "{ifname}" drop; }}\n'
            "}\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"],
            input=rules,
            text=True,
            check=True,
            capture_output=True,
        )

    def restore(self, ns: str, ifname: str) -> None:
        self.run(ns, "nft", "delete", "table", "inet", f"jbh_{ifname}", check=False)

    def loss(self, ns: str, ifname: str, pct: int) -> None:
        rules = (
            f"table inet jloss_{ifname} {{\n"
            f' chain o {{ type filter hook output priority 0; policy accept; oifname "{ifname}" numgen random mod 100 < {pct} drop; }}\n'
            "}\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"],
            input=rules,
            text=True,
            check=True,
            capture_output=True,
        )


def leftovers(prefix: str) -> list[str]:
    r = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.startswith(prefix)]
