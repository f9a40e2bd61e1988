"""
The gateway core's ownership outputs (``Claim``, ``Renew``, ``Adopt``, ``Release``) run
against an :class:`~jumping.interfaces.IOwnershipBackend`, their answers fed back into the
core, and the watches that fence this node out (docs/DESIGN.md "Session takeover").

Fail closed: any change of an owned record that is not this node's own write (another
node's claim, a foreign write, a deletion, the backend losing its lease: ``None``) ends the
session with ``OWNERSHIP_LOST``; a split-brain marker (reason ``'conflict'``) with
``OWNERSHIP_CONFLICT``. This node's own renewals change the record's token too, and the
watch may report that change before the renewal answers: while a renewal is in flight,
tokens the watch reports are kept and judged when it answers (ours: the renewal's token;
anything newer: someone else wrote after us, lost).

Used by the node service and, unchanged, by the simulated cluster of the tests
(:class:`jumping.testing.sim.ClusterNet`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from jumping.core.gateway import GatewayCore, adoption_error
from jumping.core.outputs import Adopt, Claim, Output, Release, Renew
from jumping.errors import OwnershipConflict

log = Logger()


def ownership_error(f: Any) -> str:
    """What the core is told about a backend's failure, from the exception's type
    (IOwnershipBackend.claim): a refused compare-and-swap (``OwnershipConflict`` or a
    subclass) is a conflict; the backend being unreachable, or any other exception (a
    plugin bug), is unavailability."""
    return "conflict" if isinstance(f.value, OwnershipConflict) else "unavailable"


def check_adoption(
    backend: Any, a: Adopt
) -> defer.Deferred[tuple[int | None, str | None, str | None]]:
    """Step 1 of a takeover (:mod:`jumping.core.takeover`): read the session's record and
    check it against the authenticated initiator (:func:`~jumping.core.takeover.
    adoption_error`). Fires with ``(record token, None)`` or ``(None, error)``; never
    errbacks; the third item is the record's owner node. Nothing is written: the claim
    waits for the client's proof of the keys."""

    def got(found: Any) -> tuple[int | None, str | None, str | None]:
        error = adoption_error(found, a.client_key, a.state_version, a.handshake_ts_ms)
        if error is not None:
            return (None, error, None)
        owner = found[0].get("owner")
        return (found[1], None, owner if isinstance(owner, str) else None)

    try:
        d = backend.get(a.session_id)
    except Exception as e:  # a backend bug must not take the node down
        return defer.succeed((None, f"unavailable:{type(e).__name__}", None))
    return d.addCallbacks(got, lambda f: (None, ownership_error(f), None))


class OwnershipDriver:
    """
    :param backend: the ``IOwnershipBackend`` (None: every request is ``unavailable``).
    :param core: returns the gateway core now serving (None while not serving).
    :param run: executes the core's outputs (the service's output executor).
    :param now: the clock the core runs on.
    """

    def __init__(
        self,
        backend: Any,
        core: Callable[[], Any],
        run: Callable[[Iterable[Output]], None],
        now: Callable[[], float],
    ) -> None:
        self.backend = backend
        self._core = core
        self._run = run
        self._now = now
        self.watches: dict[str, Any] = {}  # session id -> the backend's watch
        self._renewing: dict[str, list[int]] = {}  # session id -> tokens seen meanwhile
        self.renews_skipped = 0

    def gateway(self) -> GatewayCore | None:
        core = self._core()
        return core if isinstance(core, GatewayCore) else None

    def execute(self, out: Output) -> None:
        t = type(out)
        if t is Claim:
            self.claim(out)  # type: ignore[arg-type]
        elif t is Renew:
            self.renew(out)  # type: ignore[arg-type]
        elif t is Adopt:
            self.adopt(out)  # type: ignore[arg-type]
        elif t is Release:
            self.release(out)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ requests
    def claim(self, c: Claim) -> None:
        core, backend = self.gateway(), self.backend
        if core is None:
            return
        if backend is None:
            self._run(core.claimed(self._now(), c.session_id, None, "unavailable"))
            return

        def ok(token: int) -> None:
            self.watch(c.session_id)
            self._answer("claimed", c.session_id, token, None)

        def failed(f: Any) -> None:
            log.warn("ownership claim for {sid} failed: {err}", sid=c.session_id, err=f.value)
            self._answer("claimed", c.session_id, None, ownership_error(f))

        backend.claim(c.session_id, dict(c.record), c.token).addCallbacks(ok, failed)

    def renew(self, r: Renew) -> None:
        core, backend = self.gateway(), self.backend
        if core is None or backend is None:
            return
        sid = r.session_id
        if sid in self._renewing:
            self.renews_skipped += 1  # one at a time; the next rekey renews again
            return
        self._renewing[sid] = []

        def ok(token: int) -> None:
            seen = self._renewing.pop(sid, [])
            self._answer("renewed", sid, token, None)
            later = [t for t in seen if t > token]
            if later:  # someone wrote after our renewal
                self._lost(sid, later[-1], None)

        def failed(f: Any) -> None:
            self._renewing.pop(sid, None)
            log.warn("ownership renew for {sid} failed: {err}", sid=sid, err=f.value)
            self._answer("renewed", sid, None, ownership_error(f))

        backend.renew(sid, r.token, dict(r.record)).addCallbacks(ok, failed)

    def adopt(self, a: Adopt) -> None:
        core = self.gateway()
        if core is None:
            return
        if self.backend is None:
            self._run(core.adoption_checked(self._now(), a.session_id, None, "unavailable"))
            return

        def done(result: tuple[int | None, str | None, str | None]) -> None:
            token, error, owner = result
            if error is not None:
                log.info("takeover of {sid} refused: {e}", sid=a.session_id, e=error)
            core = self.gateway()
            if core is not None:
                self._run(core.adoption_checked(self._now(), a.session_id, token, error, owner))

        check_adoption(self.backend, a).addCallback(done).addErrback(
            lambda f: log.failure("takeover of {sid}", f, sid=a.session_id)
        )

    def release(self, r: Release) -> None:
        w = self.watches.pop(r.session_id, None)
        if w is not None:
            w.cancel()
        self._renewing.pop(r.session_id, None)
        if self.backend is not None and r.token is not None:
            self.backend.release(r.session_id, r.token).addErrback(
                lambda f: log.warn("release {sid}: {e}", sid=r.session_id, e=f.value)
            )

    def _answer(self, method: str, sid: str, token: int | None, error: str | None) -> None:
        core = self.gateway()
        if core is not None:
            self._run(getattr(core, method)(self._now(), sid, token, error))

    # ------------------------------------------------------------------ fencing
    def watch(self, session_id: str) -> None:
        old = self.watches.pop(session_id, None)
        if old is not None:
            old.cancel()
        if self.backend is not None:
            w = self.backend.watch(session_id, self._changed)
            if not getattr(w, "inert", False):
                # a watch that can never fire (a store of one writer) is not kept: 100 000
                # sessions would hold 100 000 table entries for nothing (issue 18)
                self.watches[session_id] = w

    def _changed(self, sid: str, token: int | None, reason: str | None = None) -> None:
        core = self.gateway()
        if core is None:
            return
        s = core.sessions.get(bytes.fromhex(sid))
        if s is None or s.owner_token is None or (token is not None and token == s.owner_token):
            return
        seen = self._renewing.get(sid)
        if seen is not None and token is not None and reason is None:
            seen.append(token)  # perhaps our own renewal: decided when it answers
            return
        self._lost(sid, token, reason)

    def _lost(self, sid: str, token: int | None, reason: str | None) -> None:
        core = self.gateway()
        if core is None:
            return
        s = core.sessions.get(bytes.fromhex(sid))
        if s is None or s.owner_token is None:
            return
        w = self.watches.pop(sid, None)
        if w is not None:
            w.cancel()
        self._renewing.pop(sid, None)
        log.warn("ownership of {sid} lost (token {old} -> {new}, {why})", sid=sid,
                 old=s.owner_token, new=token, why=reason or "changed")  # fmt: skip
        now = self._now()
        if reason == "conflict":
            self._run(core.claimed(now, sid, None, "split_brain"))
        else:
            self._run(core.ownership_lost(now, sid))
