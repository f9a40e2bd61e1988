"""
deploy/: the systemd units pass ``systemd-analyze verify`` and carry the sandbox the docs
promise; the sysusers and tmpfiles snippets create the account and the directories; the
example configurations in deploy/etc validate (placeholders filled in) and build a node.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jumping.config import load_config
from jumping.keys import encode_key, write_keypair, write_secret

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "deploy" / "systemd"
EXAMPLES = ROOT / "deploy" / "etc"
UNITS = ["jumping-gateway@.service", "jumping-client@.service"]

needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def twistd_dir() -> str:
    local = Path(sys.executable).parent / "twistd"
    found = str(local) if local.exists() else shutil.which("twistd")
    assert found, "twistd not found"
    return str(Path(found).parent)


def directives(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out[k] = v
    return out


@needs_systemd
@pytest.mark.parametrize("name", UNITS)
def test_unit_passes_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    """Verified as an instance (so ExecStart must exist: the units name the venv
    /opt/jumping of docs/operations.md; here it is where this test's twistd lives)."""
    text = (SYSTEMD / name).read_text().replace("/opt/jumping/bin/", twistd_dir() + "/")
    (tmp_path / name).write_text(text)
    instance = name.replace("@.", "@test.")
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / instance)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


@needs_systemd
def test_verify_can_fail(tmp_path: Path) -> None:
    """The check above is not vacuous: a typo or a missing program is reported."""
    text = (SYSTEMD / UNITS[0]).read_text()
    (tmp_path / UNITS[0]).write_text(text.replace("NoNewPrivileges=", "NoNewPrivilege="))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no",
                        str(tmp_path / "jumping-gateway@test.service")],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode != 0 or r.stderr.strip()


@pytest.mark.parametrize("name", UNITS)
def test_unit_sandbox_and_readiness(name: str) -> None:
    d = directives(SYSTEMD / name)
    assert d["Type"] == "notify" and d["NotifyAccess"] == "main"
    assert d["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "--nodaemon" in d["ExecStart"] and "--config /etc/jumping/%i.toml" in d["ExecStart"]
    assert d["NoNewPrivileges"] == "yes" and d["ProtectSystem"] == "strict"
    assert set(d["CapabilityBoundingSet"].split()) == {
        "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN",
    }  # fmt: skip
    assert d["AmbientCapabilities"] == "" and d["ReadWritePaths"] == "/var/log/jumping"
    assert d["DeviceAllow"] == "/dev/net/tun rw" and d["DevicePolicy"] == "closed"


@needs_systemd
def test_sysusers_and_tmpfiles_make_the_account_and_directories(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    for f in ("passwd", "group", "shadow", "gshadow"):
        (etc / f).touch()
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSTEMD / "jumping.sysusers")],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    entry = [
        line for line in (etc / "passwd").read_text().splitlines() if line.startswith("jumping:")
    ]
    assert entry and entry[0].endswith(":/usr/sbin/nologin")
    uid = int(entry[0].split(":")[2])
    assert 0 < uid < 1000
    subprocess.run(["systemd-tmpfiles", f"--root={tmp_path}", "--create",
                    str(SYSTEMD / "jumping.tmpfiles")], check=True, capture_output=True,
                   timeout=30)  # fmt: skip
    logs = (tmp_path / "var" / "log" / "jumping").stat()
    assert (logs.st_uid, logs.st_mode & 0o777) == (uid, 0o750)
    conf = (tmp_path / "etc" / "jumping").stat()
    assert (conf.st_uid, conf.st_mode & 0o777) == (0, 0o750)


# ------------------------------------------------------------------- example configs
def filled(name: str, tmp_path: Path) -> Path:
    """The example, with its placeholders filled and its files created as an operator
    would (keys, secret); ``jumping`` becomes ``nobody`` where no such account exists."""
    text = (EXAMPLES / name).read_text()
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    pub = encode_key(write_keypair(tmp_path / "peer.key"))
    for line in text.splitlines():
        for key in ("private_key", "secret"):
            if line.startswith(f"{key} = "):
                path = tmp_path / line.split('"')[1]
                if key == "private_key":
                    write_keypair(path)
                else:
                    write_secret(path)
    text = text.replace("CLIENT_PUBLIC_KEY", pub).replace("GATEWAY_PUBLIC_KEY", pub)
    try:
        pwd.getpwnam("jumping")
    except KeyError:
        nobody = pwd.getpwnam("nobody")
        text = text.replace('user = "jumping"', 'user = "nobody"').replace(
            'group = "jumping"', f'group = "{grp.getgrgid(nobody.pw_gid).gr_name}"'
        )
    out = tmp_path / name
    out.write_text(text)
    return out


@pytest.mark.parametrize("name", ["gateway.toml", "client.toml", "cluster-member.toml"])
def test_example_configuration_validates(name: str, tmp_path: Path) -> None:
    c = load_config(filled(name, tmp_path))
    assert c.run_as is not None and c.run_as[0] != 0, "the examples drop root"
    assert c.capabilities == ("CAP_NET_ADMIN",)
    assert all(
        s.options["path"].startswith("/var/log/jumping/") for s in c.events if s.name == "jsonl"
    )
    if name == "cluster-member.toml":
        assert c.ownership.name == "etcd" and len(c.ownership.options["endpoints"].split(",")) == 3


@pytest.mark.parametrize("name", ["gateway.toml", "client.toml"])
def test_example_builds_a_node(name: str, tmp_path: Path) -> None:
    """Everything makeService does (keys, plugins with their options) succeeds."""
    from jumping.service.node import NodeService

    node = NodeService(load_config(filled(name, tmp_path)))
    node.build()
    assert node.built is not None and node.tun is None  # built, nothing opened


def test_examples_are_commented() -> None:
    for p in EXAMPLES.glob("*.toml"):
        lines = p.read_text().splitlines()
        assert lines[0].startswith("# "), p.name
        assert sum("#" in line for line in lines) >= 10, f"{p.name}: explain the settings"


def test_setpriv_is_available_for_the_sandbox_test() -> None:
    assert shutil.which("setpriv"), "util-linux setpriv (deploy/setup.sh installs it)"
    assert os.path.exists("/bin/kill"), "ExecReload runs /bin/kill"
