"""Installing the distribution is all it takes: ``jumpctl plugins`` lists ``quic`` as a
transport, found through its ``twisted/plugins`` drop-in like any third-party plugin."""

from __future__ import annotations

import subprocess
import sys


def _sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line and not line.startswith(" "):
            current = line.rstrip(":")
            out[current] = []
        elif line.strip():
            out[current].append(line.split()[0])
    return out


def test_jumpctl_plugins_lists_quic_as_a_transport() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "jumping.cli", "plugins"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    sections = _sections(r.stdout)
    assert "quic" in sections["transport"], r.stdout
    assert "quic" not in sections["event sink"] + sections["ownership backend"]
    line = next(ln for ln in r.stdout.splitlines() if ln.split()[:1] == ["quic"])
    assert "QUIC" in line, "the drop-in's description is shown"
