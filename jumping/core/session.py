"""
One session's state: keypairs, FSM, active path, counters and its named timers.

A :class:`Keypair` is one handshake's keys (one per direction) with its own counter and
replay window. A session holds at most three: ``current``, ``previous`` (kept for
``rekey_grace_ms`` so packets in flight during a rekey are not lost, then wiped) and, on the
gateway, ``next`` (answered but not yet confirmed by the client's first packet).

Memory per session is bounded: a fixed number of keypairs, one replay window each, a fixed
set of counters (invariant 7 in docs/protocol.md).
"""

from __future__ import annotations

import math
from array import array
from typing import TYPE_CHECKING, Any

from jumping.core import aead as _aead
from jumping.core import wire
from jumping.core.fsm import SessionFSM
from jumping.core.pathhandle import PathHandle
from jumping.core.replay import WIPED, ReplayWindow
from jumping.core.timers import COUNT as TIMER_COUNT
from jumping.core.timers import GATEWAY_COUNT

_COUNTER_LIMIT = wire.COUNTER_LIMIT
_NO_PREFIX = b""


class Keypair:
    __slots__ = (
        "local_index",
        "remote_index",
        "send_aead",
        "recv_aead",
        "send_counter",
        "replay",
        "created",
        "confirmed",
        "session",
        "data_prefix",
        "handshake_ms",
    )

    def __init__(
        self,
        session: Session,
        local_index: int,
        remote_index: int,
        send_key: bytes,
        recv_key: bytes,
        now: float,
        replay_bits: int,
        confirmed: bool,
        handshake_ms: int = 0,
    ) -> None:
        self.session = session
        #: the timestamp (client clock, ms) of the initiation these keys answered
        self.handshake_ms = handshake_ms
        self.local_index = local_index
        self.remote_index = remote_index
        aead = _aead.Aead  # the C loops where built, else their Python twin (aead.py)
        self.send_aead: _aead.PyAead | None = aead(send_key)
        self.recv_aead: _aead.PyAead | None = aead(recv_key)
        self.send_counter = 0
        self.replay: ReplayWindow = _aead.Window(replay_bits)  # C where built: one object
        self.created = now
        self.confirmed = confirmed
        self.data_prefix = wire.DATA_PREFIX + remote_index.to_bytes(4, "little")

    @property
    def control_prefix(self) -> bytes:
        """Made when a control message is sent (rare), not kept: one object less per keypair
        to free among long-lived ones when the keys expire (issue 18)."""
        if self.send_aead is None:
            return _NO_PREFIX
        return wire.CONTROL_PREFIX + self.remote_index.to_bytes(4, "little")

    def seal(self, prefix: bytes, plaintext: bytes) -> bytes | None:
        """Encrypt one message; None if the keypair is wiped or its counter is exhausted."""
        aead = self.send_aead
        c = self.send_counter
        if aead is None or c >= _COUNTER_LIMIT:
            return None
        self.send_counter = c + 1
        return aead.seal(prefix + c.to_bytes(8, "little"), plaintext)

    def seal_pieces(self, packet: bytes, hl: int, gso_size: int) -> list[bytes] | None:
        """DATA_SEGMENT datagrams for a TCP/IPv4 super-packet (header length ``hl``): one
        per ``gso_size`` piece of its payload, each behind the super-packet's header, each
        sealed on its own. None if the keypair is wiped or its counters run out. One loop,
        no per-segment TCP work."""
        aead = self.send_aead
        count = -(-(len(packet) - hl) // gso_size) or 1
        c = self.send_counter
        if aead is None or c + count > _COUNTER_LIMIT:
            return None
        self.send_counter = c + count
        return aead.seal_pieces(packet, hl, gso_size, self.remote_index, c)

    def wipe(self) -> None:
        """Forget the keys. Python cannot zero the AEAD objects' memory; dropping the only
        references is what we can do (documented in SECURITY notes). The replay window goes
        too: without keys nothing is accepted, and a wiped keypair kept as a tombstone would
        otherwise hold its 1-5 KiB of bits for as long as its session stays idle."""
        self.send_aead = None
        self.recv_aead = None
        self.replay = WIPED
        # nothing is sealed any more: an idle session's wiped keypair keeps no bytes of its own
        self.data_prefix = _NO_PREFIX


class SpentKeys:
    """What a gateway keeps of a keypair once its keys expired: the session and the local
    index, so that what still arrives under it is refused as ``KEY_EXPIRED`` before
    any work (an idle session keeps only this: 48 bytes instead of a wiped
    :class:`Keypair`'s 190 with its integers, issue 18). Everything else reads as a wiped
    keypair's, and nothing is written to it. A client keeps its wiped Keypair instead: its
    NAT keepalive still names the expired keys (remote index, counter)."""

    __slots__ = ("session", "local_index")
    #: older than any key lifetime: what arrives under it is KEY_EXPIRED (the birth itself
    #: is not kept, a float and a slot less per idle session)
    created = -math.inf
    send_aead = recv_aead = None
    replay = WIPED
    data_prefix = control_prefix = _NO_PREFIX
    confirmed = True

    def __init__(self, kp: Keypair) -> None:
        self.session = kp.session
        self.local_index = kp.local_index

    def seal(self, prefix: bytes, plaintext: bytes) -> None:
        return None

    def wipe(self) -> None:
        pass


_ZERO = (0.0,)  # array("d", _ZERO) * n: exactly n doubles (from bytes, 12 for 9)

#: a session's numbers (times in seconds, counters): unboxed in the C base where it is built
_NUMBER_SLOTS = (
    "created", "last_rx", "last_tx", "state_since", "last_data", "stats_at", "active_rx",
    "left_rx", "first_unacked", "left_unacked", "lost_since", "offpath_rx",
    "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "attach_count",
)  # fmt: skip


class _PyNumbers:
    """The pure-Python twin of ``jumping.core._dataplane.SessionBase``: the same names as
    slots, each holding a float or int object (about 32 bytes each on top of the slot)."""

    __slots__ = _NUMBER_SLOTS


if TYPE_CHECKING:
    _Numbers = _PyNumbers
else:
    # the C base stores them as doubles and 64-bit ints inside the session (issue 18)
    _Numbers = _aead.CSessionBase if _aead.CSessionBase is not None else _PyNumbers

#: what every session keeps besides its numbers (a ClientSession adds its own)
_SESSION_SLOTS = (
    "session_id",
    "peer",
    "fsm",
    "current",
    "previous",
    "next",
    "path",
    "deadline",
    "timers",
    "quiet",
    "handshake",
    "owner_token",
    "owned",
    "bound_before",
    "challenge",
    "peer_features",
    "validations",
    "quiet_prev",
    "quiet_next",
)


class Session(_Numbers):
    """Per-session state. The node core drives it; it holds data, not policy.

    What only a client keeps is in :class:`ClientSession`'s slots: a gateway holds one
    Session per client (issue 18: 100 000 of them), so it carries none of it. The client's
    attributes are declared here for the type checker only (a gateway never reads them)."""

    # the client's (slots of ClientSession)
    handshake_started: float
    handshake_attempts: int
    last_handshake_tx: float
    last_reattach_tx: float
    pto: float  # current probe timeout of the active path, seconds
    suspect_since: float
    reattach_sent: float
    resuming: Any  # host of the gateway that lost the session
    resume_hs: Any  # the pending resume initiation
    resume_turn: int  # rotates resume attempts over the other gateways
    features_sent: int  # announcements sent for the current keys
    features_at: float

    # a name, not a literal: the type checker then takes the client's attributes declared
    # above as this class's (they are ClientSession's slots; a gateway never touches them)
    __slots__ = _SESSION_SLOTS
    #: length of ``timers``: a gateway's session has only the gateway's timers
    TIMERS = GATEWAY_COUNT

    def __init__(self, session_id: bytes, peer: Any, now: float, state_version: int = 0) -> None:
        self.session_id = session_id
        self.peer = peer
        self.fsm = SessionFSM(state_version)
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self.path: PathHandle | None = None
        self.created = now
        self.last_rx = now
        self.last_tx = now
        self.state_since = now
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.rx_packets = 0
        self.tx_packets = 0
        self.deadline = 0.0  # earliest armed timer (0.0: none), see jumping/core/timers.py
        self.timers = array("d", _ZERO) * self.TIMERS  # raw doubles: no float objects, no spare
        self.last_data = now  # last DATA packet either way: traffic flows while it is recent
        self.quiet = False  # no traffic for idle_after_ms: no heartbeat, no probe
        #: a gateway's list of quiet sessions, in the order they went quiet (gateway.py)
        self.quiet_prev: Session | None = None
        self.quiet_next: Session | None = None
        self.handshake: Any = None
        self.stats_at = now
        self.owner_token: int | None = None
        self.owned = False
        self.attach_count = 0
        self.first_unacked = 0.0  # client: first data sent after we last heard the gateway
        #: the path before a recovery (for TRANSPORT_SWITCH)
        self.bound_before: PathHandle | None = None
        #: last authenticated packet on the bound path (never moved by hand, unlike last_rx)
        self.active_rx = now
        #: active_rx and first_unacked of bound_before when the session left it
        self.left_rx = now
        self.left_unacked = 0.0
        #: first packet that went unanswered since the bound path last delivered (0: none);
        #: transport_lost_ttl_ms counts from it
        self.lost_since = 0.0
        #: gateway: the pending path validation (a ``_Challenge``), or the last one answered
        #: as ``(path, nonce)`` (its retried copies are answered too), or None
        self.challenge: Any = None
        self.offpath_rx = 0.0
        #: feature bits the peer announced for the current keys (None: not heard yet;
        #: a revision-1 peer never announces any)
        self.peer_features: int | None = None
        self.validations: Any = None  # gateway: this session's path-validation budget

    def keypairs(self) -> tuple[Keypair, ...]:
        return tuple(k for k in (self.current, self.previous, self.next) if k is not None)

    @property
    def sid_hex(self) -> str:
        """The session id in hex (events, ownership records): made when asked, not kept,
        since nothing on the data path asks (issue 18: 81 bytes and a slot per session)."""
        return self.session_id.hex()

    def __lt__(self, other: Session) -> bool:
        """Orders the timer heap's entries of one deadline (jumping/core/node.py: ``(at,
        session)``, no sequence number of its own to keep): by session id, so that two
        runs with the same seed fire them in the same order."""
        return self.session_id < other.session_id


class ClientSession(Session):
    """A client's session: :class:`Session` and what only the initiator keeps (handshake
    retries, the probe timeout, resumption at another gateway, feature announcements)."""

    __slots__ = (
        "handshake_started", "handshake_attempts", "last_handshake_tx", "last_reattach_tx",
        "pto", "suspect_since", "reattach_sent", "resuming", "resume_hs", "resume_turn",
        "features_sent", "features_at",
    )  # fmt: skip
    TIMERS = TIMER_COUNT

    def __init__(self, session_id: bytes, peer: Any, now: float, state_version: int = 0) -> None:
        super().__init__(session_id, peer, now, state_version)
        self.handshake_started = 0.0
        self.handshake_attempts = 0
        self.last_handshake_tx = -1e18
        self.last_reattach_tx = -1e18
        self.pto = 0.15
        self.suspect_since = 0.0
        self.reattach_sent = 0.0
        self.resuming = None
        self.resume_hs = None
        self.resume_turn = 0
        self.features_sent = 0
        self.features_at = -1e18
