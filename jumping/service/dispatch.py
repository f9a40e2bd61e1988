"""
A leaner epoll dispatch for the data plane's descriptors.

Twisted's :class:`~twisted.internet.epollreactor.EPollReactor` calls every ready
descriptor's ``doRead`` through ``log.callWithLogger``: a legacy logging context (the
``system`` key of old-style log events) pushed and popped around the call, six Python frames
and a dict copy per event. On a hot loop that is noise; on an idle tunnel it is not: after a
wake-up from a long ``epoll_wait`` the interpreter runs with cold caches, and measured on a
test VM those frames took about 100 µs before the TUN device's ``doRead`` was entered, on each
of the four wake-ups of a ping's round trip (docs/benchmarks.md, "Idle round-trip time").

:func:`install` gives the running reactor a ``doIteration`` (its epoll poll) that calls
``_doReadOrWrite`` directly for selectables that say ``lean_dispatch = True`` (the UDP
listener and client sockets, the TUN device) and keeps ``callWithLogger`` for every other
one, so Twisted's handling of a failing ``doRead`` (logged, the selectable disconnected) is
unchanged. Only an exact ``EPollReactor`` is touched; any other reactor (select, poll, a
test ``Clock``) is left alone. :func:`uninstall` restores the class's method once the last
user is gone.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.python import log

#: id(reactor) -> how many services use the lean dispatch on it
_users: dict[int, int] = {}


def _is_epoll_reactor(reactor: Any) -> bool:
    """Exactly Twisted's epoll reactor (a subclass may poll its own way)."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # not Linux
        return False
    return type(reactor) is EPollReactor


def lean_do_poll(reactor: Any) -> Any:
    """The replacement for ``reactor.doPoll``: same contract (``timeout`` in seconds, None
    to wait for ever; EINTR returns), same order of events."""
    poll = reactor._poller.poll
    selectables = reactor._selectables
    get = selectables.get
    drdw = reactor._doReadOrWrite
    call_with_logger = log.callWithLogger

    def do_poll(timeout: float | None) -> None:
        if timeout is None:
            timeout = -1
        try:
            events = poll(timeout, len(selectables))
        except OSError as e:
            if e.errno == errno.EINTR:
                return
            raise
        for fd, event in events:
            selectable = get(fd)
            if selectable is None:
                continue  # removed by an earlier event of this poll
            if getattr(selectable, "lean_dispatch", False):
                drdw(selectable, fd, event)
            else:
                call_with_logger(selectable, drdw, selectable, fd, event)

    do_poll.lean_dispatch = True  # type: ignore[attr-defined]
    return do_poll


def install(reactor: Any) -> bool:
    """Use the lean dispatch on ``reactor`` if it is Twisted's epoll reactor; True if it is
    in use. Counted: each call needs one :func:`uninstall`."""
    if not _is_epoll_reactor(reactor):
        return False
    key = id(reactor)
    if key not in _users:
        current = reactor.__dict__.get("doIteration")
        if current is not None and not getattr(current, "lean_dispatch", False):
            return False  # someone else replaced it: leave theirs
        reactor.doIteration = lean_do_poll(reactor)
    _users[key] = _users.get(key, 0) + 1
    return True


def uninstall(reactor: Any) -> None:
    """One user less; the last one gives the reactor its own ``doPoll`` back."""
    key = id(reactor)
    n = _users.get(key, 0)
    if n <= 0:
        return
    if n > 1:
        _users[key] = n - 1
        return
    del _users[key]
    current = reactor.__dict__.get("doIteration")
    if current is not None and getattr(current, "lean_dispatch", False):
        del reactor.doIteration


def active(reactor: Any) -> bool:
    """Whether ``reactor`` polls through the lean dispatch now."""
    return bool(getattr(reactor.__dict__.get("doIteration"), "lean_dispatch", False))
