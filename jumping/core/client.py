"""
The client side of the core: one session with one gateway over the paths the service
opened; initiates handshakes and rekeys, sends reattach proofs while recovering.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from jumping.core import wire
from jumping.core.fsm import Reason, State
from jumping.core.handshake import HandshakeError, Initiation, read_cookie_reply
from jumping.core.node import _NO_SESSION, NodeCore, Peer, _reattach_body
from jumping.core.outputs import ArmTimer, Output
from jumping.core.session import Keypair, Session


class ClientCore(NodeCore):
    """One session with one gateway, over the paths the service opened."""

    role = "client"

    def __init__(
        self,
        *,
        gateway_public_key: bytes,
        paths: Sequence[Any] = (),
        restart_backoff_ms: int = 1000,
        queue_limit: int = 256,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.gateway = Peer(gateway_public_key, name="gateway")
        self.paths: list[Any] = list(paths)
        self.session: Session | None = None
        self.handshakes: dict[int, tuple[Session, Initiation]] = {}
        self.cookie: tuple[bytes, float] | None = None
        self.restart_backoff = restart_backoff_ms / 1000.0
        self.restart_at: float | None = None
        self.queue: deque[bytes] = deque()
        self.queue_limit = queue_limit

    def add_path(self, now: float, path: Any) -> list[Output]:
        self._now = now
        if path not in self.paths:
            self.paths.append(path)
        return self.take()

    def start(self, now: float) -> list[Output]:
        """Begin a new session (first start, or after the previous one terminated)."""
        self._now = now
        self._start(now)
        return self.take()

    def _start(self, now: float) -> None:
        self.restart_at = None
        s = Session(_NO_SESSION, self.gateway, now)
        s.owned = True
        self.session = s
        self.sessions[s.session_id] = s
        self._initiate(now, s)
        self._schedule(s, now + self.handshake_retry / 4)

    def _initiate(self, now: float, s: Session) -> None:
        if not self.paths:
            self.drops["NO_PATH"] += 1
            return
        for idx in [i for i, (hs_s, _) in self.handshakes.items() if hs_s is s]:
            del self.handshakes[idx]
        local = self._new_index()
        cookie = self.cookie[0] if self.cookie and now - self.cookie[1] < 115.0 else None
        hs = Initiation(
            self.me, self.gateway.public_key, self.rng, now, local,
            s.session_id, s.fsm.state_version, cookie,
        )  # fmt: skip
        self.handshakes[local] = (s, hs)
        s.handshake = hs
        if s.handshake_attempts == 0 or s.fsm.state is not State.BIRTH:
            s.handshake_started = now
        path = s.path if s.path is not None else self.paths[s.handshake_attempts % len(self.paths)]
        s.handshake_attempts += 1
        s.last_handshake_tx = now
        self.counters["handshakes_sent"] += 1
        self._send(path, hs.message, s)

    def _on_handshake(self, now: float, path: Any, t: int, data: bytes) -> None:
        if t == wire.MessageType.COOKIE_REPLY:
            self._on_cookie(now, data)
            return
        if t != wire.MessageType.HANDSHAKE_RESP or len(data) != wire.RESP_LEN:
            self._drop("UNEXPECTED_HANDSHAKE")
            return
        receiver = int.from_bytes(data[8:12], "little")
        entry = self.handshakes.get(receiver)
        if entry is None:
            self._drop("UNKNOWN_INDEX")
            return
        s, hs = entry
        try:
            est = hs.consume_response(data)
        except HandshakeError as e:
            self._drop(str(e.args[0]))
            return
        del self.handshakes[receiver]
        s.handshake = None
        if s.fsm.state is not State.BIRTH and est.session_id != s.session_id:
            # The gateway no longer knows our session: never a silent identity reset.
            self._transition(now, s, Reason.OWNERSHIP_LOST, detail="gateway_forgot_session")
            self.restart_at = None
            self._adopt_new_session(now, est, path, hs)
            return
        if s.fsm.state is State.BIRTH:
            del self.sessions[s.session_id]
            s.session_id = est.session_id
            s.sid_hex = est.session_id.hex()
            self.sessions[s.session_id] = s
        self._install(now, s, est, path)

    def _adopt_new_session(self, now: float, est: Any, path: Any, hs: Initiation) -> None:
        s = Session(est.session_id, self.gateway, now)
        s.owned = True
        self.session = s
        self.sessions[s.session_id] = s
        self._install(now, s, est, path)

    def _install(self, now: float, s: Session, est: Any, path: Any) -> None:
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
        if s.fsm.state is State.BIRTH:
            self._bind(now, s, path)
            self._transition(now, s, Reason.HANDSHAKE_OK)
        else:
            self.counters["rekeys"] += 1
        # Confirm the keys at once (the gateway switches on our first packet).
        self._control(now, s, wire.Control.KEEPALIVE)
        while self.queue:
            packet = self.queue.popleft()
            self._send(s.path, kp.seal(kp.data_prefix, packet), s)
        self._schedule(s, now)

    def _on_cookie(self, now: float, data: bytes) -> None:
        receiver = int.from_bytes(data[4:8], "little")
        entry = self.handshakes.get(receiver)
        if entry is None:
            self._drop("UNKNOWN_INDEX")
            return
        try:
            cookie = read_cookie_reply(data, self.gateway.public_key, entry[1].mac1)
        except HandshakeError as e:
            self._drop(str(e.args[0]))
            return
        self.cookie = (cookie, now)
        self.counters["cookies_received"] += 1

    def seal_data(self, now: float, packet: bytes) -> tuple[Any, bytes] | None:
        s = self.session
        kp = s.current if s is not None else None
        if kp is None or s is None or s.path is None:
            if len(self.queue) >= self.queue_limit:
                self.drops["QUEUE_FULL"] += 1
            else:
                self.queue.append(packet)
            return None
        data = kp.seal(kp.data_prefix, packet)
        if data is None:
            self.drops["COUNTER_EXHAUSTED"] += 1
            return None
        s.last_tx = now
        s.tx_bytes += len(data)
        s.tx_packets += 1
        if kp.send_counter >= self.policy.rekey_after_messages:
            self._schedule(s, now)
        return s.path, data

    def _birth_timer(self, now: float, s: Session) -> None:
        if now - s.created >= self.handshake_timeout:
            self._transition(now, s, Reason.HANDSHAKE_FAIL)
        elif now - s.last_handshake_tx >= self.handshake_retry:
            self._initiate(now, s)

    def _on_timer(self, now: float, s: Session) -> None:
        super()._on_timer(now, s)
        if s.fsm.terminated or s.fsm.state is State.BIRTH:
            return
        kp = s.current
        p = self.policy
        too_old = kp is not None and now - kp.created >= p.rekey_after_s
        too_many = kp is not None and kp.send_counter >= p.rekey_after_messages
        if (too_old or too_many) and now - s.last_handshake_tx >= self.handshake_retry:
            self._initiate(now, s)

    def _recovering(self, now: float, s: Session) -> None:
        if now - s.last_reattach_tx < self.reattach_interval or s.current is None:
            return
        s.last_reattach_tx = now
        body = _reattach_body(now, s)
        candidates = self.paths or ([s.path] if s.path is not None else [])
        for path in candidates:
            self._control(now, s, wire.Control.REATTACH, body, path)
        self._emit("REATTACH_ATTEMPT", s, None, candidates=len(candidates))

    def _on_session_control(
        self, now: float, s: Session, kind: int, body: bytes, path: Any
    ) -> None:
        ctl = wire.Control
        if kind == ctl.REATTACH_ACK:
            if s.fsm.state is State.RECOVERING:
                self._bind(now, s, path)
                self._transition(now, s, Reason.REATTACH_OK)
                self._emit("REATTACH_RESULT", s, Reason.REATTACH_OK.value, ok=True)
        elif kind == ctl.CHALLENGE:
            # The gateway lost track of our path: prove the session from where we are.
            self._control(now, s, ctl.REATTACH, _reattach_body(now, s), path)
        else:
            self._drop("UNEXPECTED_CONTROL")

    def _terminated(self, now: float, s: Session, reason: Reason) -> None:
        super()._terminated(now, s, reason)
        for idx in [i for i, (hs_s, _) in self.handshakes.items() if hs_s is s]:
            del self.handshakes[idx]
        if s is self.session:
            self.session = None
            self.restart_at = now + self.restart_backoff

    def _node_timers(self, now: float) -> None:
        if self.restart_at is not None:
            if now >= self.restart_at:
                self._start(now)
            else:
                self.pending.append(ArmTimer(self.restart_at))
