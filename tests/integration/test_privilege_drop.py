"""
Privilege drop, proved on real daemons: after the TUN device and the sockets are open, the
gateway and the client run as ``[node] user``/``group`` (``/proc/PID/status``: no uid, gid
or supplementary group 0; only CAP_NET_ADMIN left), the tunnel still forwards, and a path
opened *after* the drop (a TCP endpoint that refused at start) carries the session when
the first path dies.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodes import Pair, events

from jumping.testing.netns import Topology

pytestmark = pytest.mark.netns

GW = "10.201.1.2"
NET_ADMIN = 1 << 12


def unprivileged() -> tuple[str, str, int, int]:
    pw = pwd.getpwnam("nobody")
    return pw.pw_name, grp.getgrgid(pw.pw_gid).gr_name, pw.pw_uid, pw.pw_gid


def status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


@pytest.fixture
def events_dir() -> Iterator[Path]:
    """A directory the unprivileged user can reach and write (pytest's are root-only)."""
    _user, _group, uid, gid = unprivileged()
    d = Path(tempfile.mkdtemp(prefix="jumping-priv-"))
    os.chown(d, uid, gid)
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def nft(ns: str, rules: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                   check=True, capture_output=True)  # fmt: skip


@pytest.mark.parametrize("how", ["config", "twistd"])
def test_nodes_drop_to_their_user_and_a_path_opened_after_the_drop_works(
    how: str, tmp_path: Path, events_dir: Path
) -> None:
    """``how``: ``[node] user``/``group``, or twistd's ``--uid/--gid`` (daemonized)."""
    user, group, uid, gid = unprivileged()
    if how == "config":
        drop = {"node_extra": f'user = "{user}"\ngroup = "{group}"'}
    else:
        drop = {"twistd_args": (f"--uid={user}", f"--gid={group}"), "daemon": True}
    with Topology("jv") as topo:
        cns, gns = topo.ns("c"), topo.ns("g")
        topo.link(cns, "ca", "10.201.1.1/24", gns, "ga", f"{GW}/24")
        # the TCP endpoint refuses until the nodes have dropped their privileges
        nft(gns, "table inet jrst {\n chain i { type filter hook input priority 0; "
                 "policy accept; tcp dport 51820 reject with tcp reset; }\n}\n")  # fmt: skip
        pair = Pair(
            topo, tmp_path, cns, gns, [GW], transports=("udp", "tcp"), events_dir=events_dir,
            **drop,  # type: ignore[arg-type]
        )  # fmt: skip
        try:
            pair.start()
            for role in ("gateway", "client"):
                st = status(pair.pid(role))
                assert st["Uid"].split() == [str(uid)] * 4, (role, st["Uid"])
                assert st["Gid"].split() == [str(gid)] * 4, (role, st["Gid"])
                assert "0" not in st["Groups"].split(), (role, st["Groups"])
                assert int(st["CapEff"], 16) == NET_ADMIN, (role, st["CapEff"])
                assert int(st["CapPrm"], 16) == NET_ADMIN, (role, st["CapPrm"])
                assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
                assert st["NoNewPrivs"] == "1"
                log = (tmp_path / f"{role}.log").read_text()
                assert f"privileges: uid {uid} gid {gid}" in log
                assert "capabilities kept: CAP_NET_ADMIN" in log
            for e in (pair.gw_events, pair.c_events):
                assert e.stat().st_uid == uid, "the events file is the node user's"
                assert e.stat().st_mode & 0o037 == 0, oct(e.stat().st_mode)  # 0640 or stricter

            r = topo.run(cns, "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.99.0.1", check=False)
            assert r.returncode == 0, r.stdout + r.stderr

            # the TCP endpoint opens: the client connects again, from a new socket, unprivileged
            topo.run(gns, "nft", "delete", "table", "inet", "jrst")
            deadline = time.monotonic() + 10
            established = ""
            while time.monotonic() < deadline and not established:
                ss = topo.run(cns, "ss", "-Htnp", "state", "established",
                              f"dst {GW}:51820", check=False).stdout  # fmt: skip
                established = ss if f"pid={pair.pid('client')}," in ss else ""
                time.sleep(0.1)
            assert established, "the client did not reconnect its TCP path after the drop"
            assert "path to 10.201.1.2:51820 (tcp)" in (tmp_path / "client.log").read_text()

            # UDP dies: the session moves to that TCP path and keeps forwarding
            udp_off = ("table inet judp {\n chain o { type filter hook output priority 0; "
                       "policy accept; udp dport 51820 drop; udp sport 51820 drop; }\n}\n")  # fmt: skip
            for ns in (cns, gns):
                nft(ns, udp_off)
            deadline = time.monotonic() + 15
            switched: list[dict] = []
            while time.monotonic() < deadline and not switched:
                topo.run(cns, "ping", "-c", "1", "-W", "1", "10.99.0.1", check=False)
                switched = [
                    e for e in events(pair.c_events)
                    if e["event_type"] == "TRANSPORT_SWITCH" and e["new_transport_kind"] == "tcp"
                ]  # fmt: skip
            assert switched, pair.diagnostics()
            r = topo.run(cns, "ping", "-c", "5", "-i", "0.2", "-W", "2", "10.99.0.1", check=False)
            m = re.search(r"(\d+) received", r.stdout)
            assert m and int(m.group(1)) >= 4, r.stdout
            sids = {e["session_id"] for e in events(pair.c_events)
                    if e["event_type"] == "SESSION_STATE_CHANGE"}  # fmt: skip
            assert len(sids) == 1, "the same session throughout"
        finally:
            pair.stop()
