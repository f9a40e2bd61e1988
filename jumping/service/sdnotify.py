"""
systemd's readiness protocol (``sd_notify``): one datagram of ``KEY=VALUE`` lines to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace). Without the variable (not under systemd ``Type=notify``) nothing is sent.

The node sends ``READY=1`` once its listeners are open and its ownership backend and sinks
are started, ``RELOADING=1`` … ``READY=1`` around a reload, ``STOPPING=1`` when it stops.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*lines: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``lines`` as one notification; True if a socket was configured and took it.

    Never raises: a missing or broken socket only means nobody listens."""
    env = os.environ if environ is None else environ
    where = env.get("NOTIFY_SOCKET", "")
    if not where or where[0] not in "/@":
        return False
    address = "\0" + where[1:] if where[0] == "@" else where
    message = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message, address)
    except OSError:
        return False
    return True


def ready(status: str) -> bool:
    return notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")


def reloading() -> bool:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")
