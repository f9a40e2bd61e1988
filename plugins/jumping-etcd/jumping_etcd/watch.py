"""
The etcd backend's watch: one prefix watch stream per node, read on its own thread, whose
events reach the ``watch`` callbacks on the reactor thread.

- :meth:`SessionWatch.loop` (the thread) posts one streaming ``/v3/watch`` over the whole
  prefix to one member, from the last revision seen; the stream asks for progress
  notifications, requires a leader (a member that loses its leader cancels it) and has a
  read timeout. A stream that breaks, is cancelled or times out is reopened on the next
  member from the same revision, so nothing in between is missed; a stream answered with
  a compaction is reopened from the compaction revision and the owned sessions are
  re-read (:meth:`SessionWatch.resync`).
- :meth:`SessionWatch.on_events` (reactor) dispatches each event: this node's heartbeat
  goes to ``on_heartbeat`` (the lease deadline, :mod:`jumping_etcd.liveness`); a session's
  put calls its callbacks with the new token, a delete with ``None``, a split-brain marker
  with ``None`` and reason ``'conflict'``. A write the node did itself (its nonce) is
  delivered but not remembered as a foreign change.
- :class:`_Watch` is the handle ``watch()`` returns (``cancel()``).

The session state the watch reads and updates (``interest``: session id → :class:`_Own`)
is the facade's (:mod:`jumping_etcd.backend`).
"""

from __future__ import annotations

import inspect
import json
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from jumping_etcd.client import Cluster, b64, is_token_error, short, url
from jumping_etcd.envelope import decode, heartbeat_seq, prefix_end, session_of

# the plugin's log lines keep the namespace they had before the backend was split up
log = Logger(namespace="jumping_etcd.backend")


class _Own:
    """What this node knows about one session it claims or owns (bounded by max_sessions)."""

    __slots__ = ("token", "pending", "nonces", "changed")

    def __init__(self) -> None:
        self.token: int | None = None
        self.pending = 0
        self.nonces: deque[str] = deque(maxlen=4)
        # last foreign change seen by the watch: (revision, token or None, reason or None)
        self.changed: tuple[int, int | None, str | None] | None = None


class _Watch:
    def __init__(self, owner: SessionWatch, session_id: str, callback: Callable[..., Any]):
        self.owner, self.session_id, self.callback = owner, session_id, callback
        self.active = True
        try:
            inspect.signature(callback).bind(session_id, None, None)
            self.with_reason = True
        except (TypeError, ValueError):
            self.with_reason = False

    def deliver(self, session_id: str, token: int | None, reason: str | None) -> None:
        if not self.active:
            return
        try:
            if self.with_reason:
                self.callback(session_id, token, reason)
            else:
                self.callback(session_id, token)
        except Exception:
            log.failure("etcd ownership watch callback for {sid}", sid=session_id)

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self.owner.cancelled(self)


class SessionWatch:
    """
    :param cluster: the members.
    :param prefix: the key prefix watched (sessions, markers, heartbeats).
    :param heartbeat_key: this node's heartbeat key.
    :param interval: the keep-alive period (a heartbeat arrives that often).
    :param stop: set when the node stops (ends :meth:`loop`).
    :param reactor: ``callFromThread`` and ``callLater``.
    :param interest: the facade's sessions (id → :class:`_Own`), read and updated here.
    :param on_heartbeat: called (reactor) with the sequence number of each heartbeat of
        this node the stream delivers.
    :param read: ``read(session_id)`` → Deferred of ``(record, token)`` or None (the
        facade's ``get``), for :meth:`resync`.
    :param on_unwatched: called with a session id when its last callback is cancelled.
    """

    def __init__(
        self,
        cluster: Cluster,
        prefix: str,
        heartbeat_key: str,
        interval: float,
        stop: threading.Event,
        reactor: Any,
        interest: dict[str, _Own],
        on_heartbeat: Callable[[int], Any],
        read: Callable[[str], defer.Deferred[Any]],
        on_unwatched: Callable[[str], None],
    ) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.heartbeat_key = heartbeat_key
        self.interval = interval
        self.reactor = reactor
        self.interest = interest
        self.watchers: dict[str, list[_Watch]] = {}
        self.member = cluster.preferred  # index of the member the stream reads
        self.restarts = 0
        self._stop = stop
        self._on_heartbeat = on_heartbeat
        self._read = read
        self._on_unwatched = on_unwatched
        self._resp: Any = None

    # ------------------------------------------------------------------ callbacks
    def add(self, session_id: str, callback: Callable[..., Any]) -> _Watch:
        """A callback for ``session_id``; a foreign change seen between the claim and now
        is delivered to it at once (on the next reactor turn)."""
        w = _Watch(self, session_id, callback)
        self.watchers.setdefault(session_id, []).append(w)
        st = self.interest.get(session_id)
        if st is not None and st.changed is not None and st.token is not None:
            rev, token, reason = st.changed
            if rev > st.token:  # changed between our claim and this registration
                self.reactor.callLater(0, w.deliver, session_id, token, reason)
        return w

    def cancelled(self, w: _Watch) -> None:
        lst = self.watchers.get(w.session_id, [])
        if w in lst:
            lst.remove(w)
        if not lst:
            self.watchers.pop(w.session_id, None)
            self._on_unwatched(w.session_id)

    def deliver_all(self, reason: str) -> None:
        """Every callback of every session, with ``None`` and ``reason``."""
        for sid, ws in list(self.watchers.items()):
            for w in list(ws):
                w.deliver(sid, None, reason)

    # ------------------------------------------------------------------ dispatch (reactor)
    def on_events(self, events: list[dict[str, Any]]) -> None:
        hb = b64(self.heartbeat_key)
        for ev in events:
            kv = ev["kv"]
            if kv["key"] == hb:
                seq = heartbeat_seq(kv)
                if seq is not None:
                    self._on_heartbeat(seq)
                continue
            sid, marker = session_of(self.prefix, kv["key"])
            if marker and ev.get("type") == "DELETE":
                continue
            st = self.interest.get(sid)
            ws = self.watchers.get(sid)
            if st is None and not ws:
                continue
            rev = int(kv["mod_revision"])
            reason: str | None = None
            own = False
            token: int | None = None
            if marker:
                reason = "conflict"
            elif ev.get("type") != "DELETE":
                env = decode(kv)
                own = st is not None and env.get("w") in st.nonces
                token = rev
            if st is not None and not own:
                st.changed = (rev, token, reason)
            for w in list(ws or ()):
                w.deliver(sid, token, reason)

    def resync(self) -> None:
        """The watch history was compacted under us: re-read what we own."""
        for sid, st in list(self.interest.items()):
            if st.token is None:
                continue
            mine = st.token

            def check(cur: Any, sid: str = sid, mine: int = mine) -> None:
                token = None if cur is None else cur[1]
                if token != mine:
                    for w in list(self.watchers.get(sid, ())):
                        w.deliver(sid, token, None)

            self._read(sid).addCallbacks(check, lambda f: None)

    def stalled(self, stall_after: float) -> None:
        """No heartbeat came back for ``stall_after`` seconds: the stream is dead."""
        log.warn("etcd: watch on {u} delivered no heartbeat for {s:.1f} s: reopening it "
                 "on another member", u=url(self.cluster.endpoints[self.member]),
                 s=stall_after)  # fmt: skip
        self.close_stream()

    # ------------------------------------------------------------------ the stream (thread)
    def close_stream(self) -> None:
        """Break the current stream (any thread): :meth:`loop` reopens it elsewhere."""
        resp = self._resp
        if resp is not None:
            try:
                import socket

                sock = socket.fromfd(resp.raw._fp.fileno(), socket.AF_INET, socket.SOCK_STREAM)
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except Exception:
                pass
            try:
                resp.close()
            except Exception:
                pass

    def loop(self, revision: int) -> None:
        """The watch thread, from ``revision`` on, until ``stop``."""
        cluster = self.cluster
        n = len(cluster.endpoints)
        req = {"key": b64(self.prefix), "range_end": b64(prefix_end(self.prefix)),
               "progress_notify": True}  # fmt: skip
        # heartbeats arrive every interval: a stream quiet for longer than this is dead
        read_timeout = 2 * self.interval + cluster.timeout
        # require a leader: a member that loses its leader cancels the stream
        headers = {"Grpc-Metadata-hasleader": "true"}
        while not self._stop.is_set():
            i = self.member
            c = cluster.client(i)
            try:
                auth = cluster.headers(i)
                resp = c.session.post(
                    c.get_url("watch"), json={"create_request": {**req, "start_revision": str(revision)}},
                    stream=True, timeout=(cluster.timeout, read_timeout), headers={**headers, **auth},
                )  # fmt: skip
                self._resp = resp
                if resp.status_code != 200:
                    if auth and is_token_error(OSError(resp.text)):
                        cluster.forget_token(i, auth["Authorization"])
                    raise OSError(f"HTTP {resp.status_code} {resp.text[:200]}")
                for line in resp.iter_lines():
                    if self._stop.is_set():
                        return
                    if not line:
                        continue
                    res = json.loads(line).get("result")
                    if not isinstance(res, dict):
                        if auth and is_token_error(OSError(str(line))):
                            cluster.forget_token(i, auth["Authorization"])
                        raise OSError(f"watch error: {line[:200]!r}")
                    if res.get("compact_revision") and int(res["compact_revision"]) > revision:
                        revision = int(res["compact_revision"])
                        self.reactor.callFromThread(self.resync)
                        break
                    if res.get("canceled"):
                        raise OSError(f"watch canceled: {res.get('cancel_reason', '')}")
                    events = res.get("events")
                    if events:
                        revision = max(int(e["kv"]["mod_revision"]) for e in events) + 1
                        self.reactor.callFromThread(self.on_events, events)
            except Exception as e:  # stream broke: resume from `revision` on the next member
                if self._stop.is_set():
                    return
                log.debug("etcd watch on {u}: {e}", u=url(cluster.endpoints[i]), e=short(e))
            self.restarts += 1
            self.member = (i + 1) % n
            self._stop.wait(0.2)
