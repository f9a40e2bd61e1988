"""
Privilege settings and their edges without a tunnel: ``[node] user``/``group``/
``capabilities`` validation, twistd's ``--uid/--gid`` against the config, the trusted
``ip`` binary, and what a socket opened without CAP_NET_ADMIN gets (and says).
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jumping import tap
from jumping.config import load_config
from jumping.errors import ConfigError
from jumping.keys import write_keypair
from jumping.service.tun import TunError, ip_command

ROOT = Path(__file__).resolve().parent.parent


def conf(tmp_path: Path, node_extra: str) -> Path:
    if not (tmp_path / "gw.key").exists():
        write_keypair(tmp_path / "gw.key")
    p = tmp_path / "gw.toml"
    p.write_text(f"""
[node]
role = "gateway"
node_id = "gw1"
private_key = "gw.key"
{node_extra}
[tun]
name = "jt0"
address = "10.99.0.1/24"
[[listen]]
transport = "udp"
host = "127.0.0.1"
port = 51820
[[peers]]
public_key = "{"A" * 43}="
allowed_ips = ["10.99.0.2/32"]
""")
    return p


NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrgid(NOBODY.pw_gid).gr_name


def test_user_resolves_to_ids_with_the_primary_group_by_default(tmp_path: Path) -> None:
    c = load_config(conf(tmp_path, 'user = "nobody"'))
    assert c.run_as == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert c.run_as_names == ("nobody", NOGROUP)
    assert c.capabilities == ("CAP_NET_ADMIN",)
    assert load_config(conf(tmp_path, "")).run_as is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('user = "no-such-user-here"', "user: no such user 'no-such-user-here'"),
        ('user = "root"', "user: 'root' is root"),
        ('user = "nobody"\ngroup = "root"', "group: 'root' is gid 0"),
        ('user = "nobody"\ngroup = "no-such-group"', "group: no such group"),
        ('group = "nogroup"', "group: needs user"),
        ('capabilities = ["CAP_SYS_ADMIN"]', "capabilities: must be a list of CAP_NET_ADMIN"),
        ('capabilities = "CAP_NET_ADMIN"', "capabilities: must be a list"),
    ],
)
def test_bad_identity_settings_are_one_line_errors(
    tmp_path: Path, extra: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(conf(tmp_path, extra))


class Twistd(dict[str, Any]):
    """What twistd's ServerOptions looks like to makeService (``options.parent``)."""


class Sub:
    def __init__(self, parent: Twistd) -> None:
        self.parent = parent


def test_node_user_is_handed_to_twistd(tmp_path: Path) -> None:
    c = load_config(conf(tmp_path, 'user = "nobody"'))
    t = Twistd(uid=None, gid=None)
    assert tap._identity(Sub(t), c) == c.run_as
    assert (t["uid"], t["gid"]) == c.run_as  # twistd switches between the two phases


def test_twistd_uid_alone_is_used_with_its_primary_group(tmp_path: Path) -> None:
    c = load_config(conf(tmp_path, ""))
    t = Twistd(uid=NOBODY.pw_uid, gid=None)
    assert tap._identity(Sub(t), c) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert t["gid"] == NOBODY.pw_gid


def test_twistd_and_config_disagreeing_is_an_error(tmp_path: Path, capfd: Any) -> None:
    c = load_config(conf(tmp_path, 'user = "nobody"'))
    with pytest.raises(SystemExit):
        tap._identity(Sub(Twistd(uid=1, gid=1)), c)
    assert "disagree" in capfd.readouterr().err
    with pytest.raises(SystemExit):
        tap._identity(Sub(Twistd(uid=0, gid=None)), load_config(conf(tmp_path, "")))
    assert "--uid 0 is root" in capfd.readouterr().err


def test_ip_is_found_at_a_trusted_absolute_path(tmp_path: Path) -> None:
    found = ip_command()
    assert os.path.isabs(found) and os.stat(found).st_uid == 0
    with pytest.raises(TunError, match="not found at /nowhere/ip"):
        ip_command(["/nowhere/ip"])
    fake = tmp_path / "ip"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    os.chown(fake, NOBODY.pw_uid, NOBODY.pw_gid)
    with pytest.raises(TunError, match="not owned by root"):
        ip_command([str(fake)])
    os.chown(fake, 0, 0)
    fake.chmod(0o777)
    with pytest.raises(TunError, match="writable by group/others"):
        ip_command([str(fake)])


TUNE = """
import socket, sys
from twisted.logger import globalLogBeginner, textFileLogObserver
globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
from jumping.builtin import udp
if len(sys.argv) > 2:  # drop root as twistd does (setuid clears every capability)
    import os
    os.setgroups([]); os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[2]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
size = int(sys.argv[1])
udp._tune(s, size)
udp._tune(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), size)
print("RCVBUF", s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2)
"""


def run_tune(size: int, *drop_to: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", TUNE, str(size), *drop_to], capture_output=True,
                       text=True, timeout=30, env=env, cwd="/")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs CAP_NET_ADMIN to compare")
def test_a_socket_opened_without_cap_net_admin_says_why_its_buffers_are_smaller() -> None:
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    size = min(2 * rmem_max, 1 << 30)  # more than a socket may have without CAP_NET_ADMIN
    privileged = run_tune(size)
    assert f"RCVBUF {size}" in privileged and "instead of" not in privileged
    out = run_tune(size, str(NOBODY.pw_uid))
    assert "udp: receive buffer" in out and f"instead of {size}" in out, out
    assert "SO_RCVBUFFORCE refused" in out and "net.core.rmem_max" in out, out
    assert out.count("udp: receive buffer") == 1, "one line per cause, not one per socket"
    assert f"RCVBUF {rmem_max}" in out
