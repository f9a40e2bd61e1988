"""Event sinks: JSON lines (rotation, full or read-only disk, symlinks, file mode) and syslog,
through the plugin loader; a sink never blocks nor raises, it drops and counts; it touches
nothing before start()."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from jumping import plugin
from jumping.errors import PluginError
from jumping.interfaces import IEventSink, IOwnershipBackend, IRateLimitPolicy, ITransportFactory


def ev(i: int) -> dict:
    return {
        "schema": "jumping.event/1",
        "ts_ms": 1_800_000_000_000 + i,
        "event_type": "SESSION_STATS",
        "session_id": "ab" * 16,
        "node_id": "n",
        "policy_version": "1",
        "state_version": 1,
        "reason_code": None,
        "seq": i,
        "prev_hash": "0" * 64,
    }


def wait_for(cond, timeout: float = 5.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not cond():
        time.sleep(0.01)
    assert cond()


def test_every_builtin_plugin_loads_and_verifies(tmp_path: Path) -> None:
    assert {"udp", "tcp"} <= set(plugin.available(ITransportFactory))
    assert plugin.available(IOwnershipBackend) == ["memory"]
    assert {"jsonl", "syslog"} <= set(plugin.available(IEventSink))
    lim = plugin.load(IRateLimitPolicy, "token-bucket", max_per_min=2, cooldown_ms=10)
    assert lim.check("s", 0) is None
    lim.record("s", 0)
    assert lim.check("s", 5) == "COOLDOWN_ACTIVE"
    lim.record("s", 20)
    assert lim.check("s", 40) == "SWITCH_RATE_LIMITED"
    with pytest.raises(PluginError, match="unknown event sink plugin 'nope'; installed: "):
        plugin.load(IEventSink, "nope")
    with pytest.raises(PluginError, match="jsonl"):
        plugin.load(IEventSink, "jsonl", path=str(tmp_path / "x"), bogus=1)


def test_jsonl_writes_rotates_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = plugin.load(IEventSink, "jsonl", path=str(path), rotate_bytes=4096, keep=2)
    sink.start()
    for i in range(200):
        sink.emit(ev(i))
    wait_for(lambda: sink.delivered == 200)
    sink.close()
    files = sorted(tmp_path.glob("events.jsonl*"))
    assert len(files) == 3  # current + 2 kept
    lines = [json.loads(x) for f in files for x in f.read_text().splitlines()]
    assert len(lines) < 200 and lines  # the oldest rotated away, by design
    assert sink.dropped == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs")
def test_jsonl_on_a_full_disk_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        sink = plugin.load(IEventSink, "jsonl", path=str(disk / "e.jsonl"), max_queue=50)
        sink.start()
        t = time.monotonic()
        for i in range(10_000):
            sink.emit(ev(i))
            if i % 50 == 0:
                time.sleep(0.001)  # let the writer fill the disk
        assert time.monotonic() - t < 30.0  # never waits on the disk
        wait_for(lambda: sink.queue_depth == 0)
        assert sink.dropped > 0 and 0 < sink.delivered < 10_000
        assert sink.dropped + sink.delivered == 10_000
        sink.close()
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_jsonl_unwritable_path_is_a_start_error_not_silent_loss(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    sink = plugin.load(IEventSink, "jsonl", path=str(ro / "sub" / "events.jsonl"))
    with pytest.raises(OSError, match=r"jsonl: cannot write events to .*sub/events.jsonl: No such"):
        sink.start()
    for i in range(10):
        sink.emit(ev(i))
    sink.close()
    assert sink.dropped == 10 and sink.queue_depth == 0


def test_jsonl_constructor_touches_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = plugin.load(IEventSink, "jsonl", path=str(path))
    sink.emit(ev(0))
    assert not path.exists()  # nothing before start()
    sink.start()
    wait_for(lambda: sink.delivered == 1)
    sink.close()
    assert len(path.read_text().splitlines()) == 1


def test_jsonl_refuses_a_symlink_and_never_writes_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "events.jsonl"
    link.symlink_to(victim)
    sink = plugin.load(IEventSink, "jsonl", path=str(link))
    with pytest.raises(OSError, match="is a symlink"):
        sink.start()
    assert victim.read_text() == "precious\n"


def test_jsonl_rotation_target_replaced_by_a_symlink_is_not_followed(tmp_path: Path) -> None:
    """A symlink planted at the live path between two writes is refused, not followed: the
    batch is dropped and counted, the target untouched."""
    path = tmp_path / "events.jsonl"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    sink = plugin.load(IEventSink, "jsonl", path=str(path))
    sink.start()
    sink.emit(ev(0))
    wait_for(lambda: sink.delivered == 1)
    path.unlink()
    path.symlink_to(victim)
    sink.emit(ev(1))
    wait_for(lambda: sink.dropped == 1)
    sink.close()
    assert victim.read_text() == "precious\n"


def test_jsonl_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    sink = plugin.load(IEventSink, "jsonl", path="/dev/null")
    with pytest.raises(OSError, match="not a regular file"):
        sink.start()
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    sink = plugin.load(IEventSink, "jsonl", path=str(fifo))
    with pytest.raises(OSError, match="cannot write events"):  # and never blocks on it
        sink.start()


def test_jsonl_creates_files_with_a_safe_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "events.jsonl"
        sink = plugin.load(IEventSink, "jsonl", path=str(path), rotate_bytes=4096, keep=2)
        sink.start()
        for i in range(100):
            sink.emit(ev(i))
        wait_for(lambda: sink.delivered == 100)
        sink.close()
        modes = {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("events.jsonl*")}
        assert modes == {0o640}
        custom = plugin.load(IEventSink, "jsonl", path=str(tmp_path / "b.jsonl"), mode=0o600)
        custom.start()
        custom.close()
        assert stat.S_IMODE((tmp_path / "b.jsonl").stat().st_mode) == 0o600
    finally:
        os.umask(old)
    with pytest.raises(PluginError, match="mode must be file permissions without o\\+w"):
        plugin.load(IEventSink, "jsonl", path=str(tmp_path / "c"), mode=0o666)


@pytest.mark.parametrize("fmt", ["rfc5424", "cef"])
def test_syslog_sends_one_message_per_event(fmt: str) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    sink = plugin.load(IEventSink, "syslog", address=f"127.0.0.1:{rx.getsockname()[1]}", format=fmt)
    sink.start()
    for i in range(3):
        sink.emit(ev(i))
    msgs = [rx.recv(65535).decode() for _ in range(3)]
    sink.close()
    rx.close()
    assert all(m.startswith("<110>1 ") for m in msgs)  # facility 13, severity 6
    if fmt == "cef":
        assert all("CEF:0|Jumping|jumping|1|SESSION_STATS|" in m for m in msgs)
    else:
        assert json.loads(msgs[2].split(" - ", 2)[2])["seq"] == 2


def test_syslog_bad_options_are_clear() -> None:
    with pytest.raises(PluginError, match="format must be rfc5424 or cef"):
        plugin.load(IEventSink, "syslog", format="xml")
    with pytest.raises(PluginError, match="facility"):
        plugin.load(IEventSink, "syslog", facility=99)


@pytest.mark.parametrize("name", ["jsonl", "syslog"])
def test_an_event_that_is_not_json_is_dropped_alone_and_the_sink_lives_on(
    name: str, tmp_path: Path
) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    opts = (
        {"path": str(tmp_path / "e.jsonl")}
        if name == "jsonl"
        else {"address": f"127.0.0.1:{rx.getsockname()[1]}"}
    )
    sink = plugin.load(IEventSink, name, **opts)
    sink.start()
    try:
        bad = dict(ev(1), extra=object())  # json.dumps raises TypeError
        for e in (ev(0), bad, ev(2)):
            sink.emit(e)
        wait_for(lambda: sink.delivered + sink.dropped == 3)
        assert (sink.delivered, sink.dropped) == (2, 1)
        sink.emit(ev(3))  # the writer thread is still alive
        wait_for(lambda: sink.delivered == 3)
    finally:
        sink.close()
        rx.close()
