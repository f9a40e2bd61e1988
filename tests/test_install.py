"""
Installs as the README says, from a fresh copy of the repository into a fresh venv:
``pip install -e .`` (and the plugins, editable too) gives a ``twistd`` that knows the
``jumping`` command and a ``jumpctl plugins`` that lists every drop-in, core and plugins
(the drop-ins live in ``twisted/plugins/``, which Twisted finds only through ``sys.path``).
Needs the package index or a warm pip cache for the dependencies.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def fresh_copy(dest: Path) -> Path:
    """What a clone of this tree holds: the tracked files, no build artefacts."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True,
                           check=True).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{' '.join(cmd)}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_editable_install_gives_twistd_jumping_and_jumpctl_plugins(tmp_path: Path) -> None:
    repo = fresh_copy(tmp_path / "jumping")
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    run([base, "-m", "venv", str(venv)], tmp_path)
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    run([*pip, "-e", "."], repo)
    plugins = ["plugins/jumping-etcd", "plugins/jumping-kafka", "plugins/jumping-quic"]
    run([*pip, "--no-deps", *(a for p in plugins for a in ("-e", p))], repo)

    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing found by accident
    elsewhere.mkdir()
    help_text = run([str(venv / "bin" / "twistd"), "jumping", "--help"], elsewhere).stdout
    assert "gateway|client --config FILE" in help_text
    assert "Run a Jumping gateway." in help_text
    listed = run([str(venv / "bin" / "jumpctl"), "plugins"], elsewhere).stdout
    for name in (
        "udp",
        "tcp",
        "memory",
        "jsonl",
        "syslog",
        "token-bucket",
        "etcd",
        "kafka",
        "quic",
    ):
        assert f"  {name} " in listed, f"jumpctl plugins does not list {name!r}:\n{listed}"

    # the data plane's C loops were built by the install (where a compiler and OpenSSL's
    # headers exist, as deploy/setup.sh makes sure), else their Python twin runs
    impl = run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import jumping.core.aead as a, jumping.service.tun as t;"
            " print(a.IMPLEMENTATION, 'c' if t.c_read_burst else 'python')",
        ],
        elsewhere,
    ).stdout
    if os.environ.get("JUMPING_REQUIRE_COMPILED") == "1":
        assert impl.split() == ["c", "c"], impl  # both extensions: the AEAD loops, the TUN read
    aead_impl, tun_impl = impl.split()
    assert aead_impl in ("c", "python"), impl
    if aead_impl == "c":  # a compiler was there: the TUN loop (no OpenSSL needed) built too
        assert tun_impl == "c", impl

    # editable: a change in the checkout is what runs
    tap = repo / "jumping" / "tap.py"
    tap.write_text(tap.read_text().replace('"Run a Jumping gateway."', '"Run an edited gateway."'))
    assert "Run an edited gateway." in run([str(venv / "bin" / "twistd"), "jumping", "--help"],
                                           elsewhere).stdout  # fmt: skip
