"""
The control socket: ``jumpctl status``, ``sessions``, ``terminate``, ``reload`` talk to a
running node over a UNIX stream socket (docs/operations.md#control-socket).

Protocol: line-delimited JSON. A request is one line, ``{"command": NAME, ...}``; the
answer is one line, ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": TEXT}``.
A connection may send several requests, one at a time. Chosen over AMP because the client
is a short synchronous command (``jumpctl`` needs no reactor, and ``socat``/``nc -U`` or
any language can talk to it), and because an answer (every session of a big gateway) is
not bounded by AMP's 64 KiB per value.

The socket is bound in the privileged start (as root, before twistd drops privileges),
mode 0600 (or 0660 with ``[control] mode``), owned by the user the node runs as: that user
and root can use it, nobody else. Limits: a request line of at most 64 KiB, at most 16
connections at once, 60 s of idle time per connection.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

from twisted.internet import protocol, tcp, unix
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

log = Logger()

MAX_REQUEST = 64 * 1024
MAX_CONNECTIONS = 16
IDLE_TIMEOUT = 60.0


class ControlError(Exception):
    """A request the node refuses; the message is the one line ``jumpctl`` prints."""


class ControlProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST
    transport: Any
    _idle: Any = None
    _refused = False

    def connectionMade(self) -> None:  # noqa: N802
        f = self.factory
        if len(f.connections) >= MAX_CONNECTIONS:
            f.refused += 1
            self._refused = True
            self._answer({"ok": False, "error": "too many control connections"})
            self.transport.loseConnection()
            return
        f.connections.add(self)
        self._idle = f.reactor.callLater(IDLE_TIMEOUT, self.transport.loseConnection)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.factory.connections.discard(self)
        if self._idle is not None and self._idle.active():
            self._idle.cancel()

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802
        self._answer({"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})
        self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        if self._refused:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(IDLE_TIMEOUT)
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                raise ControlError('a request is a JSON object with a "command" string')
            result = self.factory.handler(request)
            answer: dict[str, Any] = {"ok": True, "result": result}
        except ValueError as e:
            if isinstance(e, json.JSONDecodeError):
                answer = {"ok": False, "error": f"not JSON: {e.msg}"}
            else:
                answer = {"ok": False, "error": str(e)}
        except ControlError as e:
            answer = {"ok": False, "error": str(e)}
        except Exception as e:  # a bug answers an error, never takes the node down
            log.failure("control request {r!r}", r=line[:200])
            answer = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
        self._answer(answer)

    def _answer(self, answer: dict[str, Any]) -> None:
        self.sendLine(json.dumps(answer, separators=(",", ":"), default=str).encode())


class ControlFactory(protocol.ServerFactory):
    protocol = ControlProtocol

    def __init__(self, reactor: Any, handler: Any) -> None:
        self.reactor = reactor
        self.handler = handler
        self.connections: set[ControlProtocol] = set()
        self.refused = 0


def _in_use(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def listen(reactor: Any, path: Path, mode: int, owner: tuple[int, int] | None, handler: Any) -> Any:
    """Bind the control socket at ``path`` (replacing a stale one left by a node that
    died), ``mode``, owned by ``owner`` (uid, gid) if given. Raises ``ControlError`` with
    one line if it cannot."""
    path = Path(path)
    if not path.parent.is_dir():
        try:
            path.parent.mkdir(mode=0o750, parents=True)
            if owner is not None:
                os.chown(path.parent, *owner)
        except OSError as e:
            raise ControlError(f"control socket {path}: cannot create its directory: {e}") from None
    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"control socket {path}: exists and is not a socket")
        if _in_use(path):
            raise ControlError(f"control socket {path} is in use by a running node")
        path.unlink()
    factory = ControlFactory(reactor, handler)
    old = os.umask(0o177)  # no window in which the socket is open to others
    try:
        port = _Port(os.fsencode(path), factory, 16, mode, reactor)
        port.startListening()
    except Exception as e:
        raise ControlError(f"control socket {path}: cannot listen: {e}") from None
    finally:
        os.umask(old)
    if owner is not None:
        try:
            os.chown(path, *owner)
        except OSError as e:
            port.stopListening()
            raise ControlError(
                f"control socket {path}: cannot give it to the node's user: {e}"
            ) from None
    return port


class _Port(unix.Port):
    """Removes its socket file when it stops, if the node (maybe no longer root) may: a
    file left behind is replaced at the next start."""

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        try:
            os.unlink(self._bindPath)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EACCES, errno.EPERM):
                log.warn("control socket {p}: {e}", p=self._bindPath, e=e)
        tcp.Port.connectionLost(self, reason)
