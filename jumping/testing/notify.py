"""
The receiving end of systemd's readiness protocol, for tests: what a node sends to
``$NOTIFY_SOCKET`` (READY=1, RELOADING=1, STOPPING=1, STATUS=...), observed without
systemd. Point ``NOTIFY_SOCKET`` at :attr:`NotifySocket.path` in the node's environment.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path


class NotifySocket:
    """A datagram socket at ``path``, writable by anyone (the node sends after it dropped
    root, as to systemd's own socket): ``wait("READY", "1")`` returns that message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o666)
        self.sock.settimeout(0.2)
        self.got: list[dict[str, str]] = []

    def wait(self, key: str, value: str, timeout: float = 20.0) -> dict[str, str]:
        """The first message (received so far or within ``timeout``) with ``key=value``,
        as a dict of its lines; taken out of :attr:`got`."""
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.got:
                if msg.get(key) == value:
                    self.got.remove(msg)
                    return msg
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {key}={value} within {timeout}s; got {self.got}")
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            lines = data.decode(errors="replace").splitlines()
            self.got.append(dict(line.split("=", 1) for line in lines if "=" in line))

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
