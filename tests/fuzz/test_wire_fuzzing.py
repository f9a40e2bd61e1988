"""CI part of the wire fuzzing: the committed corpus replayed through the harness's
properties, random mutations of it, and a short coverage-guided atheris run (long runs:
tests/fuzz/run.sh)."""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

CORPUS = Path(__file__).parent / "corpus"


def _corpus() -> list[bytes]:
    return [p.read_bytes() for p in sorted(CORPUS.iterdir())]


def test_corpus_is_committed_and_holds_every_message_type() -> None:
    datas = _corpus()
    assert len(datas) >= 100
    types = {d[1] for d in datas if d[:1] != b"P" and len(d) > 1 and not d[0] & 8}
    assert {1, 3, 4, 5} <= types  # the response seed is a zeroed frame of the right size
    assert any(len(d) == 1 + 116 for d in datas)


def test_corpus_and_mutations_keep_the_wire_properties() -> None:
    harness.PAIR = None
    datas = _corpus()
    for d in datas:
        harness.one_input(d)
    r = random.Random(10)
    for _ in range(20_000):
        b = bytearray(r.choice(datas))
        for _ in range(r.randint(1, 4)):
            if b:
                b[r.randrange(len(b))] = r.randrange(256)
        harness.one_input(bytes(b))


def test_the_harness_catches_a_state_change_by_unauthenticated_input(monkeypatch) -> None:  # noqa: ANN001
    """The property can fail: a core that lets an unauthenticated datagram touch a session
    is reported."""
    harness.PAIR = None
    p = harness.pair()
    gw = p.net.gateway
    real = gw.receive

    def leaky(now, path, data):  # noqa: ANN001, ANN202
        out = real(now, path, data)
        next(iter(gw.sessions.values())).fsm.state_version += 1
        return out

    monkeypatch.setattr(gw, "receive", leaky)
    with pytest.raises(harness.Violation):
        harness.check_one(b"\x01" + b"junk")
    harness.PAIR = None


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_short_coverage_guided_run_finds_nothing(tmp_path: Path) -> None:
    work = tmp_path / "corpus"
    work.mkdir()
    for p in CORPUS.iterdir():
        (work / p.name).write_bytes(p.read_bytes())
    root = Path(__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "harness.py"), "-runs=30000",
         "-print_final_stats=1", str(work)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stat::number_of_executed_units: 30000" in r.stderr
    assert not list(tmp_path.glob("crash-*"))
