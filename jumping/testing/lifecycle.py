"""
Checks of the plugin lifecycle (``jumping.interfaces``, "Lifecycle"): what a constructor
may not start, and what ``close()`` must stop.

:func:`footprint` records what the process has running (threads, open descriptors,
scheduled reactor calls); :func:`started_since` names what appeared between two records.
The conformance mixins use them around a plugin's constructor (nothing may appear) and
around ``start()``/``close()`` (the threads ``start()`` made are gone after ``close()``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Footprint:
    threads: frozenset[threading.Thread]
    fds: dict[int, str]
    delayed_calls: frozenset[Any]


def _fds() -> dict[int, str]:
    out: dict[int, str] = {}
    base = "/proc/self/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in names:
        try:
            out[int(name)] = os.readlink(f"{base}/{name}")
        except (OSError, ValueError):
            continue  # closed meanwhile (e.g. the descriptor of the listing itself)
    return out


def footprint(reactor: Any = None) -> Footprint:
    """What runs now: live threads, open descriptors, the reactor's pending delayed calls."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    return Footprint(
        frozenset(t for t in threading.enumerate() if t.is_alive()),
        _fds(),
        frozenset(reactor.getDelayedCalls()),
    )


def started_since(before: Footprint, after: Footprint) -> list[str]:
    """What ``after`` has that ``before`` did not: one line per thread, descriptor or call."""
    found = [f"thread {t.name!r}" for t in after.threads - before.threads if t.is_alive()]
    for fd, target in sorted(after.fds.items()):
        if before.fds.get(fd) != target and not target.startswith("/proc/"):
            found.append(f"descriptor {fd} -> {target}")
    found += [
        f"reactor call {c.func!r} in {c.getTime() - c.seconds():.3f} s"
        for c in after.delayed_calls - before.delayed_calls
        if c.active()
    ]
    return found


def threads_since(before: Footprint) -> list[threading.Thread]:
    """Threads alive now that were not in ``before``."""
    return [t for t in threading.enumerate() if t.is_alive() and t not in before.threads]
