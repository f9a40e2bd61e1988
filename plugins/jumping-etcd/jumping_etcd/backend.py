"""
``etcd`` ownership backend: who owns which session, cluster-wide, on a real etcd v3 cluster
(docs/protocol.md, "Cluster ownership").

- One lease per node (TTL ``ttl`` seconds), kept alive by a dedicated thread every
  ``ttl / 3``. Every session key the node owns is attached to it, so when the node dies its
  sessions are freed by etcd within the TTL.
- One key per session, ``<prefix><session_id>``, value a JSON envelope ``{"v": 1, "node":
  owner node_id, "op": "claim"|"renew"|"conflict", "w": write nonce, "record": {...}}``.
- ``claim`` is a transaction comparing the key's ``create_revision == 0`` (new session) or
  ``mod_revision == expected_token`` (hand-over); ``renew``/``release`` compare
  ``mod_revision == token``. The key's ``mod_revision`` after the put is the fencing token:
  it changes on every write by anyone, so a stale holder's next mutation fails.
- One prefix watch stream per node (a thread) feeds every ``watch`` callback on the reactor
  thread.
- Fail closed: a renewal counts only once this node's own watch has delivered it back
  (:mod:`jumping_etcd.liveness`): each keep-alive round renews the lease and writes the
  node's heartbeat key on *one* member, both answers in the same raft term (the write needs
  the quorum: a leader that lost its quorum keeps renewing leases until it steps down), and
  the deadline moves only when the watch delivers that heartbeat, after every event before
  it. A watch whose member froze or was cut from the quorum thus stops the deadline; a
  heartbeat unseen for ``stall_after`` seconds reopens the stream on another member (from
  the last revision seen, so a missed takeover is still reported); the stream also has a
  read timeout, asks for progress notifications and requires a leader. The reactor checks
  the deadline (send time of the last counted renewal + TTL, minus a guard of
  min(1 s, TTL/5)) every ``check_interval``; once it passes (quorum lost, etcd unreachable,
  lease revoked, the watch dead) the backend becomes un``healthy``, forgets every token,
  and calls every watch callback with ``None`` (reason ``'lease_lost'``) — before etcd
  itself can expire the lease and let another node claim the sessions. It then keeps
  trying to grant a new lease; once it has one it is ``healthy`` again. The sessions it
  reported lost stay lost here; the old lease is left to lapse (not revoked), so that
  their records outlive a short quorum loss by up to a TTL and their clients resume them
  on other gateways (:mod:`jumping_etcd.lease`).
- Split brain (docs/protocol.md: two claims for one session with the same ``state_version``).
  Two claims cannot both succeed: etcd serialises transactions, and each compares the key's
  revision, so exactly one commits. The loser sees the winner's record in the failure branch
  of the same transaction; if it carries the same ``state_version`` from another node, the
  loser writes the marker key ``<key>.conflict`` (own lease, 2 TTLs) and fails with
  :class:`OwnershipConflict`; the winner's watch fires with ``None`` and reason
  ``'conflict'``. Both sides terminate with ``OWNERSHIP_CONFLICT``; claims of that id fail
  while the marker lives.

This module is the facade (:class:`EtcdOwnership`, ``IOwnershipBackend``: claim, renew,
release, get, watch, start, close); it composes the parts, each readable and tested alone:
:mod:`jumping_etcd.envelope` (key layout and record encoding, pure functions),
:mod:`jumping_etcd.lease` (the lease, its keep-alive thread, its check, loss and regain),
:mod:`jumping_etcd.liveness` (the lease deadline), :mod:`jumping_etcd.watch` (the watch
stream and the dispatch of its events to the callbacks) and :mod:`jumping_etcd.client`
(HTTP, TLS and authentication to the members).

Blocking etcd calls run in a bounded :class:`~twisted.python.threadpool.ThreadPool`
(``threads`` workers, at most ``max_pending`` calls queued or running), each bounded by
``timeout`` seconds per member tried.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from jumping.errors import OwnershipConflict, OwnershipUnavailable
from jumping.interfaces import IOwnershipBackend
from jumping_etcd.client import Cluster, b64, make_security, parse_endpoints, url
from jumping_etcd.envelope import (
    HEARTBEAT,  # noqa: F401  (importable from here, as before the split)
    MARKER,
    NODE,
    current,
    decode,
    encode,
    heartbeat_key,
    session_key,
)
from jumping_etcd.lease import LeaseKeeper
from jumping_etcd.liveness import LeaseDeadline
from jumping_etcd.watch import SessionWatch, _Own, _Watch

log = Logger()


@implementer(IOwnershipBackend)
class EtcdOwnership:
    """
    :param str node_id: this gateway's id (set by the node from its configuration).
    :param endpoints: ``'http://127.0.0.1:2379,...'`` or a list of URLs: the cluster members.
    :param int ttl: lease TTL in seconds (2..3600): a dead or partitioned node's sessions
        are freed after at most this long, and it stops serving them before that.
    :param float timeout: seconds per etcd request and member tried.
    :param str prefix: key prefix of the session records.
    :param int threads: worker threads for etcd requests.
    :param int max_pending: etcd requests queued or running at most; more fail at once with
        ``OwnershipUnavailable``.
    :param int max_sessions: sessions this node tracks at most.
    :param str ca_cert: PEM file of the CA that signed the members' certificates (https://
        endpoints; without it the system's CAs are used).
    :param str cert: PEM client certificate, for members run with ``--client-cert-auth``
        (with ``key``, a secret file: mode 0600, no symlink).
    :param str user: etcd user (etcd authentication, https:// only), with
        ``password_file``: a secret file holding its password on one line.
    :param clock: monotonic seconds for the lease deadlines (tests inject one).
    :raise ValueError: a bad option (one line naming it).

    Lifecycle (``jumping.interfaces``): the constructor only validates and builds; the
    lease, the thread pool, the keep-alive and watch threads and the lease check start in
    :meth:`start` (after twistd's fork and privilege drop), whose Deferred fails with
    ``OwnershipUnavailable`` when no member is reachable (the node refuses to start).
    """

    def __init__(
        self,
        node_id: str = "node",
        endpoints: Any = "http://127.0.0.1:2379",
        ttl: int = 5,
        timeout: float = 2.0,
        prefix: str = "/jumping/sessions/",
        threads: int = 8,
        max_pending: int = 10_000,
        max_sessions: int = 1_000_000,
        check_interval: float = 0.1,
        reactor: Any = None,
        clock: Callable[[], float] = time.monotonic,
        ca_cert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        user: str | None = None,
        password_file: str | None = None,
    ) -> None:
        if not isinstance(node_id, str) or not NODE.match(node_id):
            raise ValueError(f"etcd: node_id must match [A-Za-z0-9_.-]{{1,64}}, got {node_id!r}")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 2 <= ttl <= 3600:
            raise ValueError(f"etcd: ttl must be an integer number of seconds 2..3600, got {ttl!r}")
        if not isinstance(timeout, int | float) or not 0.05 <= timeout <= 60:
            raise ValueError(f"etcd: timeout must be 0.05..60 seconds, got {timeout!r}")
        if not isinstance(prefix, str) or not prefix.startswith("/") or not prefix.endswith("/"):
            raise ValueError(f"etcd: prefix must start and end with '/', got {prefix!r}")
        for name, v in (("threads", threads), ("max_pending", max_pending),
                        ("max_sessions", max_sessions)):  # fmt: skip
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"etcd: {name} must be a positive integer, got {v!r}")
        if not isinstance(check_interval, int | float) or not 0.01 <= check_interval <= ttl / 4:
            raise ValueError(f"etcd: check_interval must be 0.01..ttl/4 s, got {check_interval!r}")
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.node_id = node_id
        #: every gateway of the cluster uses the same etcd: sessions can be taken over
        self.shared = True
        self.ttl = ttl
        self.prefix = prefix
        self.max_pending = max_pending
        self.max_sessions = max_sessions
        eps = parse_endpoints(endpoints)
        security = make_security(eps, ca_cert, cert, key, user, password_file)
        self.cluster = Cluster(eps, float(timeout), security)
        #: seconds before etcd's own expiry at which we give the lease up (fail closed early)
        self.guard = min(1.0, ttl / 5)
        #: a heartbeat unseen this long: the watch stream is dead, reopen it elsewhere
        self.stall_after = max(0.3, min(0.75, ttl / 4))
        self.clock = clock
        self.deadline = LeaseDeadline(ttl, self.guard, self.stall_after, clock)
        self._heartbeat_key = heartbeat_key(prefix, node_id)

        self._epoch = 0
        self._inflight = 0
        self._started = False
        self._closed = False
        self._interest: dict[str, _Own] = {}
        self._chains: dict[str, defer.Deferred[None]] = {}  # session id -> its last call
        self._stop = threading.Event()
        self._check_interval = check_interval
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name=f"etcd-{node_id}")
        self._trigger: Any = None
        #: the watch stream and the watch callbacks (jumping_etcd.watch)
        self.watcher = SessionWatch(
            self.cluster, prefix, self._heartbeat_key, ttl / 3, self._stop, reactor,
            self._interest, self.deadline.seen, self.get, self._forget,
        )  # fmt: skip
        #: the lease, its keep-alive and its check (jumping_etcd.lease)
        self.keeper = LeaseKeeper(
            self.cluster, node_id, ttl, self._heartbeat_key, self.deadline, self._stop,
            reactor.callFromThread, self._lost, lambda: self.watcher.stalled(self.stall_after),
            self._unreachable, clock,
        )  # fmt: skip
        self._checker = LoopingCall(self.keeper.check)
        self._checker.clock = reactor

    # what the node, `jumping ctl` and the tests read, kept by the parts
    @property
    def healthy(self) -> bool:
        """False until start() has a lease, and from a lease loss until the next lease."""
        return self.keeper.healthy

    @property
    def lost(self) -> int:
        """Times the lease was lost (everything reported lost)."""
        return self.keeper.lost

    @property
    def keepalive_failures(self) -> int:
        return self.keeper.keepalive_failures

    @property
    def interval(self) -> float:
        """The keep-alive period (TTL / 3)."""
        return self.keeper.interval

    @property
    def _lease_id(self) -> int:
        return self.keeper.lease_id

    @property
    def watch_restarts(self) -> int:
        return self.watcher.restarts

    @property
    def watch_member(self) -> int:
        """Index of the member the watch reads."""
        return self.watcher.member

    def start(self) -> defer.Deferred[None]:
        """Grant this node's lease (in the pool, off the reactor), then start the keep-alive
        and watch threads and the lease check. Fails with ``OwnershipUnavailable`` (one
        line naming the members) when the cluster is unusable."""
        if self._started or self._closed:
            return defer.succeed(None)
        self._started = True
        self.pool.start()
        self._trigger = self.reactor.addSystemEventTrigger("during", "shutdown", self._stop_threads)

        def granted(lease: tuple[int, int, float]) -> None:
            lease_id, revision, sent = lease
            if self._closed:  # closed while granting: give the lease back at once
                self.keeper.lease_id = lease_id
                self.pool.callInThread(self.keeper.revoke_quietly, lease_id)
                return
            self.keeper.started(lease_id, sent)
            node_id = self.node_id
            threading.Thread(target=self.keeper.loop, name=f"etcd-keepalive-{node_id}",
                             daemon=True).start()  # fmt: skip
            threading.Thread(target=self.watcher.loop, args=(revision + 1,),
                             name=f"etcd-watch-{node_id}", daemon=True).start()  # fmt: skip
            self._checker.start(self._check_interval, now=False)

        def refused(f: Any) -> None:
            f.trap(OwnershipUnavailable)
            eps = ", ".join(url(ep) for ep in self.cluster.endpoints)
            raise OwnershipUnavailable(f"etcd: cannot start, cluster {eps} unusable: {f.value}")

        d = deferToThreadPool(self.reactor, self.pool, self.keeper.grant)
        return d.addCallbacks(granted, refused)

    # ------------------------------------------------------------------ helpers
    def _key(self, session_id: str) -> str:
        return session_key(self.prefix, session_id)

    def _value(self, op: str, nonce: str, record: Any) -> str:
        return encode(self.node_id, op, nonce, record)

    def _run(
        self, fn: Callable[..., Any], *args: Any, key: str | None = None
    ) -> defer.Deferred[Any]:
        """Run ``fn(*args)`` in the pool. Calls with the same ``key`` (a session id) run one
        after the other, in the order they were made: a node's operations on one session
        take effect in program order (a get() made before a release() sees the record)."""
        if self._closed:
            return defer.fail(OwnershipUnavailable("etcd: backend closed"))
        if self._inflight >= self.max_pending:
            return defer.fail(
                OwnershipUnavailable(f"etcd: {self._inflight} requests in flight, refusing more")
            )
        self._inflight += 1
        result: defer.Deferred[Any] = defer.Deferred()
        finished: defer.Deferred[None] = defer.Deferred()
        gate = None
        if key is not None:
            gate = self._chains.get(key)
            self._chains[key] = finished

        def finish(r: Any) -> None:
            self._inflight -= 1
            if key is not None and self._chains.get(key) is finished:
                del self._chains[key]
            finished.callback(None)
            result.callback(r)

        def start(_: Any = None) -> None:
            deferToThreadPool(self.reactor, self.pool, fn, *args).addBoth(finish)

        if gate is None:
            start()
        else:
            gate.addCallback(start)
        return result

    def _txn(self, key: str, compare: dict[str, Any], success: dict[str, Any]) -> Any:
        k = b64(key)
        return self.cluster.call("kv/txn", {
            "compare": [{"key": k, "result": "EQUAL", **compare}],
            "success": [success],
            "failure": [{"request_range": {"key": k}}],
        })  # fmt: skip

    def _forget(self, session_id: str) -> None:
        st = self._interest.get(session_id)
        if st is not None and st.token is None and st.pending == 0:
            del self._interest[session_id]

    # ------------------------------------------------------------------ IOwnershipBackend
    def _checked(
        self, session_id: str, record: dict[str, Any], doing: str
    ) -> tuple[str, dict[str, Any]]:
        """The key and a JSON-clean copy of the record; raises if either is bad, or if the
        lease is lost (fail closed: no mutation without it)."""
        key = self._key(session_id)
        value_record = json.loads(json.dumps(record))
        if not self.healthy:
            if not self._lease_id:
                raise OwnershipUnavailable(f"etcd: no lease yet (start() not done), not {doing}")
            raise OwnershipUnavailable(f"etcd: lease lost, not {doing} (fail closed)")
        return key, value_record

    def claim(
        self, session_id: str, record: dict[str, Any], expected_token: int | None
    ) -> defer.Deferred[int]:
        try:
            key, value_record = self._checked(session_id, record, "claiming")
        except (ValueError, TypeError, OwnershipUnavailable) as e:
            return defer.fail(e)
        st = self._interest.get(session_id)
        if st is None:
            if len(self._interest) >= self.max_sessions:
                return defer.fail(OwnershipConflict("etcd: max_sessions sessions already tracked"))
            st = self._interest[session_id] = _Own()
        nonce = os.urandom(8).hex()
        st.nonces.append(nonce)
        st.pending += 1
        epoch = self._epoch
        d = self._run(self._claim_sync, key, self._value("claim", nonce, value_record), nonce,
                      expected_token, self._lease_id, value_record, key=session_id)  # fmt: skip

        def done(result: Any) -> Any:
            st.pending -= 1
            if isinstance(result, tuple) and result[0] == "ok":
                if epoch != self._epoch or self._interest.get(session_id) is not st:
                    self._forget(session_id)
                    raise OwnershipUnavailable(f"etcd: lease lost while claiming {session_id}")
                st.token = result[1]
                return result[1]
            self._forget(session_id)
            if isinstance(result, tuple):
                raise OwnershipConflict(result[1])
            return result  # a Failure (OwnershipUnavailable...)

        return d.addBoth(done)

    def _claim_sync(
        self, key: str, value: str, nonce: str, expected: int | None, lease: int, record: Any
    ) -> tuple[str, Any]:
        if expected is None:
            compare: dict[str, Any] = {"target": "CREATE", "create_revision": "0"}
        else:
            compare = {"target": "MOD", "mod_revision": str(int(expected))}
        put = {"request_put": {"key": b64(key), "value": value, "lease": str(lease)}}
        mk = b64(key + MARKER)
        r = self.cluster.call("kv/txn", {
            "compare": [
                {"key": b64(key), "result": "EQUAL", **compare},
                {"key": mk, "result": "EQUAL", "target": "CREATE", "create_revision": "0"},
            ],
            "success": [put],
            "failure": [{"request_range": {"key": b64(key)}}, {"request_range": {"key": mk}}],
        })  # fmt: skip
        if r.get("succeeded"):
            return ("ok", int(r["header"]["revision"]))
        responses = r.get("responses", [])
        if len(responses) > 1 and responses[1].get("response_range", {}).get("kvs"):
            return ("conflict", f"session {key}: split brain detected before, id burned")
        kv = current({"responses": responses[:1]})
        if kv is None:
            return ("conflict", f"session {key}: gone (stale token {expected})")
        env = decode(kv)
        if env.get("w") == nonce:  # a fail-over retry of our own committed write
            return ("ok", int(kv["mod_revision"]))
        owner = env.get("node", "?")
        theirs = env.get("record", {}).get("state_version")
        if (
            env.get("op") in ("claim", "renew")
            and owner != self.node_id
            and theirs is not None
            and theirs == record.get("state_version")
        ):
            self._mark_conflict(key, env)
            return ("conflict", f"session {key}: split brain with {owner} "
                                f"(same state_version {theirs}); both sides terminate")  # fmt: skip
        if expected is None:
            return ("conflict", f"session {key} is owned by {owner}")
        return ("conflict", f"session {key}: stale fencing token {expected}")

    def _mark_conflict(self, key: str, env: dict[str, Any]) -> None:
        """Write the split-brain marker ``<key>.conflict`` (if nobody did yet): the winner's
        watch fires with reason ``'conflict'``, so it terminates too. The marker has its own
        lease and expires after 2 TTLs; until then the session id cannot be claimed again.
        The winner's record is left as it is (the winner releases it when it terminates)."""
        try:
            lease = self.cluster.call("lease/grant", {"TTL": max(2 * self.ttl, 10), "ID": 0})["ID"]
            marker = {"conflict": True, "owner": env.get("node"), "detected_by": self.node_id,
                      "state_version": env.get("record", {}).get("state_version")}  # fmt: skip
            value = self._value("conflict", os.urandom(8).hex(), marker)
            mk = key + MARKER
            put = {"request_put": {"key": b64(mk), "value": value, "lease": str(lease)}}
            self._txn(mk, {"target": "CREATE", "create_revision": "0"}, put)
        except (OwnershipUnavailable, KeyError) as e:
            log.warn("etcd: could not mark split brain on {key}: {e}", key=key, e=e)

    def renew(self, session_id: str, token: int, record: dict[str, Any]) -> defer.Deferred[int]:
        try:
            key, value_record = self._checked(session_id, record, "renewing")
        except (ValueError, TypeError, OwnershipUnavailable) as e:
            return defer.fail(e)
        st = self._interest.get(session_id)
        if st is None or st.token is None or st.token != token:
            # tokens are only honoured by the backend that obtained them, in the lease epoch
            # they were obtained in: a node that lost its lease cannot resurrect a session
            return defer.fail(
                OwnershipConflict(f"session {session_id}: token {token} is no longer current")
            )
        nonce = os.urandom(8).hex()
        st.nonces.append(nonce)
        st.pending += 1
        epoch = self._epoch
        value = self._value("renew", nonce, value_record)
        put = {"request_put": {"key": b64(key), "value": value, "lease": str(self._lease_id)}}

        def call() -> tuple[str, Any]:
            r = self._txn(key, {"target": "MOD", "mod_revision": str(int(token))}, put)
            if r.get("succeeded"):
                return ("ok", int(r["header"]["revision"]))
            kv = current(r)
            if kv is not None and decode(kv).get("w") == nonce:
                return ("ok", int(kv["mod_revision"]))
            return ("conflict", f"session {session_id}: token {token} is no longer current")

        def done(result: Any) -> Any:
            st.pending -= 1
            if isinstance(result, tuple) and result[0] == "ok":
                if epoch != self._epoch or self._interest.get(session_id) is not st:
                    raise OwnershipUnavailable(f"etcd: lease lost while renewing {session_id}")
                if st.token == token:
                    st.token = result[1]
                return result[1]
            if isinstance(result, tuple):
                if st.token == token:
                    st.token = None
                    self._forget(session_id)
                raise OwnershipConflict(result[1])
            return result

        return self._run(call, key=session_id).addBoth(done)

    def release(self, session_id: str, token: int) -> defer.Deferred[None]:
        try:
            key = self._key(session_id)
        except ValueError as e:
            return defer.fail(e)
        st = self._interest.get(session_id)
        if st is not None and st.token == token:
            st.token = None
            self._forget(session_id)

        def call() -> None:
            self._txn(key, {"target": "MOD", "mod_revision": str(int(token))},
                      {"request_delete_range": {"key": b64(key)}})  # fmt: skip

        return self._run(call, key=session_id)

    def get(self, session_id: str) -> defer.Deferred[tuple[dict[str, Any], int] | None]:
        try:
            key = self._key(session_id)
        except ValueError as e:
            return defer.fail(e)

        def call() -> tuple[dict[str, Any], int] | None:
            r = self.cluster.call("kv/range", {"key": b64(key)})
            kvs = r.get("kvs")
            if not kvs:
                return None
            env = decode(kvs[0])
            return dict(env["record"]), int(kvs[0]["mod_revision"])

        return self._run(call, key=session_id)

    def watch(self, session_id: str, callback: Callable[..., Any]) -> _Watch:
        """
        ``callback(session_id, token_or_None)`` on the reactor thread after every write of
        the record (claim, renew, a foreign write: the new token), its deletion (release,
        lease expiry: ``None``), a split-brain marker (``None``), and when this node's lease
        is lost (``None`` for every watched session). Callbacks that accept a third
        argument also get the reason: ``None``, ``'conflict'`` or ``'lease_lost'``.
        """
        self._key(session_id)
        return self.watcher.add(session_id, callback)

    def close(self) -> defer.Deferred[None]:
        """Revoke the lease (frees every session of this node at once) and stop."""
        if self._closed:
            return defer.succeed(None)
        if not self._started:  # nothing granted, nothing running
            self._closed = self.keeper.closed = True
            return defer.succeed(None)
        lease = self._lease_id
        if lease:
            d = self._run(self.cluster.call, "kv/lease/revoke", {"ID": str(lease)})
        else:  # the grant is still under way: granted() gives it back
            d = defer.succeed(None)
        self._closed = self.keeper.closed = True
        if self._checker.running:
            self._checker.stop()
        self._stop.set()
        self.watcher.close_stream()

        def finish(r: Any) -> None:
            if isinstance(r, Exception) or hasattr(r, "getErrorMessage"):
                log.warn("etcd: lease revoke at close failed: {e}", e=getattr(r, "value", r))
            try:
                self.reactor.removeSystemEventTrigger(self._trigger)
            except (ValueError, KeyError):
                pass
            # ThreadPool.stop joins its workers: not on the reactor thread
            threading.Thread(target=self.pool.stop, daemon=True).start()

        return d.addBoth(finish)

    def _stop_threads(self) -> None:
        self._stop.set()
        self.watcher.close_stream()
        self.pool.stop()

    # ------------------------------------------------------------------ the parts' glue
    def _lost(self) -> None:
        """The lease keeper gave the lease up (reactor): forget every token, report every
        watched session lost."""
        self._epoch += 1
        self._interest.clear()
        self.watcher.deliver_all("lease_lost")

    def _unreachable(self, i: int) -> None:
        if i == self.watcher.member:  # the watch reads a member that does not answer
            self.watcher.close_stream()
