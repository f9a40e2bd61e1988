"""The control socket's protocol and file handling, on the real reactor with a real UNIX
socket (the commands against running twistd nodes: tests/integration/test_control.py)."""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from jumping import ctl
from jumping.errors import JumpingError
from jumping.service import control


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A UNIX socket path must be short (108 bytes): not pytest's tmp_path."""
    d = Path(tempfile.mkdtemp(prefix="jctl"))
    try:
        yield d
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def _handler(request: dict[str, Any]) -> Any:
    if request["command"] == "echo":
        return request
    if request["command"] == "boom":
        raise RuntimeError("a bug")
    raise control.ControlError(f"unknown command {request['command']!r}")


def _raw(path: Path, data: bytes) -> dict[str, Any]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    s.sendall(data)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return json.loads(buf)


@pytest_twisted.ensureDeferred
async def test_requests_answers_and_refusals(short_dir: Path) -> None:
    path = short_dir / "n.sock"
    port = control.listen(reactor, path, 0o600, None, _handler)
    try:
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600

        def calls() -> list[Any]:
            out: list[Any] = [ctl.request(path, {"command": "echo", "x": [1, "é"]})]
            for payload in ({"command": "nope"}, {"command": "boom"}):
                try:
                    ctl.request(path, payload)
                except JumpingError as e:
                    out.append(str(e))
            out.append(_raw(path, b"not json\n"))
            out.append(_raw(path, b'["a list"]\n'))
            out.append(_raw(path, b"x" * (control.MAX_REQUEST + 10) + b"\n"))
            return out

        echo, unknown, bug, bad, shape, long = await threads.deferToThread(calls)
        assert echo == {"command": "echo", "x": [1, "é"]}
        assert unknown == "unknown command 'nope'"
        assert bug == "internal error: RuntimeError: a bug"
        assert bad["ok"] is False and bad["error"].startswith("not JSON")
        assert shape == {"ok": False, "error": 'a request is a JSON object with a "command" string'}
        assert long == {"ok": False, "error": f"request longer than {control.MAX_REQUEST} bytes"}
    finally:
        await port.stopListening()
    assert not path.exists(), "the socket file is removed when the node stops"


@pytest_twisted.ensureDeferred
async def test_a_stale_socket_is_replaced_a_live_one_refused(short_dir: Path) -> None:
    path = short_dir / "n.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a node that was killed
    port = control.listen(reactor, path, 0o600, None, _handler)
    try:
        assert await threads.deferToThread(ctl.request, path, {"command": "echo"})
        with pytest.raises(control.ControlError, match="is in use by a running node"):
            control.listen(reactor, path, 0o600, None, _handler)
    finally:
        await port.stopListening()
    other = short_dir / "file"
    other.write_text("not a socket")
    with pytest.raises(control.ControlError, match="exists and is not a socket"):
        control.listen(reactor, other, 0o600, None, _handler)
    assert other.read_text() == "not a socket", "never deleted"


def test_client_errors_are_one_line(short_dir: Path) -> None:
    with pytest.raises(JumpingError, match=r"no such control socket \(is the node running\?\)"):
        ctl.request(short_dir / "missing.sock", {"command": "status"})
    dead = short_dir / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dead))
    s.close()
    with pytest.raises(JumpingError, match=r"the node is not running \(stale control socket\)"):
        ctl.request(dead, {"command": "status"})
    if os.geteuid() == 0:
        return  # root may connect to any socket: the permission case runs as nobody elsewhere
    locked = short_dir / "locked.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(locked))
    s.listen(1)
    os.chmod(locked, 0)
    try:
        with pytest.raises(JumpingError, match="permission denied"):
            ctl.request(locked, {"command": "status"})
    finally:
        s.close()
