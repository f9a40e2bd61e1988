"""
twistd's default mode: the node forks into the background (no ``-n``). A daemonized gateway
and client write their events (the sinks' threads started after the fork), write their
pidfiles, forward traffic, reload the policy on SIGHUP and stop cleanly on SIGTERM (every
session terminated and its last events flushed, pidfile removed).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from nodes import Pair, alive, events, stop_pid

from jumping.testing.netns import Topology

pytestmark = pytest.mark.netns


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads: line for {pid}")


def wait_event(path: Path, pred, what: str, timeout: float = 10.0) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in events(path):
            if pred(e):
                return e
        time.sleep(0.05)
    raise AssertionError(f"no {what} in {path.name} within {timeout}s")


def test_daemonized_nodes_write_events_reload_and_stop_cleanly(tmp_path: Path) -> None:
    with Topology("jd") as topo:
        cns, gns = topo.ns("c"), topo.ns("g")
        topo.link(cns, "ca", "10.203.1.1/24", gns, "ga", "10.203.1.2/24")
        pair = Pair(topo, tmp_path, cns, gns, ["10.203.1.2"], daemon=True)
        try:
            pair.start()  # waits for ATTACHED in *both* events files: the sinks write
            gw, c = pair.pid("gateway"), pair.pid("client")
            assert alive(gw) and alive(c), "the pidfiles name the running daemons"
            for pid in (gw, c):
                # the daemon, detached from the test's session (twistd forked twice)
                assert os.getsid(pid) != os.getsid(0)
                # main thread + the JSON-lines writer, started after the fork
                assert threads(pid) >= 2, f"{pid} has {threads(pid)} thread(s)"
            r = topo.run(cns, "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.99.0.1", check=False)
            assert r.returncode == 0, r.stdout + r.stderr

            conf = pair.gw_conf.read_text().replace("[policy]\n", '[policy]\nversion = "v2"\n', 1)
            pair.gw_conf.write_text(conf)
            os.kill(gw, signal.SIGHUP)
            reloaded = wait_event(
                pair.gw_events,
                lambda e: e.get("event_type") == "POLICY_RELOADED",
                "POLICY_RELOADED after SIGHUP",
            )
            assert reloaded["policy_version"] == "v2"

            for role, pid in (("client", c), ("gateway", gw)):
                assert stop_pid(pid), f"{role} did not stop on SIGTERM"
                assert not pair.pidfile(role).exists(), f"{role} left its pidfile"
        finally:
            pair.stop()
        for path in (pair.gw_events, pair.c_events):
            ends = [e for e in events(path) if e.get("event_type") == "SESSION_TERMINATED"]
            assert ends and ends[-1]["reason_code"] == "OPERATOR_TERMINATED", path.name
        for log in ("gateway.log", "client.log"):
            text = (tmp_path / log).read_text()
            assert "Traceback" not in text and "Unhandled" not in text, text[-2000:]
            assert "Main loop terminated" in text
