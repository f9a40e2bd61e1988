"""
The sans-IO heart of a Jumping node: handshakes, sessions, the data plane and timers.

Every entry point is pure (``now`` and bytes in, results out) and returns everything it
produced; nothing is left behind for the caller to collect:

- ``receive(now, path, data)`` / ``tick(now)`` / ``seal(now, packet)`` return frozen
  outputs (:mod:`jumping.core.outputs`);
- ``receive_batch(now, path, datagrams)`` and ``seal_batch(now, packets)`` are the data
  plane the service uses: a run of datagrams from one path (the core reads their wire type
  and dispatches) gives a :class:`Received` (the inner packets for the TUN device, in order,
  and any other outputs); a run of TUN packets gives a :class:`Sealed` (datagrams grouped
  by path, in order, and any other outputs). Per packet they allocate nothing beyond the
  packet itself.

Inside one call, helpers accumulate outputs in ``pending``, which the entry point hands
back whole. ``_open_data``/``_seal_data`` (one packet) return the result or a
:class:`~jumping.core.outputs.Drop` (shared constants, no allocation per drop).

Nothing from the network raises: every bad packet is a counted drop (``drops[reason]``).
"""

from __future__ import annotations

import heapq
import ipaddress
import struct
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, cast

from jumping.core import segments, wire
from jumping.core.fsm import Reason, State
from jumping.core.handshake import (
    Identity,
)
from jumping.core.limits import ViolationLedger, source_prefix
from jumping.core.outputs import (
    ArmTimer,
    ConfirmPath,
    Drop,
    Emit,
    Output,
    Release,
    Send,
    WriteTun,
)
from jumping.core.pathhandle import PathHandle, ProvisionalPath
from jumping.core.policy import Policy
from jumping.core.session import Keypair, Session
from jumping.core.timers import HANDLERS, ORDER, T

Rng = Callable[[int], bytes]

_HDR = wire.TRANSPORT_HEADER
#: stale timer-heap entries tolerated beyond one per session before the heap is rebuilt
HEAP_SLACK = 1024
_DATA = wire.MessageType.DATA
_DATA_BYTE = bytes((_DATA,))
_SEGMENT = wire.MessageType.DATA_SEGMENT
_SEGMENT_BYTE = bytes((_SEGMENT,))
_SEGMENTS = segments.FEATURE_SEGMENTS
_start_run = segments.start_run
_extend_run = segments.extend_run
_CONTROL = wire.MessageType.CONTROL
_PROBING = (bytes((wire.Control.PROBE,)), bytes((wire.Control.PROBE_REPLY,)))
_ATTACHED = State.ATTACHED
_TERMINATED = State.TERMINATED
#: states in which the session's transport may be lost (transport_lost_ttl_ms applies)
_UNHEALTHY = (State.VOLATILE, State.DEGRADED, State.RECOVERING)
_BOUND = (State.ATTACHED, State.VOLATILE, State.DEGRADED, State.RECOVERING)
_REATTACH = struct.Struct("<Q16s")
_NO_SESSION = bytes(16)
_EPS = 1e-6  # timers compare deadlines computed two ways (float sums)
#: state -> reasons that may end it from the timer's health checks
_TERMINAL_NOTICE = struct.Struct("<B32s")


_DROPS: dict[str, Drop] = {}


def drop(reason: str) -> Drop:
    """The shared :class:`Drop` for ``reason`` (one object per reason, not per packet)."""
    d = _DROPS.get(reason)
    if d is None:
        d = Drop(reason)
        if len(_DROPS) < 256:  # reasons are a small fixed set; never grow without bound
            _DROPS[reason] = d
    return d


#: a client's packet held until the session has keys and a path (not a drop: it is sent then)
QUEUED = drop("QUEUED")


class Received(NamedTuple):
    """What a run of datagrams from one path produced: inner packets for the TUN device
    (in arrival order: ``bytes``, or a :class:`~jumping.core.segments.SegmentRun` for
    consecutive DATA_SEGMENT pieces of one TCP super-packet) and every other output
    (sends, events, timers...)."""

    packets: list[bytes | segments.SegmentRun]
    outputs: list[Output]


class Sealed(NamedTuple):
    """What a run of TUN packets produced: ``(path, datagrams)`` runs in order (consecutive
    packets for one path share a run) and every other output."""

    sends: list[tuple[PathHandle, list[bytes]]]
    outputs: list[Output]


#: an entry of ``seal_batch`` that is a TCP/IPv4 super-packet (or one TCP packet whose
#: checksum is pending): ``(packet, header_length, gso_size)``
Pieces = tuple[bytes, int, int]


#: drop reasons that are evidence of an attack, by SIEM violation type (docs/events.md)
SECURITY_VIOLATIONS: dict[str, tuple[str, ...]] = {
    "REPLAY_DETECTED": ("REPLAY", "HANDSHAKE_REPLAY"),
    "INVALID_PROOF": (
        "AUTH_FAILED",
        "REATTACH_INVALID",
        "UNEXPECTED_RESPONSE",
        "ADOPT_WRONG_CLIENT",
    ),
    # a resume whose state_version is older than the ownership record's: a replay of
    # session state, or a client's stale copy
    "STALE_STATE_VERSION": ("ADOPT_STALE_VERSION",),
    # a takeover whose compare-and-swap lost: another gateway changed the record first
    "OWNERSHIP_CONFLICT": ("ADOPT_CONFLICT",),
    "HANDSHAKE_FLOOD": (
        "BAD_MAC1",
        "COOKIE_REQUIRED",
        "COOKIE_REPLY_LIMITED",
        "HANDSHAKE_AUTH_FAILED",
        "HANDSHAKE_RATE_LIMITED",
        "BAD_COOKIE_REPLY",
    ),
    "UNKNOWN_PEER": ("UNKNOWN_PEER",),
    "SPOOFED_INNER_SOURCE": ("SOURCE_NOT_ALLOWED",),
    "MALFORMED_PACKET": ("MALFORMED_HEADER", "SHORT_PACKET", "BAD_LENGTH", "UNEXPECTED_HANDSHAKE"),
    "UNKNOWN_RECEIVER": ("UNKNOWN_INDEX",),
}


class Peer:
    """A client the gateway accepts (or the gateway a client talks to)."""

    __slots__ = (
        "public_key", "key_hex", "networks", "exact", "wide", "last_init_ms", "last_init_at",
        "sessions", "name", "psk",
    )  # fmt: skip

    def __init__(
        self,
        public_key: bytes,
        allowed_ips: Iterable[str] = (),
        name: str = "",
        psk: bytes | None = None,
    ) -> None:
        self.public_key = public_key
        #: made once with the configuration, not once per session (ownership records)
        self.key_hex = public_key.hex()
        #: the pre-shared key both ends mix into the handshake (32 zero bytes: none)
        self.psk = psk if psk is not None else bytes(32)
        if len(self.psk) != 32:
            raise ValueError("a psk must be 32 bytes")
        self.name = name or self.key_hex[:16]
        self.networks = tuple(ipaddress.ip_network(a, strict=False) for a in allowed_ips)
        self.exact = frozenset(
            n.network_address.packed for n in self.networks if n.num_addresses == 1
        )
        #: the allowed IPs wider than one address (the gateway's prefix routes)
        self.wide = tuple(n for n in self.networks if n.num_addresses > 1)
        self.last_init_ms = -1
        #: when (the gateway's clock) its last initiation was accepted
        self.last_init_at = float("-inf")
        self.sessions: list[Session] = []

    def allows(self, packet: bytes) -> bool:
        """Is the inner packet's source address one of this peer's allowed IPs?"""
        v = packet[0] >> 4
        if v == 4 and len(packet) >= 20:
            src = packet[12:16]
        elif v == 6 and len(packet) >= 40:
            src = packet[8:24]
        else:
            return False
        if src in self.exact:
            return True
        addr = ipaddress.ip_address(src)
        return any(addr in n for n in self.networks)


def destination(packet: bytes) -> bytes | None:
    """Destination address bytes of an IPv4/IPv6 packet, None if it is neither."""
    v = packet[0] >> 4 if packet else 0
    if v == 4 and len(packet) >= 20:
        return packet[16:20]
    if v == 6 and len(packet) >= 40:
        return packet[24:40]
    return None


def address_bytes(path: PathHandle | None) -> bytes:
    """What a cookie is bound to: the path's remote address."""
    addr = getattr(path, "remote_address", None)
    return repr(addr).encode()


class NodeCore:
    """What gateways and clients share. Not used directly: see GatewayCore, ClientCore."""

    role = "node"
    #: the IRateLimitPolicy of transport switches (set by GatewayCore and ClientCore)
    switch_limiter: Any

    def __init__(
        self,
        *,
        node_id: str,
        private_key: bytes,
        policy: Policy,
        rng: Rng,
        now: float,
        max_sessions: int | None = None,
        handshake_retry_ms: int = 1000,
        handshake_timeout_ms: int = 15_000,
        reattach_interval_ms: int = 250,
        stats_interval_s: float = 60.0,
        stats_idle_interval_s: float = 3600.0,
        security_interval_s: float = 10.0,
    ) -> None:
        self.node_id = node_id
        self.me = Identity(private_key)
        self.policy = policy
        self._key_lifetime = float(policy.key_lifetime_s)
        self.rng = rng
        #: a fixed session table size (tests, benchmarks); None: the policy's
        #: ``session_table_size``, which a reload can change
        self._max_sessions = max_sessions
        self.handshake_retry = handshake_retry_ms / 1000.0
        self.handshake_timeout = handshake_timeout_ms / 1000.0
        self.reattach_interval = reattach_interval_ms / 1000.0
        self.stats_interval = stats_interval_s
        #: a quiet session's SESSION_STATS cadence (a busy one reports every stats_interval)
        self.stats_idle_interval = max(stats_idle_interval_s, stats_interval_s)
        #: how late the host's timers fire (seconds), as the service observes it: the
        #: probe timeout's floor is a small multiple of it (jumping/core/paths.py)
        self.timer_granularity = 0.001
        self.drops: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.index: dict[int, Keypair] = {}
        self.sessions: dict[bytes, Session] = {}
        self.pending: list[Output] = []
        #: feature bits this node announces (protocol revision 2): the service clears
        #: FEATURE_SEGMENTS when its TUN device cannot take GSO writes
        self.features = segments.FEATURE_SEGMENTS
        #: (at, session): an entry is the session's own while ``at is session.deadline``
        #: (the same float object); older ones are stale and skipped
        self._heap: list[tuple[float, Session]] = []
        self._running: Session | None = None  # the session whose timers are running
        self._handlers = tuple(getattr(self, name) for name in HANDLERS)
        self.security_interval = security_interval_s
        self._security_at = now
        self.security = ViolationLedger(SECURITY_VIOLATIONS)
        self._now = now

    # ------------------------------------------------------------------ plumbing
    def take(self) -> list[Output]:
        """Hand over (and forget) the outputs accumulated so far."""
        out, self.pending = self.pending, []
        return out

    def _drop(self, reason: str, path: PathHandle | None = None, s: Session | None = None) -> None:
        self.drops[reason] += 1
        self.pending.append(drop(reason))
        self.security.record(reason, source_prefix(path), s.sid_hex if s is not None else None)

    def _drop_from(self, reason: str, prefix: str | None) -> None:
        """:meth:`_drop` for a packet from no session, its source prefix already known."""
        self.drops[reason] += 1
        self.pending.append(drop(reason))
        self.security.record(reason, prefix)

    def _count(self, reason: str, path: PathHandle | None = None, s: Session | None = None) -> Drop:
        """Count a drop of the data plane and return its (shared) Drop; ``s``: the session
        it was aimed at, when known (its SECURITY_EVENT then names the session)."""
        self.drops[reason] += 1
        self.security.record(reason, source_prefix(path), s.sid_hex if s is not None else None)
        return drop(reason)

    def _emit(
        self, event_type: str, s: Session | None, reason: str | None = None, **fields: Any
    ) -> None:
        self.pending.append(
            Emit(
                event_type,
                s.sid_hex if s is not None else None,
                s.fsm.state_version if s is not None else 0,
                reason,
                fields,
            )
        )

    def _send(self, path: PathHandle | None, data: bytes | None, s: Session | None = None) -> None:
        if data is None or path is None:
            return
        self.pending.append(Send(path, data))
        if s is not None:
            s.tx_bytes += len(data)
            s.tx_packets += 1

    def _control(
        self, now: float, s: Session, kind: int, body: bytes = b"", path: PathHandle | None = None
    ) -> None:
        kp = s.current
        if kp is None:
            return
        target = path if path is not None else s.path
        self._send(target, kp.seal(kp.control_prefix, bytes((kind,)) + body), s)
        s.last_tx = now

    def _new_index(self) -> int:
        while True:
            i = int.from_bytes(self.rng(4), "little")
            if i and i not in self.index:
                return i

    def _transition(self, now: float, s: Session, reason: Reason, **fields: Any) -> bool:
        change = s.fsm.fire(reason)
        if change is None:
            self.counters["illegal_transition_refused"] += 1
            return False
        s.state_since = now
        self.counters[f"transition:{reason.value}"] += 1
        self._emit(
            "SESSION_STATE_CHANGE",
            s,
            reason.value,
            previous_state=change.previous.value,
            new_state=change.new.value,
            **fields,
        )
        if change.new is _TERMINATED:
            self._terminated(now, s, reason)
        else:
            self._entered(now, s, change.previous, change.new)
        return True

    def terminate(
        self, now: float, session_id: bytes, reason: Reason, detail: str = ""
    ) -> list[Output]:
        """Operator or ownership layer ends a session explicitly (the peer is told);
        ``detail`` goes in the event (e.g. the operator's ``--reason``)."""
        self._now = now
        s = self.sessions.get(session_id)
        if s is None:
            self._drop("UNKNOWN_SESSION")
        else:
            self._tell_peer_terminated(now, s, reason)
            self._transition(now, s, reason, detail=detail)
        return self.take()

    def _tell_peer_terminated(self, now: float, s: Session, reason: Reason) -> None:
        if s.current is not None and s.path is not None:
            self._control(now, s, wire.Control.TERMINATE, reason.value.encode()[:64])

    def _terminated(self, now: float, s: Session, reason: Reason) -> None:
        self.counters["sessions_ended"] += 1
        for kp in s.keypairs():
            self.index.pop(kp.local_index, None)
            kp.wipe()
        s.current = s.previous = s.next = None
        s.timers = array("d", (0.0,)) * len(s.timers)
        s.deadline = 0.0
        self.sessions.pop(s.session_id, None)
        self._forget_routes(s)
        # drop its switch history (IRateLimitPolicy.forget): left in the limiter, an ended
        # session's history stays until the limiter's key cap evicts it, about 900 B each
        # (a churn of roaming sessions grew a gateway by that much, up to max_keys)
        self.switch_limiter.forget(s.sid_hex)
        self._emit(
            "SESSION_TERMINATED",
            s,
            reason.value,
            lifetime_ms=int((now - s.created) * 1000),
            bytes_in=s.rx_bytes,
            bytes_out=s.tx_bytes,
            packets_in=s.rx_packets,
            packets_out=s.tx_packets,
        )
        if s.owned or s.owner_token is not None:
            self.pending.append(Release(s.sid_hex, s.owner_token))
            s.owned = False

    def _forget_routes(self, s: Session) -> None:
        """Subclass hook."""

    def _policy_changed(self, policy: Policy) -> None:
        """Subclass hook: apply a new policy's limits."""

    # ------------------------------------------------------------------ receive
    def receive(self, now: float, path: PathHandle, data: bytes) -> list[Output]:
        """Any datagram from any path. Never raises; returns the outputs (the inner packet
        of a DATA message as ``WriteTun``)."""
        self._now = now
        if data[:1] == _SEGMENT_BYTE:
            got = self.receive_batch(now, path, (data,))
            return [*(WriteTun(p) for p in got.packets), *got.outputs]
        r = self._receive_one(now, path, data)
        if isinstance(r, bytes):
            self.pending.append(WriteTun(r))
        elif r is not None:
            self.pending.append(r)
        return self.take()

    def receive_batch(self, now: float, path: PathHandle, datagrams: Iterable[bytes]) -> Received:
        """A run of datagrams from one path (one read of a socket): the core reads each
        wire type itself; DATA goes through the lean path. Never raises.

        After one DATA or DATA_SEGMENT datagram opened the ordinary way, the datagrams that
        follow under the same keypair take :meth:`_open_lean` while the session stays in
        the plain case (attached, current keys, this path, owned, awake): the checks that
        cannot change within one batch are made once, not per datagram."""
        self._now = now
        packets: list[bytes | segments.SegmentRun] = []
        append = packets.append
        open_data = self._open_data
        open_lean = self._open_lean
        source_allowed = self._source_allowed
        run: segments.SegmentRun | None = None
        lean: Keypair | None = None  # the keypair of the plain case, once established
        lean_index = b""
        if type(datagrams) is not list:
            datagrams = list(datagrams)
        n = len(datagrams)
        i = 0
        while i < n:
            data = datagrams[i]
            i += 1
            kind = data[:1]
            if kind == _DATA_BYTE:
                if lean is not None and data[4:8] == lean_index:
                    r = open_lean(path, lean, data)
                    if r is None:
                        lean = None
                        r = open_data(now, path, data)
                    elif type(r) is bytes and not source_allowed(lean.session, r):
                        r = self._count("SOURCE_NOT_ALLOWED", path, lean.session)
                else:
                    lean = None
                    r = open_data(now, path, data)
                    if type(r) is bytes:
                        lean, lean_index = self._lean_keypair(path, data)
                if type(r) is bytes:
                    append(r)
                    run = None
            elif kind == _SEGMENT_BYTE:
                if not self.features & _SEGMENTS:
                    self._count("SEGMENTS_NOT_OFFERED")
                    continue
                if lean is not None and data[4:8] == lean_index:
                    r = open_lean(path, lean, data)
                    if r is None:
                        lean = None
                        r = open_data(now, path, data)
                    elif type(r) is bytes:
                        chunk = data[2] | (data[3] << 8)
                        # joining a run means the same header as its first piece (which
                        # passed the source check); anything else is checked on its own
                        if run is not None and _extend_run(run, r, chunk):
                            i = self._join_pieces(path, lean, lean_index, run, datagrams, i)
                            continue
                        if not source_allowed(lean.session, r):
                            self._count("SOURCE_NOT_ALLOWED", path, lean.session)
                            continue
                else:
                    lean = None
                    r = open_data(now, path, data)
                    if type(r) is bytes:
                        lean, lean_index = self._lean_keypair(path, data)
                if type(r) is not bytes:
                    continue
                chunk = data[2] | (data[3] << 8)
                if run is None or not _extend_run(run, r, chunk):
                    run = _start_run(r, chunk)
                    if run is None:
                        self._count("MALFORMED_SEGMENT")
                        continue
                    append(run)
                if lean is not None:
                    i = self._join_pieces(path, lean, lean_index, run, datagrams, i)
            else:
                lean = None
                other = self._receive_one(now, path, data)
                if type(other) is bytes:
                    append(other)
        return Received(packets, self.take())

    def _join_pieces(
        self,
        path: PathHandle,
        kp: Keypair,
        index: bytes,
        run: segments.SegmentRun,
        datagrams: list[bytes],
        i: int,
    ) -> int:
        """The DATA_SEGMENT datagrams from ``datagrams[i]`` on that are, in order, the next
        pieces of ``run`` under ``kp`` (in the plain case, see :meth:`_lean_keypair`) with
        fresh counters above the replay window's top, joined in one loop; returns the index
        of the first datagram not taken, which the caller handles the ordinary way (so does
        a piece that authenticates but does not fit: nothing was changed for it)."""
        if run.last or i >= len(datagrams):
            return i
        t = run.template
        start = i
        i, run.next_index, end, last, taken = kp.recv_aead.open_pieces(  # type: ignore[union-attr]
            datagrams, i, index, kp.replay, run.next_index, t, run.gso_size,
            run.offset + run.size, ((t[2] << 8) | t[3]) - run.hl, run.pieces,
        )  # fmt: skip
        if i > start:
            run.size = end - run.offset
            run.last = last
            s = kp.session
            s.rx_bytes += taken
            s.rx_packets += i - start
        return i

    def _lean_keypair(self, path: PathHandle, data: bytes) -> tuple[Keypair | None, bytes]:
        """After ``data`` opened the ordinary way: its keypair if its session is in the
        plain case for :meth:`_open_lean` (else None), and the receiver index bytes."""
        kp = self.index.get(int.from_bytes(data[4:8], "little"))
        if kp is None:
            return None, b""
        s = kp.session
        if (
            path is s.path
            and kp is s.current
            and s.fsm.state is _ATTACHED
            and s.owned
            and not s.quiet
            and kp.recv_aead is not None
        ):
            return kp, data[4:8]
        return None, b""

    def _open_lean(self, path: PathHandle, kp: Keypair, data: bytes) -> bytes | Drop | None:
        """:meth:`_open_data` for a datagram under ``kp`` when an earlier datagram of the
        same batch and keypair found its session in the plain case (checked by
        :meth:`_lean_keypair`: nothing else in between could change that): the replay
        window, the AEAD and the counters only. The plaintext, the counted Drop, or None:
        not the plain case after all (the caller takes the ordinary path; nothing was
        changed)."""
        try:
            _t, v, r, _idx, counter = _HDR.unpack_from(data)
        except struct.error:
            return None
        if v != wire.VERSION or (r and _t != _SEGMENT):
            return None
        replay = kp.replay
        if not replay.check(counter):
            return self._count("REPLAY", path, kp.session)
        plain = kp.recv_aead.open(data)  # type: ignore[union-attr]
        if plain is None:
            return self._count("AUTH_FAILED", path, kp.session)
        if not replay.update(counter):
            return self._count("REPLAY", path, kp.session)
        s = kp.session
        s.rx_bytes += len(data)
        s.rx_packets += 1
        if not plain:
            return self._count("EMPTY_DATA")
        return plain

    def _receive_one(self, now: float, path: PathHandle, data: bytes) -> bytes | Drop | None:
        """Dispatch one datagram by its wire type: the inner packet, a Drop, or None
        (handled; its outputs are in ``pending``)."""
        try:
            t = wire.message_type(data) if len(data) <= wire.MAX_DATAGRAM else None
            if t is None:
                return self._count("MALFORMED_HEADER", path)
            if t == _DATA or t == _SEGMENT:
                return self._open_data(now, path, data)
            if t == _CONTROL:
                self._on_control(now, path, data)
            else:
                self._on_handshake(now, path, t, data)
        except Exception as e:  # pragma: no cover - a bug; counted so tests see it
            self.counters["internal_error"] += 1
            return self._count(f"INTERNAL_ERROR:{type(e).__name__}")
        return None

    def _open(self, now: float, path: PathHandle, data: bytes) -> tuple[Keypair, bytes] | Drop:
        """Authenticate and decrypt one DATA or CONTROL message: the keypair and plaintext,
        or the (counted) Drop. The one place that decides what a session accepts."""
        try:
            _t, v, r, idx, counter = _HDR.unpack_from(data)
        except struct.error:
            return self._count("SHORT_PACKET", path)
        if v != wire.VERSION or (r and _t != _SEGMENT):
            return self._count("MALFORMED_HEADER", path)
        kp = self.index.get(idx)
        if kp is None:
            return self._count("UNKNOWN_INDEX", path)
        if now - kp.created >= self._key_lifetime:
            # refused before any work on it, whether or not the timer wiped the keys yet
            return self._count("KEY_EXPIRED", path)
        replay = kp.replay
        if not replay.check(counter):
            return self._count("REPLAY", path, kp.session)
        aead = kp.recv_aead
        if aead is None:
            return self._count("KEY_WIPED", path)
        plain = aead.open(data)
        if plain is None:
            return self._count("AUTH_FAILED", path, kp.session)
        if not replay.update(counter):
            return self._count("REPLAY", path, kp.session)
        s = kp.session
        s.rx_bytes += len(data)
        s.rx_packets += 1
        if path is s.path:
            s.last_rx = now  # health is judged on what the *active* path delivers
            s.active_rx = now
            s.lost_since = 0.0
            if kp is not s.current or s.fsm.state is not _ATTACHED:
                self._unusual_rx(now, s, kp, path, plain)
        else:
            self._unusual_rx(now, s, kp, path, plain if data[0] == _CONTROL else None)
        return kp, plain

    def _open_data(self, now: float, path: PathHandle, data: bytes) -> bytes | Drop:
        """One DATA (or DATA_SEGMENT) datagram: the plaintext, or the (counted) Drop."""
        opened = self._open(now, path, data)
        if type(opened) is not tuple:
            return opened  # type: ignore[return-value]
        kp, plain = opened
        s = kp.session
        s.last_data = now
        if s.quiet:
            self._wake(now, s)
        if not plain:
            return self._count("EMPTY_DATA")
        if not s.owned:
            return self._not_owned(s, plain)
        if not self._source_allowed(s, plain):
            return self._count("SOURCE_NOT_ALLOWED", path, s)
        return plain

    def _source_allowed(self, s: Session, packet: bytes) -> bool:
        return True

    def _not_owned(self, s: Session, plain: bytes) -> Drop:
        """A data packet for a session this node does not own (fenced, or not yet)."""
        return self._count("NOT_OWNER")

    def _seal_data(self, now: float, packet: bytes) -> tuple[PathHandle, bytes] | Drop:
        """One TUN packet: ``(path, datagram)``, :data:`QUEUED`, or the (counted) Drop."""
        raise NotImplementedError

    def seal(self, now: float, packet: bytes) -> list[Output]:
        """One TUN packet, as outputs (``Send``)."""
        self._now = now
        r = self._seal_data(now, packet)
        if type(r) is tuple:
            self.pending.append(Send(r[0], r[1]))
        return self.take()

    def _seal_pieces(self, now: float, item: Pieces) -> tuple[PathHandle, list[bytes]] | Drop:
        """A TCP/IPv4 super-packet as DATA_SEGMENT datagrams (the caller checked
        :meth:`accepts_segments` for it in this same reactor turn)."""
        raise NotImplementedError

    def accepts_segments(self, packet: bytes) -> bool:
        """Would the session this packet goes to take it as DATA_SEGMENT pieces (it has
        keys and a path, and its peer announced the feature)? Else the caller cuts it into
        complete packets itself."""
        return False

    def seal_batch(self, now: float, packets: Iterable[bytes | Pieces]) -> Sealed:
        """A run of TUN packets (one wake-up of the device): datagrams grouped by path.
        An entry is an IP packet, or ``(packet, header_length, gso_size)`` for a TCP/IPv4
        super-packet the peer takes whole (:meth:`accepts_segments`)."""
        self._now = now
        sends: list[tuple[PathHandle, list[bytes]]] = []
        run: list[bytes] = []
        run_path: PathHandle | None = None
        seal_data = self._seal_data
        seal_pieces = self._seal_pieces
        for packet in packets:
            if type(packet) is tuple:
                many = seal_pieces(now, packet)
                if type(many) is tuple:
                    p = many[0]
                    if p is not run_path:
                        run = []
                        run_path = p
                        sends.append((p, run))
                    run += many[1]
                continue
            r = seal_data(now, packet)  # type: ignore[arg-type]
            if type(r) is tuple:
                p = r[0]
                if p is not run_path:
                    run = []
                    run_path = p
                    sends.append((p, run))
                run.append(r[1])
        return Sealed(sends, self.take())

    def _unusual_rx(
        self, now: float, s: Session, kp: Keypair, path: PathHandle, control: bytes | None = None
    ) -> None:
        """A packet authenticated under a non-current keypair, from another path, or while
        not ATTACHED: confirmations, grace-window packets, first binding."""
        if getattr(path, "provisional", False):  # an IProvisionalPath
            self.pending.append(ConfirmPath(cast(ProvisionalPath, path)))
        if kp is s.next:
            self._confirm(now, s, kp, path)
        elif kp is s.previous:
            self.counters["rx_previous_keypair"] += 1
        if s.path is None and s.fsm.state is not _TERMINATED:
            s.path = path
            s.last_rx = s.active_rx = now
            s.lost_since = 0.0
        elif path is not s.path:
            self.counters["rx_off_path"] += 1
            s.offpath_rx = now
            if control is None or control[:1] not in _PROBING:
                self._off_path(now, s, path)
        st = s.fsm.state
        if (st is State.VOLATILE or st is State.DEGRADED) and path is s.path:
            self._maybe_recovered(now, s)

    def _confirm(self, now: float, s: Session, kp: Keypair, path: PathHandle) -> None:
        """Gateway: the client used the keys we answered with: they become current."""

    def _off_path(self, now: float, s: Session, path: PathHandle) -> None:
        """An authenticated packet arrived on a path the session is not bound to."""

    # ------------------------------------------------------------------ control
    def _on_control(self, now: float, path: PathHandle, data: bytes) -> None:
        opened = self._open(now, path, data)
        if type(opened) is not tuple:
            self.pending.append(opened)  # type: ignore[arg-type]
            return
        kp, plain = opened
        s = kp.session
        if not plain:
            self._drop("EMPTY_CONTROL")
            return
        kind, body = plain[0], plain[1:]
        ctl = wire.Control
        if kind == ctl.KEEPALIVE:
            if len(body) >= segments.FEATURES.size:
                self._on_features(now, s, body, path)
            return
        if kind == ctl.PROBE:
            self._control(now, s, ctl.PROBE_REPLY, body[:64], path)
        elif kind == ctl.TERMINATE:
            self._peer_terminated(now, s, body)
        else:
            self._on_session_control(now, s, kind, body, path)

    def _features_body(self) -> bytes:
        return segments.FEATURES.pack(segments.REVISION, self.features)

    def _on_features(self, now: float, s: Session, body: bytes, path: PathHandle) -> None:
        """The peer's KEEPALIVE carried ``revision:u8 | features:u32`` (revision 2 and
        later): what both sides speak is used from now on. Subclass hook for the answer."""
        _revision, features = segments.FEATURES.unpack_from(body)
        s.peer_features = features & self.features

    def _on_session_control(
        self, now: float, s: Session, kind: int, body: bytes, path: PathHandle
    ) -> None:
        self._drop("UNEXPECTED_CONTROL")

    def _peer_terminated(self, now: float, s: Session, body: bytes) -> None:
        try:
            reason = Reason(body.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            reason = Reason.SECURITY_FAILURE
        if s.fsm.target(reason) is not _TERMINATED:
            reason = Reason.OPERATOR_TERMINATED
        self._transition(now, s, reason, detail="peer_terminated")

    def _on_handshake(self, now: float, path: PathHandle, t: int, data: bytes) -> None:
        self._drop("UNEXPECTED_HANDSHAKE")

    # ------------------------------------------------------------------ timers
    # Named per-session timers (jumping/core/timers.py): each is armed by the event that
    # needs it and has one ``_expired_<name>`` handler. One heap entry per session, at its
    # earliest armed timer; older entries of the session are stale and skipped.
    def _arm(self, s: Session, t: int, at: float) -> None:
        """Arm timer ``t`` of ``s`` for ``at`` (replacing its deadline)."""
        s.timers[t] = at
        if self._running is not s and (not s.deadline or at < s.deadline):
            self._push(s, at)

    def _arm_by(self, s: Session, t: int, at: float) -> None:
        """Arm timer ``t`` for ``at`` unless it is already armed for earlier."""
        cur = s.timers[t]
        if not cur or at < cur:
            self._arm(s, t, at)

    @staticmethod
    def _disarm(s: Session, t: int) -> None:
        s.timers[t] = 0.0

    def _push(self, s: Session, at: float) -> None:
        heap = self._heap
        if not heap or at < heap[0][0]:
            self.pending.append(ArmTimer(at))
        s.deadline = at  # this object, not only this value: the entry's mark of being live
        heapq.heappush(heap, (at, s))
        if len(heap) > 2 * len(self.sessions) + HEAP_SLACK:
            # entries go stale when a session ends or its deadline moves earlier, and a
            # stale one is only dropped when it reaches the top: an ended session's
            # lifetime entry (hours away) would keep the whole Session alive that long
            # (found by issue 18's churn). Rebuilt in place (tick may hold the list) once
            # stale entries outnumber live ones: amortized O(1) per push.
            heap[:] = [e for e in heap if e[0] is e[1].deadline]
            heapq.heapify(heap)
            self.counters["timer_heap_compactions"] += 1

    def tick(self, now: float) -> list[Output]:
        """Run every timer that is due; ends with an ``ArmTimer`` for the next one."""
        self._now = now
        heap = self._heap
        budget = 4 * len(self.sessions) + 64  # a bug can't turn one tick into a livelock
        while heap and heap[0][0] <= now:
            budget -= 1
            if budget < 0:
                self.counters["timer_budget_exhausted"] += 1
                break
            due, s = heapq.heappop(heap)
            if due is not s.deadline:
                continue  # stale: the session's timers were re-armed since
            s.deadline = 0.0
            if s.fsm.state is _TERMINATED:
                continue
            try:
                self._run_timers(now, s)
            except Exception as e:  # pragma: no cover - a bug; counted
                self._running = None
                self.counters["internal_error"] += 1
                self._drop(f"INTERNAL_ERROR:{type(e).__name__}")
        while heap and heap[0][0] is not heap[0][1].deadline:
            heapq.heappop(heap)
        self._node_timers(now)
        at = heap[0][0] if heap else None
        node_at = self._node_deadline()
        if node_at is not None and (at is None or node_at < at):
            at = node_at
        if at is not None:
            self.pending.append(ArmTimer(at))
        return self.take()

    def _run_timers(self, now: float, s: Session) -> None:
        timers = s.timers
        handlers = self._handlers
        self._running = s
        for t in ORDER[: len(timers)]:  # a gateway's session has only the gateway's
            due = timers[t]
            if due and due <= now:
                timers[t] = 0.0
                handlers[t](now, s)
                if s.fsm.state is _TERMINATED:
                    self._running = None
                    return
        self._running = None
        armed = [d for d in timers if d]
        if armed:
            self._push(s, max(min(armed), now + 0.0005))

    def next_deadline(self) -> float | None:
        at = self._heap[0][0] if self._heap else None
        node_at = self._node_deadline()
        if node_at is not None and (at is None or node_at < at):
            return node_at
        return at

    def _node_deadline(self) -> float | None:
        """When ``_node_timers`` next has something to do (None: nothing)."""
        return self._security_at + self.security_interval

    def _node_timers(self, now: float) -> None:
        """Node-wide timers: aggregated security events (a flood is a few events with
        counts, never one event per packet)."""
        if now - self._security_at >= self.security_interval:
            window_ms = int((now - self._security_at) * 1000)
            self._security_at = now
            for violation, sid, count, top, rest in self.security.flush(
                self.policy.security_top_sources
            ):
                self.counters["security_events"] += 1
                s = self.sessions.get(bytes.fromhex(sid)) if sid is not None else None
                self.pending.append(
                    Emit(
                        "SECURITY_EVENT", sid, s.fsm.state_version if s is not None else 0, None,
                        {"violation_type": violation, "count": count, "window_ms": window_ms,
                         "top_sources": top, "other_sources_count": rest},
                    )
                )  # fmt: skip

    # what arms timers ------------------------------------------------------------
    def _born(self, now: float, s: Session, handshake_until: float) -> None:
        """A session exists: its lifetime runs, and its handshake must finish in time."""
        self._arm(s, T.LIFETIME, s.created + self.policy.session_max_lifetime_s)
        self._arm(s, T.HANDSHAKE, handshake_until)

    def _keys_installed(self, now: float, s: Session) -> None:
        """``s.current`` is a new keypair (and ``s.previous`` the one it replaced)."""
        kp = s.current
        if kp is not None:
            self._arm(s, T.KEY_EXPIRY, kp.created + self.policy.key_lifetime_s)
        if s.previous is not None:
            self._arm(s, T.PREVIOUS_KEYS, now + self.policy.rekey_grace_ms / 1000.0)

    def _entered(self, now: float, s: Session, previous: State, new: State) -> None:
        """Timers that a state owns: armed on entering it, disarmed on leaving."""
        p = self.policy
        self._disarm(s, T.STATE)
        lost_until = self._lost_until(now, s)
        if new is State.VOLATILE:
            self._arm(s, T.STATE, min(now + p.volatile_to_degraded_ms / 1000.0, lost_until))
        elif new is State.RECOVERING:
            self._arm(s, T.STATE, min(now + p.recovery_window_ms / 1000.0, lost_until))
        elif new is State.DEGRADED:
            self._arm(s, T.STATE, lost_until)
        if previous is State.BIRTH:
            self._disarm(s, T.HANDSHAKE)
            s.last_data = now
            self._wake(now, s)

    def _expect_answer(self, now: float, s: Session) -> None:
        """We sent something that the peer answers (data, a probe): if nothing was
        outstanding, the silence clock starts now (detection starts with the first
        unanswered packet, also after idle)."""
        if s.first_unacked <= s.last_rx:
            s.first_unacked = now
            if not s.lost_since:
                s.lost_since = now  # kept across switch attempts until the path delivers
            if not s.timers[T.SILENCE]:
                self._arm(s, T.SILENCE, now + self._silence_step())

    def _silence_step(self) -> float:
        return self.policy.heartbeat_timeout_ms / 1000.0

    def _wake(self, now: float, s: Session) -> None:
        """Traffic flows again (or for the first time): the busy-session timers run."""
        s.quiet = False
        self._arm(s, T.IDLE, now + self.policy.idle_after_ms / 1000.0)
        self._arm_by(s, T.STATS, now + self.stats_interval)
        self._woke(now, s)

    def _woke(self, now: float, s: Session) -> None:
        """Subclass hook: a session goes from quiet to busy."""

    def _went_quiet(self, now: float, s: Session) -> None:
        """Subclass hook: a session goes quiet."""

    def _may_go_quiet(self, s: Session) -> bool:
        return True

    # the handlers ------------------------------------------------------------------
    def _expired_lifetime(self, now: float, s: Session) -> None:
        at = s.created + self.policy.session_max_lifetime_s
        if now < at:
            self._arm(s, T.LIFETIME, at)  # a policy reload moved it
            return
        self._tell_peer_terminated(now, s, Reason.SESSION_LIFETIME_EXCEEDED)
        self._transition(now, s, Reason.SESSION_LIFETIME_EXCEEDED)

    def _expired_handshake(self, now: float, s: Session) -> None:
        if s.fsm.state is State.BIRTH:
            if now - s.created >= self.handshake_timeout - _EPS:
                self._transition(now, s, Reason.HANDSHAKE_FAIL)
            else:
                self._arm(s, T.HANDSHAKE, s.created + self.handshake_timeout)

    def _expired_previous_keys(self, now: float, s: Session) -> None:
        prev, cur = s.previous, s.current
        if prev is None:
            return
        if cur is not None and now - cur.created < self.policy.rekey_grace_ms / 1000.0 - _EPS:
            self._arm(s, T.PREVIOUS_KEYS, cur.created + self.policy.rekey_grace_ms / 1000.0)
            return
        self.index.pop(prev.local_index, None)
        prev.wipe()
        s.previous = None

    def _expired_key_expiry(self, now: float, s: Session) -> None:
        kp = s.current
        if kp is None:
            return
        at = kp.created + self.policy.key_lifetime_s
        if now < at - _EPS:
            self._arm(s, T.KEY_EXPIRY, at)
            return
        # The keys are wiped; the keypair stays in the index as a tombstone (``previous``)
        # so that what still arrives under it is counted as KEY_EXPIRED, and the client's
        # NAT keepalive can still name it.
        self.counters["keys_expired"] += 1
        prev = s.previous
        if prev is not None:
            self.index.pop(prev.local_index, None)
            prev.wipe()
        kp.wipe()
        s.previous, s.current = self._spent(kp), None
        self._disarm(s, T.PREVIOUS_KEYS)

    def _spent(self, kp: Keypair) -> Keypair:
        """What stays of ``kp`` (wiped) once its keys expired: the keypair itself here (a
        client's NAT keepalive still names it); a gateway keeps less."""
        return kp

    def _expired_rekey(self, now: float, s: Session) -> None:
        """Only clients rekey (the gateway refuses expired keys instead)."""

    def _expired_silence(self, now: float, s: Session) -> None:
        st = s.fsm.state
        if s.first_unacked <= s.last_rx or st is State.BIRTH or st is State.RECOVERING:
            return
        p = self.policy
        silence = now - s.first_unacked
        timeout = p.heartbeat_timeout_ms / 1000.0
        dead = p.dead_after_ms / 1000.0
        if silence >= dead - _EPS:
            self._transition(now, s, Reason.TRANSPORT_DEAD, silence_ms=int(silence * 1000))
            return
        if silence >= timeout - _EPS and st is _ATTACHED:
            self._transition(now, s, Reason.HEARTBEAT_TIMEOUT, silence_ms=int(silence * 1000))
        at = s.first_unacked + (timeout if silence < timeout - _EPS else dead)
        self._arm(s, T.SILENCE, self._silent(now, s, at))

    def _silent(self, now: float, s: Session, at: float) -> float:
        """Subclass hook while the peer is silent; returns when to look again."""
        return at

    def _lost_until(self, now: float, s: Session) -> float:
        """When transport_lost_ttl_ms ends the session: that long after its first packet
        that went unanswered since the transport last delivered (``lost_since``; an idle
        session's silence is not a loss). Not lost: look again one TTL from now."""
        ttl = self.policy.transport_lost_ttl_ms / 1000.0
        return (s.lost_since if s.lost_since else now) + ttl

    def _expired_state(self, now: float, s: Session) -> None:
        p = self.policy
        st = s.fsm.state
        lost_until = self._lost_until(now, s)
        if st in _UNHEALTHY and now >= lost_until - _EPS:
            # nothing authenticated on the session's transport for transport_lost_ttl_ms,
            # across however many RECOVERING / DEGRADED stints (refused switches loop there)
            self._tell_peer_terminated(now, s, Reason.TRANSPORT_TTL_EXCEEDED)
            self._transition(
                now, s, Reason.TRANSPORT_TTL_EXCEEDED, silence_ms=int((now - s.lost_since) * 1000)
            )
        elif st is State.VOLATILE:
            at = s.state_since + p.volatile_to_degraded_ms / 1000.0
            if now >= at - _EPS:
                self._transition(now, s, Reason.VOLATILE_PERSISTED)
            else:
                self._arm(s, T.STATE, min(at, lost_until))
        elif st is State.RECOVERING:
            at = s.state_since + p.recovery_window_ms / 1000.0
            if now >= at - _EPS:
                self._tell_peer_terminated(now, s, Reason.RECOVERY_WINDOW_EXCEEDED)
                self._transition(now, s, Reason.RECOVERY_WINDOW_EXCEEDED)
            else:
                self._arm(s, T.STATE, min(at, lost_until))
        elif st is State.DEGRADED:
            self._arm(s, T.STATE, lost_until)

    def _expired_idle(self, now: float, s: Session) -> None:
        idle = self.policy.idle_after_ms / 1000.0
        at = s.last_data + idle
        if now < at - _EPS:
            self._arm(s, T.IDLE, at)
        elif not self._may_go_quiet(s):
            self._arm(s, T.IDLE, now + idle)
        else:
            s.quiet = True
            self.counters["sessions_went_quiet"] += 1
            self._went_quiet(now, s)

    def _expired_stats(self, now: float, s: Session) -> None:
        moved = s.last_data > s.stats_at  # data, not keepalives, since the last record
        slow = now - s.stats_at >= self.stats_idle_interval - _EPS
        if s.fsm.state in _BOUND and (
            (moved and now - s.stats_at >= self.stats_interval - _EPS) or slow
        ):
            s.stats_at = now
            moved = False
            self._emit(
                "SESSION_STATS", s, None, bytes_in=s.rx_bytes, bytes_out=s.tx_bytes,
                packets_in=s.rx_packets, packets_out=s.tx_packets,
                transport_id=getattr(s.path, "transport_id", None),
                **self._stats_fields(now, s),
            )  # fmt: skip
        if s.quiet and not moved:
            self._arm(s, T.STATS, s.stats_at + self.stats_idle_interval)
        else:
            self._arm(s, T.STATS, max(now, s.stats_at) + self.stats_interval)

    # client-only timers: no-ops here
    def _expired_heartbeat(self, now: float, s: Session) -> None:
        pass

    def _expired_candidates(self, now: float, s: Session) -> None:
        pass

    def _expired_probe_timeout(self, now: float, s: Session) -> None:
        pass

    def _expired_nat_keepalive(self, now: float, s: Session) -> None:
        pass

    def _expired_reattach(self, now: float, s: Session) -> None:
        pass

    def _expired_features(self, now: float, s: Session) -> None:
        pass

    def _maybe_recovered(self, now: float, s: Session) -> None:
        """The active path delivered while VOLATILE or DEGRADED: HEALTH_RECOVERED once it
        has done so for a heartbeat interval and its measurements allow it."""
        if now - s.state_since >= self.policy.heartbeat_interval_ms / 1000.0 and self._healthy(
            now, s
        ):
            self._transition(now, s, Reason.HEALTH_RECOVERED)

    def _stats_fields(self, now: float, s: Session) -> dict[str, Any]:
        """Subclass hook: path measurements for SESSION_STATS (RTT, loss)."""
        return {}

    def _healthy(self, now: float, s: Session) -> bool:
        """Subclass hook: do the active path's measurements allow HEALTH_RECOVERED?"""
        return True

    def _leave_path(self, s: Session) -> None:
        """The session stops using its bound path before a new one is bound (a recovery
        that tries other paths): remember it, and when it last delivered, for the switch."""
        if s.bound_before is None:
            s.bound_before = s.path
            s.left_rx, s.left_unacked = s.active_rx, s.first_unacked

    def _outage(self, now: float, s: Session, left: bool, latency_ms: int) -> dict[str, int]:
        """TRANSPORT_SWITCH's view of the outage as the user felt it: from the last
        authenticated packet on the old path (or, if the session had been idle since, the
        first packet sent after it that went unanswered) to the decision to switch
        (``detection_ms``) and to the new binding (``outage_ms``)."""
        heard, unacked = (s.left_rx, s.left_unacked) if left else (s.active_rx, s.first_unacked)
        start = heard
        if unacked - heard > self.policy.idle_after_ms / 1000.0:
            start = unacked  # nobody was waiting until this packet went out
        outage = max(0, int((now - start) * 1000))
        return {"detection_ms": max(0, outage - latency_ms), "outage_ms": outage}

    def _bind(
        self, now: float, s: Session, path: PathHandle, latency_ms: int | None = None
    ) -> None:
        left = s.bound_before is not None
        old = s.bound_before if left else s.path
        s.bound_before = None
        s.path = path
        s.attach_count += 1
        if old is None:
            self._emit(
                "TRANSPORT_ATTACHED", s, None,
                transport_id=getattr(path, "transport_id", None),
                transport_kind=getattr(path, "kind", None),
            )  # fmt: skip
        elif old is not path:
            if latency_ms is None:
                latency_ms = int((now - s.state_since) * 1000)
            outage = self._outage(now, s, left, latency_ms)
            self._emit(
                "TRANSPORT_SWITCH", s, None,
                old_transport_id=getattr(old, "transport_id", None),
                old_transport_kind=getattr(old, "kind", None),
                new_transport_id=getattr(path, "transport_id", None),
                new_transport_kind=getattr(path, "kind", None),
                switch_latency_ms=latency_ms, **outage,
            )  # fmt: skip
        s.active_rx = now
        s.lost_since = 0.0

    def path_lost(self, now: float, path: PathHandle) -> list[Output]:
        """A transport died (closed/reset): sessions bound to it notice at once."""
        self._now = now
        for s in list(self.sessions.values()):
            if s.path is path and s.fsm.state in (_ATTACHED, State.VOLATILE, State.DEGRADED):
                self._transition(now, s, Reason.TRANSPORT_DEAD, detail="transport_lost")
        return self.take()

    @property
    def max_sessions(self) -> int:
        """The session table's size (a smaller one after a reload ends no session: new ones
        are refused, or evict a quiet one, until the table is below it)."""
        if self._max_sessions is not None:
            return self._max_sessions
        return self.policy.session_table_size

    def set_policy(self, now: float, policy: Policy) -> list[Output]:
        """Apply a validated policy atomically; every later event carries its version."""
        self._now = now
        old = self.policy
        self.policy = policy
        self._key_lifetime = float(policy.key_lifetime_s)
        self._policy_changed(policy)
        self.switch_limiter.reconfigure(policy)
        self._emit(
            "POLICY_RELOADED", None, None, previous_policy_version=old.version,
            policy_digest=policy.digest(),
        )  # fmt: skip
        for s in self.sessions.values():
            # every armed timer looks again now; each handler re-arms for the new values
            timers = s.timers
            for t in ORDER[: len(timers)]:
                if timers[t]:
                    timers[t] = now
            if any(timers):
                self._push(s, now)
        return self.take()

    # ------------------------------------------------------------------ introspection
    def session_count(self) -> int:
        return len(self.sessions)

    def state_counts(self) -> Counter[str]:
        return Counter(s.fsm.state.value for s in self.sessions.values())


def _reattach_body(now: float, s: Session) -> bytes:
    return _REATTACH.pack(int(now * 1000), s.session_id)
