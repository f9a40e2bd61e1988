"""The lean epoll dispatch (jumping/service/dispatch.py) on real epoll reactors that are not
run: descriptors made readable with socket pairs, one ``doIteration`` at a time."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.task import Clock
from twisted.python import log

from jumping.service import dispatch


class Reader:
    """A readable end of a socket pair: counts its reads; ``fail`` makes doRead raise."""

    def __init__(self, lean: bool, fail: bool = False) -> None:
        self.a, self.b = socket.socketpair()
        self.a.setblocking(False)
        if lean:
            self.lean_dispatch = True
        self.fail = fail
        self.reads = 0
        self.lost: list[Any] = []

    def fileno(self) -> int:
        return self.a.fileno()

    def logPrefix(self) -> str:  # noqa: N802
        return "reader"

    def doRead(self) -> None:  # noqa: N802
        self.reads += 1
        self.a.recv(100)
        if self.fail:
            raise RuntimeError("boom")

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self.lost.append(reason)

    def close(self) -> None:
        self.a.close()
        self.b.close()


@pytest.fixture
def epoll() -> Iterator[EPollReactor]:
    r = EPollReactor()
    yield r
    while dispatch._users.get(id(r)):
        dispatch.uninstall(r)
    r._poller.close()


@pytest.fixture
def wrapped(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every selectable ``log.callWithLogger`` is called with (Twisted's own dispatch)."""
    seen: list[Any] = []
    real = log.callWithLogger

    def spy(logger: Any, func: Any, *args: Any, **kw: Any) -> Any:
        seen.append(logger)
        return real(logger, func, *args, **kw)

    monkeypatch.setattr(log, "callWithLogger", spy)
    return seen


def test_lean_selectables_skip_the_log_context_others_keep_it(
    epoll: EPollReactor, wrapped: list[Any]
) -> None:
    assert dispatch.install(epoll) and dispatch.active(epoll)
    lean, plain = Reader(lean=True), Reader(lean=False)
    try:
        epoll.addReader(lean)
        epoll.addReader(plain)
        lean.b.send(b"x")
        plain.b.send(b"y")
        epoll.doIteration(0)
        assert (lean.reads, plain.reads) == (1, 1)
        assert lean not in wrapped and plain in wrapped
        epoll.doIteration(0)  # nothing readable any more
        assert (lean.reads, plain.reads) == (1, 1)
    finally:
        epoll.removeAll()
        lean.close()
        plain.close()


def test_without_it_every_read_goes_through_the_log_context(
    epoll: EPollReactor, wrapped: list[Any]
) -> None:
    lean = Reader(lean=True)
    try:
        epoll.addReader(lean)
        lean.b.send(b"x")
        epoll.doIteration(0)
        assert lean.reads == 1 and lean in wrapped
    finally:
        epoll.removeAll()
        lean.close()


def test_a_failing_read_disconnects_the_selectable_as_twisted_does(epoll: EPollReactor) -> None:
    dispatch.install(epoll)
    bad = Reader(lean=True, fail=True)
    errors: list[Any] = []
    log.addObserver(errors.append)
    try:
        epoll.addReader(bad)
        bad.b.send(b"x")
        epoll.doIteration(0)
        assert bad.reads == 1 and len(bad.lost) == 1
        assert "boom" in str(bad.lost[0].value)
        assert bad not in epoll.getReaders()
        assert any(e.get("isError") for e in errors)  # logged, as callWithLogger's path does
    finally:
        log.removeObserver(errors.append)
        epoll.removeAll()
        bad.close()


def test_counted_installs_and_the_class_method_back(epoll: EPollReactor) -> None:
    assert dispatch.install(epoll) and dispatch.install(epoll)
    dispatch.uninstall(epoll)
    assert dispatch.active(epoll)  # one user left
    dispatch.uninstall(epoll)
    assert not dispatch.active(epoll) and "doIteration" not in epoll.__dict__
    assert epoll.doIteration.__func__ is EPollReactor.doPoll
    dispatch.uninstall(epoll)  # one too many: nothing happens
    assert not dispatch.active(epoll)


def test_other_reactors_and_other_replacements_are_left_alone(epoll: EPollReactor) -> None:
    clock, select = Clock(), SelectReactor()
    assert not dispatch.install(clock) and not dispatch.install(select)
    assert "doIteration" not in select.__dict__

    def theirs(timeout: float | None) -> None:
        pass

    epoll.doIteration = theirs  # type: ignore[method-assign]
    assert not dispatch.install(epoll)
    assert epoll.doIteration is theirs
    dispatch.uninstall(epoll)
    assert epoll.doIteration is theirs


def test_interrupted_poll_returns_other_errors_raise(epoll: EPollReactor) -> None:
    class Poller:
        def __init__(self, err: int) -> None:
            self.err = err

        def poll(self, timeout: float, maxevents: int) -> list[tuple[int, int]]:
            raise OSError(self.err, "poll")

    real = epoll._poller
    try:
        epoll._poller = Poller(errno.EINTR)
        dispatch.install(epoll)
        epoll.doIteration(0.01)  # returns: the reactor loops again
        dispatch.uninstall(epoll)
        epoll._poller = Poller(errno.EBADF)
        dispatch.install(epoll)
        with pytest.raises(OSError):
            epoll.doIteration(0.01)
    finally:
        epoll._poller = real


def test_a_descriptor_removed_by_an_earlier_event_is_skipped(epoll: EPollReactor) -> None:
    one, two = Reader(lean=True), Reader(lean=True)

    def reads_and_removes(me: Reader, other: Reader) -> Any:
        def do_read() -> None:
            Reader.doRead(me)
            epoll.removeReader(other)

        return do_read

    one.doRead = reads_and_removes(one, two)  # type: ignore[method-assign]
    two.doRead = reads_and_removes(two, one)  # type: ignore[method-assign]
    dispatch.install(epoll)
    try:
        epoll.addReader(one)
        epoll.addReader(two)
        one.b.send(b"x")
        two.b.send(b"y")
        epoll.doIteration(0)  # one poll reports both; the first read removes the other
        assert one.reads + two.reads == 1
    finally:
        epoll.removeAll()
        one.close()
        two.close()
