"""
The client side of the core: one session with one gateway over the paths the service
opened; initiates handshakes and rekeys, sends reattach proofs while recovering, and resumes
its session on another gateway of the cluster (a resume handshake carrying its SessionID and
state_version) when its gateway died or told it OWNERSHIP_LOST.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from typing import Any

from jumping.core import wire
from jumping.core.fsm import Reason, State
from jumping.core.handshake import HandshakeError, Initiation, read_cookie_reply
from jumping.core.node import _NO_SESSION, QUEUED, NodeCore, Peer, Pieces, _reattach_body
from jumping.core.outputs import Drop, Output
from jumping.core.pathhandle import PathHandle
from jumping.core.paths import Candidate, PathStats, select
from jumping.core.ratelimit import SwitchLimiter
from jumping.core.segments import FEATURE_SEGMENTS as _SEGMENTS
from jumping.core.session import ClientSession, Keypair, Session
from jumping.core.timers import T

_BOUND = (State.ATTACHED, State.VOLATILE, State.DEGRADED, State.RECOVERING)
_ATTACHED = State.ATTACHED
#: probe body: id, then zero padding so probes and replies have one fixed size
_PROBE = struct.Struct("<I28s")
#: data this recent (seconds) on the active path: its probes queued behind it
LOADED_WITHIN = 0.05
#: feature announcements per set of keys, at most (the gateway answers the first it gets)
FEATURE_ANNOUNCEMENTS = 4
FEATURE_RETRY_S = 0.5


class ClientCore(NodeCore):
    """One session with one gateway, over the paths the service opened."""

    role = "client"

    def __init__(
        self,
        *,
        gateway_public_key: bytes,
        paths: Sequence[PathHandle] = (),
        restart_backoff_ms: int = 1000,
        queue_limit: int = 256,
        probe_interval_ms: int = 1000,
        switch_limiter: Any = None,
        gateway_psk: bytes | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        #: by path; looked up with a session's path too, None while it is unbound (never a key)
        self.stats: dict[PathHandle | None, PathStats] = {p: PathStats(p, self._now) for p in paths}
        self.probe_interval = probe_interval_ms / 1000.0
        self.probe_seq = 0
        #: the IRateLimitPolicy for transport switches; follows the policy (reconfigure)
        self.switch_limiter: Any = switch_limiter or SwitchLimiter()
        self.switch_limiter.reconfigure(self.policy)
        self._denied_at = -1e18
        self.gateway = Peer(gateway_public_key, name="gateway", psk=gateway_psk)
        self.paths: list[PathHandle] = list(paths)
        self.session: Session | None = None
        self.handshakes: dict[int, tuple[Session, Initiation]] = {}
        self.cookie: tuple[bytes, float] | None = None
        self.restart_backoff = restart_backoff_ms / 1000.0
        self.restart_at: float | None = None
        self.queue: deque[bytes] = deque()
        self.queue_limit = queue_limit

    def add_path(self, now: float, path: PathHandle) -> list[Output]:
        self._now = now
        if path not in self.paths:
            self.paths.append(path)
            self.stats[path] = PathStats(path, now)
        return self.take()

    def remove_path(self, now: float, path: PathHandle) -> list[Output]:
        """A path is gone for good (its connection closed): forget it as a candidate."""
        self._now = now
        if path in self.paths:
            self.paths.remove(path)
        self.stats.pop(path, None)
        return self.take()

    def start(self, now: float) -> list[Output]:
        """Begin a new session (first start, or after the previous one terminated)."""
        self._now = now
        self._start(now)
        return self.take()

    def _start(self, now: float) -> None:
        self.restart_at = None
        # a provisional, random SessionID until the gateway assigns the real one: a
        # handshake that fails is reported under an id of its own, never under a shared
        # placeholder that a later attempt would reuse
        s = ClientSession(self.rng(16), self.gateway, now)
        s.owned = True
        self.session = s
        self.sessions[s.session_id] = s
        self._born(now, s, now + self.handshake_retry)
        self._initiate(now, s)

    def _initiate(self, now: float, s: Session, path: PathHandle | None = None) -> None:
        if not self.paths:
            self.drops["NO_PATH"] += 1
            return
        for idx in [i for i, (hs_s, _) in self.handshakes.items() if hs_s is s]:
            del self.handshakes[idx]
        local = self._new_index()
        cookie = self.cookie[0] if self.cookie and now - self.cookie[1] < 115.0 else None
        hs = Initiation(
            self.me, self.gateway.public_key, self.rng, now, local,
            _NO_SESSION if s.fsm.state is State.BIRTH else s.session_id,
            s.fsm.state_version, cookie, self.gateway.psk,
        )  # fmt: skip
        self.handshakes[local] = (s, hs)
        s.handshake = hs
        if s.handshake_attempts == 0 or s.fsm.state is not State.BIRTH:
            s.handshake_started = now
        if path is None:
            path = s.path
        if path is None:
            path = self.paths[s.handshake_attempts % len(self.paths)]
        s.resume_hs = None
        s.handshake_attempts += 1
        s.last_handshake_tx = now
        self.counters["handshakes_sent"] += 1
        self._send(path, hs.message, s)
        if s.fsm.state is State.BIRTH:
            self._arm(s, T.HANDSHAKE, min(now + self.handshake_retry,
                                          s.created + self.handshake_timeout))  # fmt: skip
        else:
            self._arm(s, T.REKEY, now + self.handshake_retry)  # retried until answered

    def _on_handshake(self, now: float, path: PathHandle, t: int, data: bytes) -> None:
        if t == wire.MessageType.COOKIE_REPLY:
            self._on_cookie(now, data, path)
            return
        if t != wire.MessageType.HANDSHAKE_RESP or len(data) != wire.RESP_LEN:
            self._drop("UNEXPECTED_HANDSHAKE", path)
            return
        receiver = int.from_bytes(data[8:12], "little")
        entry = self.handshakes.get(receiver)
        if entry is None:
            self._drop("UNKNOWN_INDEX", path)
            return
        s, hs = entry
        try:
            est = hs.consume_response(data)
        except HandshakeError as e:
            self._drop(str(e.args[0]), path)
            return
        del self.handshakes[receiver]
        s.handshake = None
        resumed = hs is s.resume_hs
        s.resume_hs = None
        if s.fsm.state is not State.BIRTH and est.session_id != s.session_id:
            # The gateway no longer knows our session: never a silent identity reset.
            self._transition(now, s, Reason.OWNERSHIP_LOST, detail="gateway_forgot_session")
            self.restart_at = None
            self._adopt_new_session(now, est, path, hs)
            return
        if s.fsm.state is State.BIRTH:
            del self.sessions[s.session_id]
            s.session_id = est.session_id
            self.sessions[s.session_id] = s
        if resumed and s.fsm.state is State.RECOVERING:
            self._resumed(now, s, est, path, hs.started)
            return
        self._install(now, s, est, path)

    def _adopt_new_session(self, now: float, est: Any, path: PathHandle, hs: Initiation) -> None:
        s = ClientSession(est.session_id, self.gateway, now)
        s.owned = True
        self.session = s
        self.sessions[s.session_id] = s
        self._born(now, s, now + self.handshake_timeout)
        self._install(now, s, est, path)

    def _install(self, now: float, s: Session, est: Any, path: PathHandle) -> None:
        kp = Keypair(
            s, est.local_index, est.remote_index, est.send_key, est.recv_key, now,
            self.policy.replay_window, confirmed=True,
        )  # fmt: skip
        if s.previous is not None:
            self.index.pop(s.previous.local_index, None)
            s.previous.wipe()
        s.previous, s.current = s.current, kp
        self.index[est.local_index] = kp
        s.last_rx = now
        s.handshake_attempts = 0
        self._keys_installed(now, s)
        self._arm(s, T.REKEY, now + self.policy.rekey_after_s)
        if s.fsm.state is State.BIRTH:
            for st in self.stats.values():
                st.fresh_start()  # a new session judges its paths from now on
            self._bind(now, s, path)
            self._transition(now, s, Reason.HANDSHAKE_OK)
        else:
            self.counters["rekeys"] += 1
        # Confirm the keys at once (the gateway switches on our first packet), announcing
        # our features: the gateway may be another one, or another build, than before.
        s.peer_features = None
        s.features_sent = 0
        self._announce(now, s)
        if self.queue:
            s.last_data = now
            if s.quiet:
                self._wake(now, s)
        while self.queue:
            packet = self.queue.popleft()
            self._send(s.path, kp.seal(kp.data_prefix, packet), s)
            self._expect_answer(now, s)
        if (
            path is not s.path
            and s.fsm.state in (State.ATTACHED, State.VOLATILE, State.DEGRADED)
            and s.suspect_since
        ):
            # a rekey that only another path could carry (keys expired while idle, then the
            # active path died): that path is where the session goes
            self._failover(now, s, path, Reason.TRANSPORT_DEAD, detail="probe_timeout")

    def _on_cookie(self, now: float, data: bytes, path: PathHandle | None = None) -> None:
        receiver = int.from_bytes(data[4:8], "little")
        entry = self.handshakes.get(receiver)
        if entry is None:
            self._drop("UNKNOWN_INDEX", path)
            return
        try:
            cookie = read_cookie_reply(data, self.gateway.public_key, entry[1].mac1)
        except HandshakeError as e:
            self._drop(str(e.args[0]), path)
            return
        self.cookie = (cookie, now)
        self.counters["cookies_received"] += 1
        s, hs = entry
        if hs is s.handshake and not hs.with_cookie and not s.fsm.terminated:
            # the gateway is under load and answered with a cookie instead of a handshake:
            # send this attempt again at once, now with mac2, not a retry interval later
            # (once per attempt: the retry carries a cookie, so a cookie reply to it waits
            # for the retry timer; a forged reply, which needs our mac1, gains no more)
            resume = hs is s.resume_hs
            self.counters["cookie_retries"] += 1
            self._initiate(now, s, path)
            if resume and s.handshake is not None:
                s.resume_hs = s.handshake
                s.handshake.started = hs.started  # the switch was decided then

    def _seal_data(self, now: float, packet: bytes) -> tuple[PathHandle, bytes] | Drop:
        s = self.session
        kp = s.current if s is not None else None
        if kp is None or s is None or s.path is None:
            if len(self.queue) >= self.queue_limit:
                drop = self._count("QUEUE_FULL")
            else:
                self.queue.append(packet)
                drop = QUEUED
            if s is not None and s.fsm.state is not State.BIRTH and not s.fsm.terminated:
                # keys expired while the session was idle: this packet starts the rekey
                # (same SessionID); it goes out once the new keys are installed
                s.last_data = now
                if s.quiet:
                    self._wake(now, s)
                if not s.handshake:
                    self._arm_by(s, T.REKEY, now)
            return drop
        data = kp.seal(kp.data_prefix, packet)
        if data is None:
            return self._count("COUNTER_EXHAUSTED")
        s.tx_bytes += len(data)
        s.tx_packets += 1
        self._sent(now, s, kp)
        return s.path, data

    def accepts_segments(self, packet: bytes) -> bool:
        s = self.session
        return (
            s is not None and s.current is not None and s.path is not None
            and bool((s.peer_features or 0) & _SEGMENTS)
        )  # fmt: skip

    def _seal_pieces(self, now: float, item: Pieces) -> tuple[PathHandle, list[bytes]] | Drop:
        packet, hl, gso_size = item
        s = self.session
        kp = s.current if s is not None else None
        if kp is None or s is None or s.path is None:
            return self._count("NO_SESSION_KEYS")
        datagrams = kp.seal_pieces(packet, hl, gso_size)
        if datagrams is None:
            return self._count("COUNTER_EXHAUSTED")
        s.tx_bytes += len(packet) + len(datagrams) * (wire.OVERHEAD + hl) - hl
        s.tx_packets += len(datagrams)
        self._sent(now, s, kp)
        return s.path, datagrams

    def _sent(self, now: float, s: Session, kp: Keypair) -> None:
        s.last_tx = now
        s.last_data = now
        if s.quiet:
            self._wake(now, s)
        if s.first_unacked <= s.last_rx:
            # first packet since we last heard the gateway: the probe-timeout clock starts
            self._expect_answer(now, s)
        if kp.send_counter >= self.policy.rekey_after_messages:
            self._arm_by(s, T.REKEY, now)

    def _announce(self, now: float, s: Session) -> None:
        """KEEPALIVE with our revision and features (the gateway answers in kind; a
        revision-1 gateway ignores the body, so DATA_SEGMENT is never sent to it)."""
        s.features_sent += 1
        s.features_at = now
        self.counters["feature_announcements"] += 1
        self._control(now, s, wire.Control.KEEPALIVE, self._features_body())
        if s.features_sent < FEATURE_ANNOUNCEMENTS:
            self._arm(s, T.FEATURES, now + FEATURE_RETRY_S)

    def _expired_features(self, now: float, s: Session) -> None:
        """The announcement (or its answer) was lost, or the gateway is revision 1."""
        if s.peer_features is None and s.current is not None and s.path is not None:
            self._announce(now, s)

    # timers (jumping/core/timers.py) ---------------------------------------------
    def _expect_answer(self, now: float, s: Session) -> None:
        outstanding = s.first_unacked > s.last_rx
        super()._expect_answer(now, s)
        if not outstanding:
            # at a third of the probe timeout, if nothing came back, the active path gets
            # an echo probe; at one probe timeout it is suspected
            self._arm_by(s, T.PROBE_TIMEOUT, now + s.pto / 3)

    def _expired_handshake(self, now: float, s: Session) -> None:
        if s.fsm.state is not State.BIRTH:
            return
        if now - s.created >= self.handshake_timeout - 1e-6:
            self._transition(now, s, Reason.HANDSHAKE_FAIL)
        elif now - s.last_handshake_tx >= self.handshake_retry - 1e-6:
            self._initiate(now, s)  # re-arms HANDSHAKE
        else:
            self._arm(s, T.HANDSHAKE, s.last_handshake_tx + self.handshake_retry)

    def _expired_rekey(self, now: float, s: Session) -> None:
        """Rekey at rekey_after_s / rekey_after_messages, but only while traffic flows: an
        idle session's keys expire instead, and its first packet rekeys."""
        if s.fsm.state is State.BIRTH or s.resuming is not None:
            return
        kp = s.current
        p = self.policy
        if kp is not None and kp.send_counter < p.rekey_after_messages:
            due = kp.created + p.rekey_after_s
            if now < due - 1e-6:
                self._arm(s, T.REKEY, due)
                return
        if s.quiet and not self.queue:
            return  # idle: no rekey (wake-up re-arms this timer)
        if now - s.last_handshake_tx >= self.handshake_retry - 1e-6:
            self._initiate(now, s)
            if s.current is None:
                self._expect_answer(now, s)  # nothing else can tell that the path is dead
        self._arm(s, T.REKEY, s.last_handshake_tx + self.handshake_retry)

    def _may_go_quiet(self, s: Session) -> bool:
        # a session that is not healthy keeps measuring until it is (or moves)
        return s.fsm.state is _ATTACHED and not s.suspect_since and not self.queue

    def _woke(self, now: float, s: Session) -> None:
        self._disarm(s, T.NAT_KEEPALIVE)
        hb = self.policy.heartbeat_interval_ms / 1000.0
        self._arm_by(s, T.HEARTBEAT, now + min(hb, 0.001))  # all paths measured at once
        self._arm_by(s, T.CANDIDATES, now)
        kp = s.current
        if kp is not None and now - kp.created >= self.policy.rekey_after_s:
            self._arm_by(s, T.REKEY, now)

    def _went_quiet(self, now: float, s: Session) -> None:
        for t in (T.HEARTBEAT, T.CANDIDATES, T.PROBE_TIMEOUT, T.SILENCE):
            self._disarm(s, t)
        s.first_unacked = 0.0  # an idle session judges nothing; its next packet will
        n = self.policy.nat_keepalive_s
        if n:
            self._arm(s, T.NAT_KEEPALIVE, s.last_tx + n)

    def _expired_nat_keepalive(self, now: float, s: Session) -> None:
        """An idle session's only packet: holds the NAT binding, answered by nothing. Under
        expired keys it is the bare header of the old keypair (the gateway drops it as
        KEY_EXPIRED before decrypting anything)."""
        n = self.policy.nat_keepalive_s
        if not s.quiet or not n or s.path is None:
            return
        due = s.last_tx + n
        if now < due - 1e-6:
            self._arm(s, T.NAT_KEEPALIVE, due)
            return
        kp = s.current
        if kp is not None:
            self._control(now, s, wire.Control.KEEPALIVE)
        elif s.previous is not None:
            old = s.previous
            # the header of a control message under the expired keys (they are wiped, and
            # so is their prefix): the gateway drops it before decryption, the NAT sees it
            header = wire.CONTROL_PREFIX + old.remote_index.to_bytes(4, "little")
            self._send(s.path, header + old.send_counter.to_bytes(8, "little"), s)
            old.send_counter += 1
            s.last_tx = now
        else:
            return
        self.counters["nat_keepalives"] += 1
        self._arm(s, T.NAT_KEEPALIVE, now + n)

    # candidates -------------------------------------------------------------------
    def _probe(self, now: float, s: Session, path: PathHandle | None, st: PathStats) -> None:
        self.probe_seq = (self.probe_seq + 1) & 0xFFFFFFFF
        st.probe_sent(now, self.probe_seq)
        self._control(now, s, wire.Control.PROBE, _PROBE.pack(self.probe_seq, b""), path)
        if path is s.path:
            self._expect_answer(now, s)

    def _best(
        self, now: float, exclude: PathHandle | None = None, heard_after: float | None = None
    ) -> PathHandle | None:
        p = self.policy
        cands = [
            (self.stats[x].score(now, p), self.stats[x].transport_id, i)
            for i, x in enumerate(self.paths)
            if x is not exclude
            and self.stats[x].alive(now, p)
            and (heard_after is None or self.stats[x].last_rx > heard_after)
        ]
        return self.paths[min(cands)[2]] if cands else None

    def _pto(self, st: PathStats) -> float:
        return st.pto(self.policy, self.timer_granularity)

    def _suspect_interval(self, st: PathStats) -> float:
        return max(self._pto(st) / 3, 0.01)

    def _expired_heartbeat(self, now: float, s: Session) -> None:
        """While traffic flows: the active path's probe, lost probes counted, the loss
        thresholds, and selection among the candidates."""
        if s.quiet or s.fsm.state not in _BOUND:
            return
        p = self.policy
        hb = p.heartbeat_interval_ms / 1000.0
        for path in self.paths:
            st = self.stats[path]
            st.expire(now, max(self._pto(st), hb))
        active = s.path
        ast = self.stats.get(active)
        if ast is not None and getattr(active, "connected", True):
            self._probe(now, s, active, ast)
        self._arm(s, T.HEARTBEAT, now + hb)
        if ast is None or s.fsm.state is State.RECOVERING:
            return
        if s.fsm.state is _ATTACHED:
            window = p.loss_window_ms / 1000.0
            loss = ast.loss(now, window)
            if ast.consecutive_lost >= p.max_consecutive_drops:
                self._policy_event(s, "max_consecutive_drops", p.max_consecutive_drops,
                                   ast.consecutive_lost)  # fmt: skip
                self._transition(now, s, Reason.CONSECUTIVE_DROPS_EXCEEDED)
            elif loss >= p.loss_volatile_threshold and ast.probes_in(now, window) >= 4:
                self._policy_event(s, "loss_volatile_threshold", p.loss_volatile_threshold,
                                   round(loss, 3))  # fmt: skip
                self._transition(now, s, Reason.LOSS_THRESHOLD_EXCEEDED)
        self._select(now, s)

    def _select(self, now: float, s: Session) -> None:
        """Candidate selection (docs/protocol.md#candidate-selection): move only to a path
        that beats the active one by the hysteresis factor."""
        if s.fsm.state not in (State.ATTACHED, State.VOLATILE, State.DEGRADED):
            return
        p = self.policy
        active = s.path
        ast = self.stats.get(active)
        if ast is None or ast.srtt is None:
            return  # the active path is not measured yet: no comparison to make
        cands = [
            Candidate(self.stats[x].transport_id, self.stats[x].score(now, p),
                      self.stats[x].alive(now, p) or x is active)
            for x in self.paths if getattr(x, "connected", True)
        ]  # fmt: skip
        chosen = select(ast.transport_id, cands, p.hysteresis)
        if chosen is not None and chosen != ast.transport_id:
            target = next(x for x in self.paths if self.stats[x].transport_id == chosen)
            scores = {c.transport_id: round(c.score, 3) for c in cands}
            self._failover(
                now, s, target, Reason.POLICY_FORCED_RECOVERY, detail="better_path",
                active_score=scores.get(ast.transport_id), candidate_score=scores.get(chosen),
            )  # fmt: skip

    def _expired_candidates(self, now: float, s: Session) -> None:
        """While traffic flows: every other connected path is probed every probe_interval
        (every PTO/3 while the active path is suspected), so a failover has a measured,
        validated target."""
        if s.quiet or s.fsm.state not in _BOUND:
            return
        nxt = float("inf")
        for path in self.paths:
            if path is s.path or not getattr(path, "connected", True):
                continue
            st = self.stats[path]
            interval = self._suspect_interval(st) if s.suspect_since else self.probe_interval
            if now - st.last_probe_tx >= interval - 1e-6:
                self._probe(now, s, path, st)
            nxt = min(nxt, st.last_probe_tx + interval)
        if nxt < float("inf"):
            self._arm(s, T.CANDIDATES, max(nxt, now + 0.001))

    def _expired_probe_timeout(self, now: float, s: Session) -> None:
        """Nothing authenticated back since the first packet that expected an answer: at
        PTO/3 ask the active path for an echo (one-way traffic elicits nothing), at one PTO
        suspect it and probe every candidate at once; fail over to the best validated one
        that answered that probe while the active path stayed silent."""
        state = s.fsm.state
        if state not in (State.ATTACHED, State.VOLATILE, State.DEGRADED):
            return
        if s.first_unacked <= s.last_rx:
            s.suspect_since = 0.0
            return
        p = self.policy
        active = s.path
        ast = self.stats.get(active)
        pto = s.pto
        waited = now - s.first_unacked
        asked = ast is not None and ast.last_probe_tx >= s.first_unacked
        if not asked and ast is not None and waited >= pto / 3 - 1e-6:
            self.counters["ack_probes"] += 1
            self._probe(now, s, active, ast)
            asked = True
        if waited < pto - 1e-6:
            self._arm(s, T.PROBE_TIMEOUT, s.first_unacked + (pto if asked else pto / 3))
            return
        if not s.suspect_since:
            s.suspect_since = now
            self.counters["pto_suspect"] += 1
            for path in self.paths:
                if path is not active and getattr(path, "connected", True):
                    self._probe(now, s, path, self.stats[path])
            self._arm_by(s, T.CANDIDATES, now + max(pto / 3, 0.01))
        # only a candidate that answered since the suspicion: by then this node has read
        # whatever was already waiting for it (a reactor busy with a bulk transfer reads its
        # sockets late; the active path's answers may be in that backlog)
        alt = self._best(now, exclude=active, heard_after=s.suspect_since)
        if alt is not None and s.current is None:
            # keys expired while idle: only a handshake can prove the session on another
            # path (its answer moves the session there, see _install)
            if now - s.last_handshake_tx >= self._suspect_interval(self.stats[alt]):
                self._initiate(now, s, alt)
            self._arm(s, T.PROBE_TIMEOUT, now + self._suspect_interval(self.stats[alt]))
            return
        if alt is not None:
            if self._failover(
                now, s, alt, Reason.TRANSPORT_DEAD,
                detail="probe_timeout", silence_ms=int((now - s.last_rx) * 1000),
            ) and ast is not None:  # fmt: skip
                # a path left for silence must answer a probe again before it is a
                # candidate: its stats still look fresh, and going back would flap
                ast.validated = False
                ast.failures += 1
            if s.fsm.state is not State.RECOVERING:
                self._arm(s, T.PROBE_TIMEOUT, now + max(pto / 3, 0.01))
            return
        silence = now - s.first_unacked
        resume_at = max(4 * pto, p.heartbeat_timeout_ms / 2000)
        if silence >= resume_at - 1e-6 and self._resume_candidates(s):
            # no path left to our gateway but other gateways of the cluster: recover
            # now (resume there) rather than after dead_after_ms, while the dead
            # gateway's ownership record still exists
            if self._transition(
                now, s, Reason.TRANSPORT_DEAD, detail="probe_timeout",
                silence_ms=int(silence * 1000),
            ):  # fmt: skip
                self._resume(now, s)
            return
        # look again when a candidate answers (PROBE_REPLY re-arms this at once), or later
        self._arm(s, T.PROBE_TIMEOUT, min(now + max(pto / 3, 0.01), s.first_unacked + resume_at)
                  if self._resume_candidates(s) else now + max(pto / 3, 0.01))  # fmt: skip

    def _healthy(self, now: float, s: Session) -> bool:
        st = self.stats.get(s.path)
        p = self.policy
        return st is None or (
            st.consecutive_lost == 0
            and st.loss(now, p.loss_window_ms / 1000.0) < p.loss_volatile_threshold
        )

    def _stats_fields(self, now: float, s: Session) -> dict[str, Any]:
        st = self.stats.get(s.path)
        if st is None:
            return {}
        return {
            "rtt_ms": round(st.srtt * 1000, 3) if st.srtt is not None else None,
            "loss": round(st.loss(now, self.policy.loss_window_ms / 1000.0), 3),
        }

    def _policy_event(self, s: Session, name: str, threshold: float, observed: float) -> None:
        self._emit(
            "POLICY_EVENT", s, None, policy_name=name, threshold_value=threshold,
            observed_value=observed,
        )  # fmt: skip

    def _failover(
        self, now: float, s: Session, target: PathHandle, reason: Reason, **fields: Any
    ) -> bool:
        """Move the session's one binding to ``target`` and prove the session there."""
        if target is s.path:
            return False
        now_ms = int(now * 1000)
        denied = self.switch_limiter.check(s.sid_hex, now_ms)
        if denied is not None:
            self.counters["switch_denied"] += 1
            if now - self._denied_at >= self.policy.switch_cooldown_ms / 1000.0:
                self._denied_at = now  # one event per cooldown, not one per timer tick
                self._emit(
                    "TRANSPORT_SWITCH_DENIED", s, denied,
                    old_transport_id=getattr(s.path, "transport_id", None),
                    new_transport_id=getattr(target, "transport_id", None),
                )  # fmt: skip
            if s.fsm.state is State.RECOVERING:
                # stay on the current path for another dead_after period before trying again
                s.last_rx = now
                self._transition(now, s, Reason(denied))
            return False
        if s.fsm.state is not State.RECOVERING and not self._transition(now, s, reason, **fields):
            return False
        self.switch_limiter.record(s.sid_hex, now_ms)
        self._leave_path(s)
        s.path = target
        s.last_rx = now
        s.first_unacked = 0.0
        s.suspect_since = 0.0
        self._send_reattach(now, s)
        return True

    def _send_reattach(self, now: float, s: Session) -> None:
        s.reattach_sent = now
        s.last_reattach_tx = now
        self._control(now, s, wire.Control.REATTACH, _reattach_body(now, s))
        self._arm(s, T.REATTACH, now + min(self.reattach_interval, self._reattach_timeout(s)))
        self._emit("REATTACH_ATTEMPT", s, None, transport_id=getattr(s.path, "transport_id", None))

    def _reattach_timeout(self, s: Session) -> float:
        st = self.stats.get(s.path)
        return max(3 * (self._pto(st) if st is not None else 0.15), 0.3)

    def _entered(self, now: float, s: Session, previous: State, new: State) -> None:
        super()._entered(now, s, previous, new)
        if previous is State.BIRTH and new is _ATTACHED and not self.queue:
            # a new session with nothing to send is measured once (the first heartbeat
            # probes the active path and every candidate at once), then goes quiet, as if
            # idle since the attach: not a heartbeat every interval for idle_after_ms (three
            # more probes per path and answers, at every attach of an idle client, a
            # reconnection storm's bulk). Its first packet wakes it as any quiet session's.
            first_round = min(self.policy.heartbeat_interval_ms, self.policy.idle_after_ms)
            s.last_data = now + first_round / 1000.0 - self.policy.idle_after_ms / 1000.0
            self._arm(s, T.IDLE, now + first_round / 1000.0)
        if new is State.RECOVERING:
            self._arm(s, T.REATTACH, now + min(self.reattach_interval, self._reattach_timeout(s)))
        elif previous is State.RECOVERING:
            self._disarm(s, T.REATTACH)

    def _expired_reattach(self, now: float, s: Session) -> None:
        """While RECOVERING: resend the reattach proof every reattach_interval; a candidate
        that does not answer within 3 PTO (at least 300 ms) is left for the next one, and
        with none left to this gateway the others of the cluster are asked (resume)."""
        if s.fsm.state is not State.RECOVERING or s.current is None:
            return
        timeout = self._reattach_timeout(s)
        if s.resuming is not None:
            # our gateway lost the session: only another gateway can take it over
            if now - s.last_handshake_tx >= timeout - 1e-6:
                self._resume(now, s)
            self._arm(s, T.REATTACH, s.last_handshake_tx + timeout)
            return
        if now - max(s.reattach_sent, s.state_since) >= timeout - 1e-6:
            st = self.stats.get(s.path)
            if st is not None:
                st.failures += 1
            alt = self._best(now, exclude=s.path)
            if alt is not None and self._failover(now, s, alt, Reason.TRANSPORT_DEAD):
                return
            if alt is None and now - s.last_handshake_tx >= timeout - 1e-6:
                # no validated path left to our gateway: try the other gateways
                self._resume(now, s)
        if s.fsm.state is not State.RECOVERING:
            return
        if now - s.last_reattach_tx >= self.reattach_interval - 1e-6:
            s.last_reattach_tx = now
            self._control(now, s, wire.Control.REATTACH, _reattach_body(now, s))
        at = min(s.last_reattach_tx + self.reattach_interval,
                 max(s.reattach_sent, s.state_since) + timeout)  # fmt: skip
        self._arm(s, T.REATTACH, max(at, now + 0.001))

    # takeover ----------------------------------------------------------------------
    def _resume_candidates(self, s: Session) -> list[PathHandle]:
        """Paths to another gateway: after OWNERSHIP_LOST every path not to the gateway that
        lost the session; otherwise the paths that never answered a probe of this session
        (a gateway that does not know it yet), to another address than the active one."""
        if s.resuming is not None:
            return [
                x for x in self.paths
                if getattr(x, "connected", True) and _host(x) != s.resuming
            ]  # fmt: skip
        here = _host(s.path)
        return [
            x for x in self.paths
            if getattr(x, "connected", True) and not self.stats[x].validated
            and (here is None or _host(x) != here)
        ]  # fmt: skip

    def _resume(self, now: float, s: Session) -> bool:
        """Send a resume handshake (our SessionID and state_version, fresh keys) on the next
        candidate gateway; its answer (``_resumed``) moves the session there."""
        cands = self._resume_candidates(s)
        if not cands:
            s.last_handshake_tx = now  # retry later, when a path may have come up
            return False
        denied = self.switch_limiter.check(s.sid_hex, int(now * 1000))
        if denied is not None:
            self.counters["resume_rate_limited"] += 1
            s.last_handshake_tx = now
            return False
        path = cands[s.resume_turn % len(cands)]
        s.resume_turn += 1
        self.counters["resume_attempts"] += 1
        self._emit(
            "REATTACH_ATTEMPT", s, None, transport_id=getattr(path, "transport_id", None),
            mode="resume",
        )  # fmt: skip
        self._initiate(now, s, path)
        s.resume_hs = s.handshake
        return True

    def _resumed(self, now: float, s: Session, est: Any, path: PathHandle, decided: float) -> None:
        """A gateway answered our resume handshake for this SessionID: it owns the session
        now. Install the new keys (the old gateway's are wiped), bind the path, REATTACH_OK.

        The switch was decided when that handshake was sent (``decided``, where the limiter
        allowed it): it is counted then, and the switch latency runs from then."""
        old = s.bound_before if s.bound_before is not None else s.path
        old_host = _host(old)
        self.switch_limiter.record(s.sid_hex, int(decided * 1000))
        for kp in s.keypairs():
            self.index.pop(kp.local_index, None)
            kp.wipe()
        s.current = s.previous = s.next = None
        for x in self.paths:
            if x is not path and old_host is not None and _host(x) == old_host:
                self.stats[x].validated = False  # that gateway no longer knows the session
        st = self.stats.get(path)
        if st is not None:
            st.fresh_start()
            st.heard(now)
        self._leave_path(s)
        self._bind(now, s, path, latency_ms=int((now - decided) * 1000))
        s.resuming = None
        s.first_unacked = 0.0
        s.suspect_since = 0.0
        self.counters["sessions_resumed"] += 1
        self._install(now, s, est, path)
        self._transition(now, s, Reason.REATTACH_OK, detail="takeover")
        self._emit(
            "REATTACH_RESULT", s, Reason.REATTACH_OK.value, ok=True,
            transport_id=getattr(path, "transport_id", None), mode="resume",
        )  # fmt: skip

    def _peer_terminated(self, now: float, s: Session, body: bytes) -> None:
        """A gateway that lost our session (fenced by another node's claim, or cut from the
        ownership backend) tells us OWNERSHIP_LOST: resume on another gateway, within
        recovery_window_ms, instead of starting a new session."""
        if body == Reason.OWNERSHIP_LOST.value.encode() and s is self.session:
            lost = _host(s.path)
            s.resuming = lost
            if lost is not None and self._resume_candidates(s):
                self.counters["gateway_lost_ownership"] += 1
                if s.fsm.state is not State.RECOVERING:
                    self._transition(now, s, Reason.TRANSPORT_DEAD, detail="gateway_lost_ownership")
                self._resume(now, s)
                self._arm_by(s, T.REATTACH, now + self.reattach_interval)
                return
            s.resuming = None
        super()._peer_terminated(now, s, body)

    def path_lost(self, now: float, path: PathHandle) -> list[Output]:
        self._now = now
        st = self.stats.get(path)
        if st is not None:
            st.failures += 1
        s = self.session
        if s is not None and s.path is path and s.fsm.state in _BOUND:
            alt = self._best(now, exclude=path)
            if alt is None or not self._failover(
                now, s, alt, Reason.TRANSPORT_DEAD, detail="transport_lost"
            ):
                return super().path_lost(now, path)
        return self.take()

    def _unusual_rx(
        self, now: float, s: Session, kp: Keypair, path: PathHandle, control: bytes | None = None
    ) -> None:
        super()._unusual_rx(now, s, kp, path, control)
        st = self.stats.get(path)
        if st is not None:
            st.heard(now)

    def _on_session_control(
        self, now: float, s: Session, kind: int, body: bytes, path: PathHandle
    ) -> None:
        ctl = wire.Control
        if kind == ctl.PROBE_REPLY:
            if len(body) < _PROBE.size:
                self._drop("MALFORMED_CONTROL", path)
                return
            st = self.stats.get(path)
            if st is not None:
                # a probe on the active path of a busy session queued behind its data
                loaded = path is s.path and now - s.last_data < LOADED_WITHIN
                st.probe_reply(now, _PROBE.unpack_from(body)[0], loaded)
                self._probe_answered(now, s, path, st)
        elif kind == ctl.REATTACH_ACK:
            if s.fsm.state is State.RECOVERING and path is s.path:
                st = self.stats.get(path)
                if st is not None:
                    st.fresh_start()
                moved = s.bound_before is not None and s.bound_before is not path
                # the switch latency runs from the switch decision (the reattach we sent)
                self._bind(now, s, path, latency_ms=int((now - s.reattach_sent) * 1000))
                s.last_rx = now
                self._transition(now, s, Reason.REATTACH_OK)
                if moved and self.policy.rekey_on_switch:
                    self.counters["rekey_on_switch"] += 1
                    self._initiate(now, s)
                self._emit(
                    "REATTACH_RESULT",
                    s,
                    Reason.REATTACH_OK.value,
                    ok=True,
                    transport_id=getattr(path, "transport_id", None),
                )
            else:
                self.counters["stale_reattach_ack"] += 1
        elif kind == ctl.CHALLENGE:
            # path validation: answer on the path the challenge came from
            self._control(now, s, ctl.RESPONSE, body[:16], path)
        else:
            self._drop("UNEXPECTED_CONTROL")

    def _probe_answered(self, now: float, s: Session, path: PathHandle, st: PathStats) -> None:
        if path is s.path:
            s.pto = self._pto(st)
            if s.fsm.state is State.VOLATILE or s.fsm.state is State.DEGRADED:
                self._maybe_recovered(now, s)
        elif s.suspect_since:
            self._arm(s, T.PROBE_TIMEOUT, now)  # a candidate answered: fail over to it now

    def _terminated(self, now: float, s: Session, reason: Reason) -> None:
        super()._terminated(now, s, reason)
        for idx in [i for i, (hs_s, _) in self.handshakes.items() if hs_s is s]:
            del self.handshakes[idx]
        if s is self.session:
            self.session = None
            self.restart_at = now + self.restart_backoff

    def _node_timers(self, now: float) -> None:
        super()._node_timers(now)
        if self.restart_at is not None and now >= self.restart_at:
            self._start(now)

    def _node_deadline(self) -> float | None:
        at = super()._node_deadline()
        if self.restart_at is not None and (at is None or self.restart_at < at):
            return self.restart_at
        return at


def _host(path: PathHandle | None) -> Any:
    """The remote host of a path (one gateway per address), None if unknown."""
    addr = getattr(path, "remote_address", None)
    return addr[0] if isinstance(addr, tuple) and addr else None
