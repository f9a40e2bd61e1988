"""
A real 3-member etcd cluster for these tests, started by deploy/cluster/etcd.sh once per
test session (ports 23791-23796, data on tmpfs when there is one) and stopped at the end,
also when tests fail or the run is interrupted.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# checker.py (the independent one-forwarder checker) is imported as a plain module
sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[3]
ETCD_SH = REPO / "deploy" / "cluster" / "etcd.sh"


class EtcdCluster:
    """The test cluster, secure as production should run it (etcd.sh ETCD_SECURE=1): clients
    over TLS with client certificates, etcd authentication on, the backend logging in as
    the user ``jumping`` (readwrite on /jumping/ only). ``security`` holds the backend
    options for that."""

    def __init__(self, base: Path) -> None:
        self.dir = base
        self.endpoint_list = [f"https://127.0.0.1:{23790 + n}" for n in (1, 2, 3)]
        self.endpoints = ",".join(self.endpoint_list)
        tls = base / "tls"
        self.security: dict[str, str] = {
            "ca_cert": str(tls / "ca.pem"), "cert": str(tls / "client.pem"),
            "key": str(tls / "client.key"), "user": "jumping",
            "password_file": str(tls / "jumping.password"),
        }  # fmt: skip

    def toml(self) -> str:
        """The security options as lines of an ``[ownership]`` table."""
        return "".join(f'{k} = "{v}"\n' for k, v in self.security.items())

    def sh(self, *args: str, timeout: float = 60) -> str:
        r = subprocess.run(["bash", str(ETCD_SH), *args], capture_output=True, text=True,
                           timeout=timeout)  # fmt: skip
        assert r.returncode == 0, f"etcd.sh {' '.join(args)}: {r.stdout}{r.stderr}"
        return r.stdout

    def start(self) -> None:
        r = subprocess.run(["bash", str(ETCD_SH), "start", str(self.dir)], capture_output=True,
                           text=True, timeout=60, env={**os.environ, "ETCD_SECURE": "1"})  # fmt: skip
        assert r.returncode == 0, f"etcd.sh start: {r.stdout}{r.stderr}"

    def stop(self) -> None:
        subprocess.run(["bash", str(ETCD_SH), "stop", str(self.dir)], capture_output=True,
                       timeout=60)  # fmt: skip

    def stop_member(self, n: int) -> None:
        self.sh("stop-member", str(self.dir), str(n))

    def kill_member(self, n: int) -> None:
        self.sh("kill-member", str(self.dir), str(n))

    def freeze_member(self, n: int) -> None:
        self.sh("freeze-member", str(self.dir), str(n))

    def thaw_member(self, n: int) -> None:
        self.sh("thaw-member", str(self.dir), str(n))

    def start_member(self, n: int) -> None:
        self.sh("start-member", str(self.dir), str(n))

    def healthy(self) -> None:
        self.sh("health", str(self.dir))

    def etcdctl(self, *args: str, input: str | None = None) -> str:
        r = subprocess.run(
            ["bash", str(ETCD_SH), "ctl", str(self.dir), "--dial-timeout", "2s", *args],
            capture_output=True, text=True, timeout=30, input=input,
        )  # fmt: skip
        assert r.returncode == 0, f"etcdctl {' '.join(args)}: {r.stderr}"
        return r.stdout


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.fail("etcd/etcdctl not installed: run deploy/setup.sh (etcd-server, etcd-client)")
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    base = Path(tempfile.mkdtemp(prefix=f"jumping-etcd-{os.getpid()}-", dir=shm))
    cluster = EtcdCluster(base)
    atexit.register(cluster.stop)  # even if pytest is killed between here and teardown
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def backends(etcd_cluster: EtcdCluster) -> Iterator[Any]:
    """``await make(node_id, **options)`` → a started EtcdOwnership (its ``start()``
    awaited: the lease is granted); all closed at the end."""
    from jumping_etcd.backend import EtcdOwnership

    made: list[Any] = []

    async def make(node_id: str, **options: Any) -> Any:
        options.setdefault("endpoints", etcd_cluster.endpoints)
        for k, v in etcd_cluster.security.items():
            options.setdefault(k, v)
        b = EtcdOwnership(node_id=node_id, **options)
        made.append(b)
        await b.start()
        return b

    yield make
    for b in made:
        b.close()
