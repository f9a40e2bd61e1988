"""
The etcd backend's lease keeper: this node's one lease, kept alive, checked, lost and
regained (docs/protocol.md, "Cluster ownership"; the deadline itself is
:mod:`jumping_etcd.liveness`).

- :meth:`LeaseKeeper.grant` asks for a lease of ``ttl`` seconds (with authentication, it
  first logs in and reads under the prefix: etcd grants leases without a token).
- :meth:`LeaseKeeper.loop`, on a dedicated thread, runs a keep-alive round every
  ``ttl / 3`` (:meth:`LeaseKeeper.round`): on one member, the lease keep-alive and then the
  put of the node's heartbeat key, both answers in the same raft term
  (:meth:`LeaseKeeper.renew_on`); a member that does not answer costs the round's next one.
  The renewal counts only when the watch delivers the heartbeat back
  (:meth:`~jumping_etcd.liveness.LeaseDeadline.seen`, called by the watch).
- :meth:`LeaseKeeper.check`, on the reactor every ``check_interval``: past the deadline (or
  the lease revoked) the keeper becomes un``healthy`` and calls ``on_lost`` (the facade
  forgets every token and reports every watched session lost); a heartbeat unseen for
  ``stall_after`` calls ``on_stalled`` (the watch reopens its stream elsewhere).
- After a loss the loop keeps granting a new lease; once it has one it is, on the reactor,
  ``healthy`` again. The old lease is not revoked: nobody keeps it alive any more, so etcd
  lets it lapse within its TTL, and until then the records of the sessions reported lost
  stay readable. Their clients, told ``OWNERSHIP_LOST``, resume them on another gateway,
  whose takeover compares the record's revision as any hand-over does. Revoking it deleted
  those records at once: after a quorum loss of a few seconds (an etcd leader election on
  a loaded host) every takeover then found no record and every client of the cluster
  started a new session.

Every deadline is read from the injected ``clock`` (monotonic seconds): the tests drive it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from jumping.errors import OwnershipUnavailable
from jumping_etcd.client import Cluster, Unreachable, b64, url
from jumping_etcd.envelope import heartbeat_value
from jumping_etcd.liveness import LeaseDeadline

# the plugin's log lines keep the namespace they had before the backend was split up
log = Logger(namespace="jumping_etcd.backend")


class LeaseKeeper:
    """
    :param cluster: the members (:class:`~jumping_etcd.client.Cluster`).
    :param node_id: this node (written in its heartbeat).
    :param ttl: the lease TTL, seconds.
    :param heartbeat_key: this node's heartbeat key (:func:`~jumping_etcd.envelope.heartbeat_key`).
    :param deadline: the lease deadline the watch reports heartbeats to.
    :param stop: set when the node stops (ends :meth:`loop`, which waits on it).
    :param call_from_thread: runs a function on the reactor thread (``reactor.callFromThread``).
    :param on_lost: called on the reactor once the lease is given up.
    :param on_stalled: called on the reactor when the watch delivered no heartbeat for
        ``stall_after`` seconds.
    :param on_unreachable: called with a member's index when a keep-alive to it got no answer.
    :param clock: monotonic seconds (the deadline's clock).
    """

    def __init__(
        self,
        cluster: Cluster,
        node_id: str,
        ttl: int,
        heartbeat_key: str,
        deadline: LeaseDeadline,
        stop: threading.Event,
        call_from_thread: Callable[..., Any],
        on_lost: Callable[[], None],
        on_stalled: Callable[[], None],
        on_unreachable: Callable[[int], None],
        clock: Callable[[], float],
    ) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.ttl = ttl
        self.heartbeat_key = heartbeat_key
        self.deadline = deadline
        self.interval = ttl / 3  # keep-alive period
        self.clock = clock
        self._stop = stop
        self._call_from_thread = call_from_thread
        self._on_lost = on_lost
        self._on_stalled = on_stalled
        self._on_unreachable = on_unreachable
        self.lease_id = 0  # granted by grant()
        self.lease_gone = False  # a keep-alive answered that the lease does not exist
        self.need_lease = False  # lost: the loop grants a new one
        self.healthy = False  # until the first lease: no claim before it
        self.closed = False  # the backend is closing: no regain
        self.lost = 0  # times the lease was lost (everything reported lost)
        self.keepalive_failures = 0

    # ------------------------------------------------------------------ grant, revoke
    def grant(self) -> tuple[int, int, float]:
        """A new lease (blocking): its id, the revision it was granted at and the send time
        of the request that was granted. The lease runs a TTL at least from that send
        time, not from the first attempt's: members that did not answer before (a quorum
        that was just coming back, each costing up to its timeout) must not eat into it,
        or a lease granted after a long outage would be past its deadline at once and
        lost again, delaying every takeover by a keep-alive period."""
        if self.cluster.security.auth:
            # etcd grants leases without a token: log in and read under the prefix first,
            # so that a wrong password or a role without this prefix fails the start, not
            # the first claim
            self.cluster.call("kv/range", {"key": b64(self.heartbeat_key), "keys_only": True})
        n = len(self.cluster.endpoints)
        start = self.cluster.preferred
        errors = []
        for k in range(n):  # one member per attempt, as Cluster.call, timed one by one
            i = (start + k) % n
            sent = self.clock()
            try:
                r = self.cluster.call_on(i, "lease/grant", {"TTL": self.ttl, "ID": 0})
            except Unreachable as e:
                errors.append(str(e))
                continue
            if r.get("error") or "ID" not in r:
                raise OwnershipUnavailable(f"etcd: lease grant refused: {r.get('error', r)}")
            self.cluster.preferred = i
            return int(r["ID"]), int(r["header"]["revision"]), sent
        raise Unreachable("etcd: no member reachable (" + "; ".join(errors) + ")")

    def started(self, lease_id: int, t0: float) -> None:
        """The first lease, granted by a request sent at ``t0``: healthy from now on."""
        self.lease_id = lease_id
        self.deadline.granted(t0)
        self.healthy = True

    def revoke_quietly(self, lease: int) -> None:
        try:
            self.cluster.call("kv/lease/revoke", {"ID": str(lease)})
        except OwnershipUnavailable:
            pass

    # ------------------------------------------------------------------ reactor side
    def check(self) -> None:
        """The lease check (reactor, every ``check_interval``)."""
        if not self.healthy or self.closed:
            return
        if self.lease_gone or self.deadline.expired():
            self.lose()
        elif self.deadline.stalled():
            self._on_stalled()

    def lose(self) -> None:
        """Fail closed: the lease is given up before etcd could expire it."""
        overdue = self.deadline.overdue()
        log.error(
            "etcd: lease {lease:x} lost ({why}); failing closed: every session of this node "
            "is reported lost", lease=self.lease_id,
            why="revoked or expired" if self.lease_gone else f"no keep-alive for {overdue:.1f} s",
        )  # fmt: skip
        self.healthy = False
        self.lost += 1
        self.need_lease = True
        self._on_lost()

    def _regained(self) -> None:
        if not self.closed:
            log.info("etcd: new lease {lease:x}; accepting claims again", lease=self.lease_id)
            self.healthy = True

    # ------------------------------------------------------------------ keep-alive thread
    def loop(self) -> None:
        """The keep-alive thread: one :meth:`round` after the other until ``stop``."""
        while not self._stop.is_set():
            self._stop.wait(max(0.0, self.round()))

    def round(self) -> float:
        """One keep-alive round (or, after a loss, one attempt at a new lease); returns the
        seconds to wait before the next."""
        t0 = self.clock()
        if self.need_lease:
            try:
                self.lease_id, _, sent = self.grant()
            except OwnershipUnavailable:
                return self.interval
            self.deadline.granted(sent)
            self.lease_gone = False
            self.need_lease = False
            self._call_from_thread(self._regained)
            # the old lease is left to lapse, not revoked: see the module docstring
            return 0.0
        n = len(self.cluster.endpoints)
        start = self.cluster.preferred
        renewed = refused = False
        for k in range(n):  # one member per attempt; the next one if it does not answer
            i = (start + k) % n
            t1 = self.clock()  # this attempt's send time
            try:
                self.renew_on(i, t1)
                self.cluster.preferred = i
                renewed = True
                break
            except OwnershipUnavailable as e:
                self.keepalive_failures += 1
                log.debug("etcd keep-alive on {u}: {e}", u=url(self.cluster.endpoints[i]), e=e)
                if not isinstance(e, Unreachable):
                    refused = True  # an answer (an error): retried at the next round
                    break
                self.cluster.preferred = (i + 1) % n  # the next attempt starts elsewhere
                self._on_unreachable(i)  # the watch moves if it reads that member
                if self.clock() - t0 >= self.interval:
                    break
        # a round no member answered is retried at once (briefly paced): the deadline runs
        return self.interval - (self.clock() - t0) if renewed or refused else 0.1

    def renew_on(self, i: int, t0: float) -> None:
        """One keep-alive round on member ``i``: renew the lease, then write the heartbeat
        (needs the quorum) in the same raft term on the same member. The renewal counts
        when the watch delivers the heartbeat (:mod:`jumping_etcd.liveness`)."""
        lease = str(self.lease_id)
        timeout = min(self.cluster.timeout, self.interval / 2)  # two members per round
        r = self.cluster.call_on(i, "lease/keepalive", {"ID": lease}, timeout=timeout)
        res = r.get("result", {})
        granted = int(res.get("TTL", 0))
        if granted <= 0:
            self.lease_gone = True
            return
        seq = self.deadline.next_seq()
        value = heartbeat_value(self.node_id, seq)
        p = self.cluster.call_on(i, "kv/put", {"key": b64(self.heartbeat_key), "value": value,
                                               "lease": lease}, timeout=timeout)  # fmt: skip
        h1, h2 = res.get("header", {}), p.get("header", {})
        same = all(h1.get(f) == h2.get(f) for f in ("raft_term", "member_id"))
        if not same:
            raise OwnershipUnavailable(
                f"etcd: keep-alive (term {h1.get('raft_term')}) and its check (term "
                f"{h2.get('raft_term')}) disagree: not counted"
            )
        self.deadline.renewed(seq, t0, granted)
