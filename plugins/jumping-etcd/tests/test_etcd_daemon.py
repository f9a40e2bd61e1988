"""
A daemonized (twistd's default, no ``-n``) gateway with the etcd ownership backend, on the
real cluster: its lease is granted after the fork and *kept alive* by the daemon (held well
past its TTL), the session's record lives under it, readiness (READY=1 on a notification
socket the test owns) comes only once the lease exists, SIGHUP reloads the policy, and
SIGTERM stops it cleanly: pidfile removed, lease revoked, record gone.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "integration"))
from nodes import Pair, alive, events, stop_pid  # noqa: E402

from jumping.testing.netns import Topology  # noqa: E402
from jumping.testing.notify import NotifySocket  # noqa: E402
from jumping.testing.nsbridge import LoopbackBridge  # noqa: E402

pytestmark = pytest.mark.netns
TTL = 3
PREFIX = "/jumping/daemon-test/"


def leases(etcd: Any) -> set[int]:  # "found N leases" then one hex id a line
    return {int(x, 16) for x in etcd.etcdctl("lease", "list").split()[3:]}


def ttl_left(etcd: Any, lease: int) -> int:
    """Seconds left (-1: expired or revoked), as etcdctl prints it (``"ttl"``)."""
    out = json.loads(etcd.etcdctl("lease", "timetolive", f"{lease:x}", "-w", "json"))
    assert "ttl" in out, f"etcdctl lease timetolive printed no ttl: {out}"
    return int(out["ttl"])


def records(etcd: Any) -> list[dict[str, Any]]:
    out = json.loads(etcd.etcdctl("get", "--prefix", PREFIX, "-w", "json"))
    return out.get("kvs", [])


def test_daemonized_gateway_keeps_its_lease_reloads_and_revokes_it(
    etcd_cluster: Any, tmp_path: Path
) -> None:
    ports = [int(u.rsplit(":", 1)[1]) for u in etcd_cluster.endpoint_list]
    ownership = (
        f'[ownership]\nbackend = "etcd"\nendpoints = "{etcd_cluster.endpoints}"\n'
        f'ttl = {TTL}\nprefix = "{PREFIX}"\n' + etcd_cluster.toml()
    )
    notify = NotifySocket(tmp_path / "notify.sock")
    env_before = os.environ.get("NOTIFY_SOCKET")
    os.environ["NOTIFY_SOCKET"] = str(notify.path)  # node_env() copies the environment
    before = leases(etcd_cluster)
    try:
        with Topology("je") as topo:
            cns, gns = topo.ns("c"), topo.ns("g")
            topo.link(cns, "ca", "10.201.1.1/24", gns, "ga", "10.201.1.2/24")
            bridges = [LoopbackBridge(gns, p) for p in ports]
            pair = Pair(topo, tmp_path, cns, gns, ["10.201.1.2"], daemon=True,
                        policy={"version": "1"}, gw_extra=ownership)  # fmt: skip
            try:
                pair.start()
                gw = pair.pid("gateway")
                ready = notify.wait("READY", "1")
                assert int(ready["MAINPID"]) == gw
                mine = leases(etcd_cluster) - before
                assert len(mine) == 1, f"the gateway holds one new lease: {mine}"
                (lease,) = mine
                threads = int(
                    [x for x in Path(f"/proc/{gw}/status").read_text().splitlines()
                     if x.startswith("Threads:")][0].split()[1]
                )  # fmt: skip
                assert threads >= 4, f"jsonl writer, keep-alive, watch, pool: {threads}"

                # the session's record is under that lease, and the lease outlives its TTL
                # (the claim is written off the reactor: it may land just after ATTACHED)
                deadline = time.monotonic() + 5
                while not (kvs := records(etcd_cluster)) and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert kvs and all(int(kv["lease"]) == lease for kv in kvs), kvs
                time.sleep(TTL * 2 + 1)
                assert ttl_left(etcd_cluster, lease) > 0, "the daemon stopped renewing"
                assert records(etcd_cluster), "the session's record expired"
                r = topo.run(cns, "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.99.0.1",
                             check=False)  # fmt: skip
                assert r.returncode == 0, r.stdout + r.stderr

                pair.gw_conf.write_text(pair.gw_conf.read_text().replace('version = "1"',
                                                                         'version = "2"'))  # fmt: skip
                os.kill(gw, signal.SIGHUP)
                notify.wait("RELOADING", "1", 10)
                notify.wait("READY", "1", 10)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and not [
                    e for e in events(pair.gw_events) if e["event_type"] == "POLICY_RELOADED"
                ]:
                    time.sleep(0.05)
                assert [e for e in events(pair.gw_events) if e["event_type"] == "POLICY_RELOADED"]

                assert stop_pid(pair.pid("client"))
                assert stop_pid(gw), "the gateway did not stop on SIGTERM"
                assert not alive(gw) and not pair.pidfile("gateway").exists()
                assert ttl_left(etcd_cluster, lease) <= 0, "the lease was not revoked at stop"
                assert not records(etcd_cluster), "records left after a clean stop"
            finally:
                pair.stop()
                for b in bridges:
                    b.close()
    finally:
        notify.close()
        if env_before is None:
            os.environ.pop("NOTIFY_SOCKET", None)
        else:
            os.environ["NOTIFY_SOCKET"] = env_before
    log = (tmp_path / "gateway.log").read_text()
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]
