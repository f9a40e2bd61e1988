"""
Make a test server on the root namespace's 127.0.0.1:PORT (a Kafka broker, an etcd member)
appear on 127.0.0.1:PORT inside a test network namespace, loopback to loopback.

A Kafka client connects to the bootstrap address and then to the address the broker
*advertises* (127.0.0.1:PORT), so the broker must be at the same address inside the
namespace as outside. The listening socket is created by a thread that has joined the
namespace (``setns``; a socket stays in the namespace it was created in); each accepted
connection is relayed to the broker by threads in the root namespace. Nothing listens on
or routes to any address outside 127.0.0.0/8.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

CLONE_NEWNET = 0x40000000


def _listen_in_namespace(ns: str, port: int) -> socket.socket:
    libc = ctypes.CDLL(None, use_errno=True)
    result: dict[str, object] = {}

    def work() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({ns})")
            finally:
                os.close(fd)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(64)
            result["sock"] = s
        except Exception as e:
            result["error"] = e

    t = threading.Thread(target=work)  # the thread (and its namespace) ends here
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["sock"]  # type: ignore[return-value]


class LoopbackBridge:
    """``with LoopbackBridge(ns, port): ...`` relays ns:127.0.0.1:port to 127.0.0.1:port."""

    def __init__(self, ns: str, port: int) -> None:
        self.port = port
        self.listener = _listen_in_namespace(ns, port)
        self.conns: list[socket.socket] = []
        self.closed = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inner, _ = self.listener.accept()
            except OSError:
                return
            try:
                outer = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                outer.settimeout(None)
            except OSError:  # the broker is down: so is the connection, as it would be
                inner.close()
                continue
            with self._lock:
                if self.closed:
                    inner.close()
                    outer.close()
                    return
                self.conns += [inner, outer]
            for a, b in ((inner, outer), (outer, inner)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            self.closed = True
            conns, self.conns = self.conns, []
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def __enter__(self) -> LoopbackBridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
