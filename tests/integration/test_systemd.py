"""
The systemd units run for real, without systemd as PID 1: each unit's ExecStart (parsed
from deploy/systemd/) runs inside the unit's sandbox reproduced with ``setpriv`` (its
CapabilityBoundingSet, NoNewPrivileges) and a private mount namespace (ProtectSystem=strict:
a read-only system but for ReadWritePaths), with ``NOTIFY_SOCKET`` pointing at a datagram
socket this test owns. READY=1 must come only once the listeners are bound and the sinks
started; ExecReload (SIGHUP) must give RELOADING=1 then READY=1; SIGTERM STOPPING=1 and a
clean exit. In between the tunnel forwards, the nodes running as their [node] user.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodes import Pair, events, node_env, twistd

from jumping.testing.netns import Topology
from jumping.testing.notify import NotifySocket

pytestmark = pytest.mark.netns

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
GW = "10.201.1.2"


def unit(name: str) -> dict[str, list[str]]:
    """The unit's directives (repeated ones in order); comments and sections dropped."""
    out: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def sandboxed(u: dict[str, list[str]], instance: str, confdir: Path, writable: Path) -> list[str]:
    """The unit's ExecStart as systemd would run it, in the unit's sandbox."""
    cmd = u["ExecStart"][0].replace("%i", instance).replace("/etc/jumping/", f"{confdir}/")
    argv = shlex.split(cmd)
    assert argv[0] == "/opt/jumping/bin/twistd"
    argv[0] = twistd()
    caps = ",".join(
        "+" + c.removeprefix("CAP_").lower() for c in u["CapabilityBoundingSet"][0].split()
    )
    setpriv = ["setpriv", f"--bounding-set=-all,{caps}", "--inh-caps=-all"]
    if u["NoNewPrivileges"] == ["yes"]:
        setpriv.append("--no-new-privs")
    assert u["ProtectSystem"] == ["strict"] and u["ReadWritePaths"] == ["/var/log/jumping"]
    assert u["RuntimeDirectory"] == ["jumping"] and u["RuntimeDirectoryMode"] == ["0750"]
    # ProtectSystem=strict + ReadWritePaths: / read-only, the events directory writable;
    # RuntimeDirectory: a fresh writable /run/jumping (the control socket), private here
    mounts = (
        "mkdir -p /run/jumping && mount --make-rprivate / && "
        "mount -t tmpfs -o mode=0750 tmpfs /run/jumping && mount -o remount,bind,ro / && "
        f'mount --bind "{writable}" "{writable}" && mount -o remount,bind,rw "{writable}" && '
        f'umask {u["UMask"][0]} && exec "$@"'
    )
    return ["unshare", "--mount", "sh", "-c", mounts, "sh", *setpriv, *argv]


@pytest.fixture
def world() -> Iterator[Path]:
    """Config, keys and events where the dropped node can read (configs, for SIGHUP) and
    write (events), as /etc/jumping and /var/log/jumping would be."""
    d = Path(tempfile.mkdtemp(prefix="jumping-unit-"))
    d.chmod(0o755)
    ev = d / "log"
    ev.mkdir()
    pw = pwd.getpwnam("nobody")
    os.chown(ev, pw.pw_uid, pw.pw_gid)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def status(pid: int) -> dict[str, str]:
    return dict(
        (k, v.strip())
        for k, _, v in (
            line.partition(":") for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
    )


def test_units_run_sandboxed_notify_ready_reload_and_stop(world: Path) -> None:
    gw_unit, c_unit = unit("jumping-gateway@.service"), unit("jumping-client@.service")
    for u in (gw_unit, c_unit):
        assert u["Type"] == ["notify"] and u["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    notify = NotifySocket(world / "notify.sock")
    env = {**node_env(), "NOTIFY_SOCKET": str(notify.path)}
    with Topology("js") as topo:
        cns, gns = topo.ns("c"), topo.ns("g")
        topo.link(cns, "ca", "10.201.1.1/24", gns, "ga", f"{GW}/24")
        pair = Pair(
            topo, world, cns, gns, [GW], node_extra=f'user = "nobody"\ngroup = "{group}"',
            events_dir=world / "log", policy={"version": "1"}, own_control=False,
        )  # fmt: skip
        gw = topo.popen(gns, *sandboxed(gw_unit, "gw", world, world / "log"), env=env,
                        log=world / "gateway.log")  # fmt: skip
        c = None
        try:
            ready = notify.wait("READY", "1")
            # readiness comes after the listener is bound and the sink started
            assert int(ready["MAINPID"]) == gw.pid and "gateway gw1" in ready["STATUS"]
            ss = topo.run(gns, "ss", "-Hulnp", "sport = :51820").stdout
            assert f"pid={gw.pid}," in ss, ss
            assert pair.gw_events.exists()
            st = status(gw.pid)
            assert st["Uid"].split() == [str(nobody.pw_uid)] * 4
            assert int(st["CapEff"], 16) == 1 << 12 and st["NoNewPrivs"] == "1"
            bounding = {10, 12, 6, 7, 0}  # the unit's CapabilityBoundingSet
            assert int(st["CapBnd"], 16) == sum(1 << b for b in bounding)

            c = topo.popen(cns, *sandboxed(c_unit, "c", world, world / "log"), env=env,
                           log=world / "client.log")  # fmt: skip
            assert "client c1" in notify.wait("READY", "1")["STATUS"]
            pair.wait_attached(15)
            r = topo.run(cns, "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.99.0.1", check=False)
            assert r.returncode == 0, r.stdout + r.stderr

            # ExecReload, with $MAINPID as systemd sets it
            pair.gw_conf.write_text(
                pair.gw_conf.read_text().replace('version = "1"', 'version = "2"')
            )
            reload = shlex.split(gw_unit["ExecReload"][0].replace("$MAINPID", str(gw.pid)))
            subprocess.run(reload, check=True)
            notify.wait("RELOADING", "1", 10)
            assert "policy version 2" in notify.wait("READY", "1", 10)["STATUS"]
            deadline = time.monotonic() + 5  # the sink writes from its thread
            while time.monotonic() < deadline and not [
                e for e in events(pair.gw_events) if e["event_type"] == "POLICY_RELOADED"
            ]:
                time.sleep(0.05)
            assert [e for e in events(pair.gw_events) if e["event_type"] == "POLICY_RELOADED"]

            for proc in (c, gw):
                proc.send_signal(signal.SIGTERM)
                notify.wait("STOPPING", "1", 10)
                # twistd re-raises the signal that stopped it once it shut down cleanly;
                # systemd counts a SIGTERM death as a clean stop
                assert proc.wait(15) in (0, -signal.SIGTERM)
        finally:
            for proc in (c, gw):
                if proc is not None and proc.poll() is None:
                    proc.kill()
            notify.close()
        text = (world / "gateway.log").read_text()
        assert "Traceback" not in text and "Unhandled" not in text, text[-3000:]
