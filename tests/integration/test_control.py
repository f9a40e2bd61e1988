"""
Operator control of a live gateway: daemonized twistd nodes (no ``-n``) in namespaces made
here, one gateway and four clients, driven through the control socket with ``jumpctl``.

``status`` and ``sessions`` describe the live sessions; ``reload`` adds a peer (it
connects), removes one (its session ends with POLICY_DENIED, the client is told), changes
another's ``allowed_ips`` (a source address it did not allow passes at once) while a third
session keeps its state_version, receiver index and path and gets no event; ``terminate``
ends one session of three; SIGHUP is the same reload; a reload that changes anything else,
or an invalid file, changes nothing; and every error is one line and a non-zero exit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nodes import events, node_env, twistd

from jumping.cli import main
from jumping.keys import encode_key, write_keypair
from jumping.testing.netns import Topology

pytestmark = pytest.mark.netns

NAMES = ("alice", "bob", "carol", "dave")
#: twistd forks into the background (its default), as in production
DAEMON = True


class Fleet:
    """A gateway and four clients (one namespace each), all daemonized twistd."""

    def __init__(self, topo: Topology, tmp: Path, sockdir: Path) -> None:
        self.topo, self.tmp, self.sockdir = topo, tmp, sockdir
        self.gns = topo.ns("g")
        self.ns: dict[str, str] = {}
        self.keys: dict[str, str] = {}
        self.gw_pub = encode_key(write_keypair(tmp / "gw.key"))
        for i, name in enumerate(NAMES, start=1):
            ns = topo.ns(f"c{i}")
            topo.link(ns, "ca", f"10.210.{i}.1/24", self.gns, f"ga{i}", f"10.210.{i}.2/24")
            self.ns[name] = ns
            self.keys[name] = encode_key(write_keypair(tmp / f"{name}.key"))
            (tmp / f"{name}.toml").write_text(f"""
[node]
role = "client"
node_id = "{name}"
private_key = "{name}.key"
[tun]
name = "jctl0"
address = "10.99.0.{i + 1}/24"
[gateway]
public_key = "{self.gw_pub}"
[[gateway.endpoints]]
transport = "udp"
host = "10.210.{i}.2"
port = 51820
[[events]]
sink = "jsonl"
path = "{name}-events.jsonl"
[control]
socket = "{sockdir / (name + ".sock")}"
""")
        self.gw_conf = tmp / "gw.toml"
        self.gw_socket = sockdir / "gw.sock"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def gateway_config(self, peers: dict[str, list[str]], version: str, extra: str = "") -> None:
        entries = "".join(
            f'[[peers]]\nname = "{n}"\npublic_key = "{self.keys[n]}"\n'
            f"allowed_ips = {json.dumps(ips)}\n"
            for n, ips in peers.items()
        )
        self.gw_conf.write_text(f"""
[node]
role = "gateway"
node_id = "gw1"
private_key = "gw.key"
[tun]
name = "jctlg0"
address = "10.99.0.1/24"
{extra}
[[listen]]
transport = "udp"
host = "0.0.0.0"
port = 51820
{entries}
[[events]]
sink = "jsonl"
path = "gw-events.jsonl"
[control]
socket = "{self.gw_socket}"
[policy]
version = "{version}"
""")

    def start(self, role: str, name: str) -> None:
        ns = self.gns if name == "gw" else self.ns[name]
        conf = self.gw_conf if name == "gw" else self.tmp / f"{name}.toml"
        if not DAEMON:
            p = self.topo.popen(
                ns, twistd(), "-n", f"--pidfile={self.tmp / (name + '.pid')}",
                f"--logfile={self.tmp / (name + '.log')}", "jumping", role, "--config",
                str(conf), env=node_env(), log=self.tmp / f"{name}.out",
            )  # fmt: skip
            self.procs[name] = p
            wait(lambda: " up: tun " in _read(self.tmp / f"{name}.log"), f"{name} up", self)
            return
        r = subprocess.run(
            ["ip", "netns", "exec", ns, twistd(), f"--pidfile={self.tmp / (name + '.pid')}",
             f"--logfile={self.tmp / (name + '.log')}", "jumping", role, "--config", str(conf)],
            capture_output=True, text=True, timeout=30, env=node_env(), cwd=self.tmp,
        )  # fmt: skip
        assert r.returncode == 0, f"twistd {name} exited {r.returncode}: {r.stdout}{r.stderr}"
        wait(lambda: " up: tun " in _read(self.tmp / f"{name}.log"), f"{name} up", self)

    def pid(self, name: str) -> int:
        return int((self.tmp / f"{name}.pid").read_text().strip())

    def alive(self, name: str) -> bool:
        if not DAEMON:
            return self.procs[name].poll() is None
        # A killed multi-threaded daemon: its main thread is a zombie ('Z') while its other
        # threads still exit, and they hold the descriptors (the control socket) until the
        # last one is gone. Dead = no thread left but the zombie leader.
        pid = self.pid(name)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return False
        return len(tasks) > 1 or stat.rsplit(")", 1)[1].split()[0] != "Z"

    def gw_events(self) -> list[dict[str, Any]]:
        return events(self.tmp / "gw-events.jsonl")

    def client_events(self, name: str) -> list[dict[str, Any]]:
        return events(self.tmp / f"{name}-events.jsonl")

    def diagnostics(self) -> str:
        out = []
        for p in sorted(self.tmp.glob("*.log")) + sorted(self.tmp.glob("*.jsonl")):
            out.append(f"--- {p.name}\n" + "\n".join(p.read_text().splitlines()[-15:]))
        return "\n".join(out)


def _read(p: Path) -> str:
    return p.read_text() if p.exists() else ""


def wait(cond: Callable[[], object], what: str, fleet: Fleet, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s\n{fleet.diagnostics()}")


def jumpctl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    sockdir = Path(tempfile.mkdtemp(prefix="jctl"))  # socket paths: at most 107 bytes
    os.chmod(sockdir, 0o755)  # the sockets own mode is what keeps other users out
    os.chmod(tmp_path, 0o755)
    try:
        with Topology("jc") as topo:
            f = Fleet(topo, tmp_path, sockdir)
            try:
                yield f
            finally:
                for name in ("gw", *NAMES):
                    try:
                        os.kill(f.pid(name), signal.SIGTERM)
                    except (OSError, ValueError):
                        pass
                deadline = time.monotonic() + 5
                for name in ("gw", *NAMES):
                    while (tmp_path / f"{name}.pid").exists() and time.monotonic() < deadline:
                        time.sleep(0.05)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def _rows(capsys: pytest.CaptureFixture[str], fleet: Fleet) -> dict[str, dict[str, Any]]:
    code, out, err = jumpctl(capsys, "sessions", "--json", "--socket", str(fleet.gw_socket))
    assert code == 0, err
    return {r["peer"]: r for r in json.loads(out)}


def _attached(capsys: pytest.CaptureFixture[str], fleet: Fleet, names: set[str]) -> Any:
    def ready() -> Any:
        rows = _rows(capsys, fleet)
        ok = {n for n, r in rows.items() if r["state"] == "ATTACHED"}
        return rows if ok >= names else None

    return wait(ready, f"sessions of {sorted(names)} ATTACHED", fleet)


def _ping(fleet: Fleet, name: str, source: str) -> bool:
    r = fleet.topo.run(fleet.ns[name], "ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", source,
                       "10.99.0.1", check=False)  # fmt: skip
    return r.returncode == 0


def _identity(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["session_id"], row["state_version"], row["receiver_index"],
            row["path"]["transport_id"])  # fmt: skip


def test_operator_controls_a_live_gateway(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    sock = str(fleet.gw_socket)
    base = {"alice": ["10.99.0.2/32"], "bob": ["10.99.0.3/32"], "carol": ["10.99.0.4/32"]}
    fleet.gateway_config(base, "one")
    fleet.start("gateway", "gw")
    for name in ("alice", "bob", "carol"):
        fleet.start("client", name)
    rows = _attached(capsys, fleet, {"alice", "bob", "carol"})

    # status: what runs, and the three live sessions
    code, out, err = jumpctl(capsys, "status", "--json", "--socket", sock)
    assert code == 0, err
    st = json.loads(out)
    assert (st["node_id"], st["role"], st["policy_version"]) == ("gw1", "gateway", "one")
    assert st["sessions"] == {"ATTACHED": 3}
    assert st["ownership"] == {"backend": "memory", "healthy": True, "shared": False}
    assert [s["name"] for s in st["sinks"]] == ["jsonl"] and st["sinks"][0]["dropped"] == 0
    assert st["listeners"] == [{"local": "0.0.0.0:51820"}] and st["uptime_s"] > 0
    assert st["dispatch"] == "lean"  # twistd's epoll reactor, jumping/service/dispatch.py
    # the core's counts by reason: three answered and confirmed handshakes, no drop yet
    assert st["counters"]["handshakes_confirmed"] == 3, st["counters"]
    assert st["counters"]["sessions_created"] == 3 and isinstance(st["drops"], dict)
    hs = st["handshakes"]  # three answered from the queue, nothing wasted, no cookie asked
    assert hs["cookie_mode"] == "load" and hs["cookies_required"] is False, hs
    assert hs["queue"]["served"] >= 3 and hs["queue"]["dropped"] == 0 and hs["cost_s"] > 0
    code, out, _ = jumpctl(capsys, "status", "--socket", sock)
    assert code == 0 and "node: gw1 (gateway)" in out and "sessions: ATTACHED 3" in out
    assert "handshakes: cookies not required (load: wasted load" in out
    assert "dispatch: lean" in out and "\ndrops: " in out

    # sessions: one row per session, like wg show
    for name, i in (("alice", 1), ("bob", 2), ("carol", 3)):
        r = rows[name]
        assert r["path"]["kind"] == "udp" and r["path"]["remote"].startswith(f"10.210.{i}.1:")
        assert r["receiver_index"] and r["last_handshake_s_ago"] is not None
        assert r["peer_public_key"] and r["owner_token"] is not None
    code, out, _ = jumpctl(capsys, "sessions", "--socket", sock)
    assert code == 0 and out.count("session: ") == 3 and "peer: bob" in out
    code, out, _ = jumpctl(
        capsys, "sessions", "--json", "--socket", str(fleet.sockdir / "alice.sock")
    )
    client_rows = json.loads(out)
    assert len(client_rows) == 1 and client_rows[0]["candidates"][0]["active"] is True

    # bob's second address is not in his allowed_ips: the gateway drops what it sends
    fleet.topo.run(fleet.ns["bob"], "ip", "addr", "add", "10.99.0.33/24", "dev", "jctl0")
    assert _ping(fleet, "bob", "10.99.0.3")
    assert not _ping(fleet, "bob", "10.99.0.33")

    # reload: dave added, alice removed, bob's allowed_ips changed, carol untouched
    before = len(fleet.gw_events())
    carol = _identity(rows["carol"])
    bob = _identity(rows["bob"])
    alice_sid = rows["alice"]["session_id"]
    new = {"bob": ["10.99.0.3/32", "10.99.0.33/32"], "carol": base["carol"],
           "dave": ["10.99.0.5/32"]}  # fmt: skip
    fleet.gateway_config(new, "two")
    code, out, err = jumpctl(capsys, "reload", "--socket", sock)
    assert code == 0, err
    assert out.strip() == (
        "reloaded: policy version two; peers: added dave; removed alice; changed bob"
    )
    fleet.start("client", "dave")
    rows = _attached(capsys, fleet, {"bob", "carol", "dave"})
    assert "alice" not in rows

    def alice_ended() -> bool:
        return any(e.get("session_id") == alice_sid and e.get("reason_code") == "POLICY_DENIED"
                   and e.get("new_state") == "TERMINATED" for e in fleet.gw_events()[before:])  # fmt: skip

    wait(alice_ended, "alice's session ended POLICY_DENIED", fleet)
    assert wait(lambda: any(e.get("reason_code") == "POLICY_DENIED"
                            for e in fleet.client_events("alice")),
                "alice told POLICY_DENIED", fleet)  # fmt: skip
    assert _ping(fleet, "bob", "10.99.0.33"), "bob's new allowed_ips apply to his live session"
    assert _identity(rows["bob"]) == bob, "bob keeps his session, index and path"
    assert _identity(rows["carol"]) == carol, "carol keeps her session, index and path"
    carol_sid = carol[0]
    reactions = [e for e in fleet.gw_events()[before:]
                 if e.get("session_id") == carol_sid and e["event_type"] != "SESSION_STATS"]  # fmt: skip
    assert reactions == [], reactions

    # terminate one session of three: dave's; bob and carol do not notice
    before = len(fleet.gw_events())
    dave_sid = rows["dave"]["session_id"]
    code, out, err = jumpctl(capsys, "terminate", dave_sid, "--reason", "maintenance",
                             "--socket", sock)  # fmt: skip
    assert code == 0, err
    assert out.strip() == f"session {dave_sid} terminated (OPERATOR_TERMINATED)"

    def dave_ended() -> bool:
        return any(e.get("session_id") == dave_sid and e.get("reason_code") == "OPERATOR_TERMINATED"
                   and e.get("detail") == "maintenance" for e in fleet.gw_events()[before:])  # fmt: skip

    wait(dave_ended, "dave's session ended OPERATOR_TERMINATED with the operator's reason", fleet)
    assert wait(lambda: any(e.get("reason_code") == "OPERATOR_TERMINATED"
                            for e in fleet.client_events("dave")),
                "dave told OPERATOR_TERMINATED", fleet)  # fmt: skip
    rows = _rows(capsys, fleet)
    assert _identity(rows["bob"]) == bob and _identity(rows["carol"]) == carol
    others = [e for e in fleet.gw_events()[before:] if e.get("session_id") in (bob[0], carol_sid)
              and e["event_type"] != "SESSION_STATS"]  # fmt: skip
    assert others == [], others

    # SIGHUP is the same reload
    fleet.gateway_config(new, "three")
    os.kill(fleet.pid("gw"), signal.SIGHUP)

    def version() -> Any:
        code, out, _ = jumpctl(capsys, "status", "--json", "--socket", sock)
        return code == 0 and json.loads(out)["policy_version"] == "three"

    wait(version, "SIGHUP applied policy three", fleet)

    # a file that changes more than policy and peers, or is invalid, changes nothing
    fleet.gateway_config(new, "four", extra="mtu = 1300")
    code, out, err = jumpctl(capsys, "reload", "--socket", sock)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "[tun] changed: a reload applies [policy] and [[peers]]" in err
    fleet.gw_conf.write_text("[node\n")
    code, out, err = jumpctl(capsys, "reload", "--socket", sock)
    assert code == 1 and err.startswith("jumpctl: error: ") and "not valid TOML" in err
    code, out, _ = jumpctl(capsys, "status", "--json", "--socket", sock)
    st = json.loads(out)
    assert st["policy_version"] == "three" and st["peers"] == 3
    assert st["control_actions"]["reload:rejected"] == 2
    assert _identity(_rows(capsys, fleet)["carol"]) == carol


def test_errors_are_one_line_and_a_non_zero_exit(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = str(fleet.gw_socket)
    code, out, err = jumpctl(capsys, "status", "--socket", sock)
    assert code == 1 and out == ""
    assert err == f"jumpctl: error: {sock}: no such control socket (is the node running?)\n"
    fleet.gateway_config({"alice": ["10.99.0.2/32"]}, "one")
    fleet.start("gateway", "gw")
    mode = os.stat(sock).st_mode & 0o777
    assert mode == 0o600, oct(mode)

    code, out, err = jumpctl(capsys, "terminate", "ab" * 16, "--socket", sock)
    assert (code, out) == (1, "")
    assert err == f"jumpctl: error: unknown session {'ab' * 16}\n"
    code, out, err = jumpctl(capsys, "terminate", "not-hex", "--socket", sock)
    assert code == 1 and err == "jumpctl: error: 'not-hex' is not a session ID (hex)\n"

    # another user: the socket is the node's user's (root here) only. The interpreter and
    # the package may live where nobody cannot read: import first, then become nobody.
    as_nobody = (
        "import os, sys, jumping.cli\n"
        "jumping.cli.parser().parse_args(sys.argv[1:])  # imports all it needs\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "raise SystemExit(jumping.cli.main(sys.argv[1:]))"
    )
    r = subprocess.run(
        [sys.executable, "-c", as_nobody, "status", "--socket", sock],
        capture_output=True, text=True, timeout=30, env=node_env(), cwd="/",
    )  # fmt: skip
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr == (
        f"jumpctl: error: {sock}: permission denied (run jumpctl as root or as the node's user)\n"
    )

    # the node killed without a chance to clean up: its socket file stays, nobody answers
    os.kill(fleet.pid("gw"), signal.SIGKILL)
    wait(lambda: not fleet.alive("gw"), "gateway dead", fleet)
    assert Path(sock).exists()
    code, out, err = jumpctl(capsys, "status", "--socket", sock)
    assert code == 1
    assert err == f"jumpctl: error: {sock}: the node is not running (stale control socket)\n"
    # a new node replaces the stale socket
    (fleet.tmp / "gw.pid").unlink(missing_ok=True)
    (fleet.tmp / "gw.log").unlink()
    fleet.start("gateway", "gw")
    code, out, err = jumpctl(capsys, "status", "--socket", sock)
    assert code == 0, err
