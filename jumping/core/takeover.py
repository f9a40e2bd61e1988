"""
Session takeover, the gateway's half (docs/DESIGN.md "Session takeover on another gateway").

A client whose gateway died or was fenced sends a resume initiation (Noise, fresh keys, its
SessionID and state_version) to another gateway of the cluster. A copy of any initiation
can be replayed by anyone from anywhere, so what the initiation alone may do here is
bounded: it can make this node *read* the session's ownership record and *answer*; only the
client's first authenticated packet under the answered keys, which nobody but the client can
produce, makes this node *claim* the session. In order:

1. **asked** — the initiation authenticated (Noise, a known peer, this node's in-memory
   replay check): ``Adopt`` asks the service to read the record and check it
   (:func:`adoption_error`: the record's client key is the initiator's, its state_version
   not ahead of the client's, its ``handshake_ts_ms`` older than this initiation's, so a
   replay of any initiation the cluster already accepted is refused here, by every node).
2. **answered** — the record checked (``adoption_checked`` with the record's fencing
   token): the handshake is answered; the keys wait as the ``next`` keypair of a *pending*
   session that is in no table but the receiver index (no route, no timer, no event, not
   counted as a session, never superseding one).
3. **claiming** — the client's first packet under those keys: ``Claim`` by compare-and-swap
   on the token read in step 2, writing the new owner, ``state_version + 1`` and this
   handshake's timestamp. Data packets that arrive meanwhile are held (a few, bounded).
4. ``claimed``: won — the session exists here from now on: RECOVERING at the client's
   state_version, ``OWNERSHIP_CHANGE`` (takeover), the keys confirmed, the path bound,
   ``REATTACH_OK``, the held packets delivered. Lost (another gateway's CAS won, or the
   record changed since it was read) — the client hears ``TERMINATE OWNERSHIP_LOST`` under
   the keys it proved, and this node forgets it without a trace in its events.

A replayed initiation therefore stops at step 1 (refused: an old timestamp) or at step 2
(answered, to whoever sent it, and nobody can use the answer); the pending entry expires
after the handshake timeout. Owner, state and events of the session stay as they were.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from jumping.core.fsm import Reason, State
from jumping.core.handshake import Response
from jumping.core.node import Peer
from jumping.core.outputs import Adopt, ArmTimer, Claim, Drop, Output, Release, WriteTun
from jumping.core.pathhandle import PathHandle
from jumping.core.session import Keypair, Session

#: pending takeovers at most (asked, answered or claiming); more are counted drops
ADOPTIONS_PENDING_MAX = 4096
#: data packets held per pending session while its claim is in flight
ADOPT_HELD_MAX = 32

#: counted drop reason of a refused takeover, by error
ADOPT_DROPS = {
    "wrong_client": "ADOPT_WRONG_CLIENT",
    "bad_record": "ADOPT_WRONG_CLIENT",
    "stale_state_version": "ADOPT_STALE_VERSION",
    "stale_handshake": "HANDSHAKE_REPLAY",
    "conflict": "ADOPT_CONFLICT",
    "unavailable": "ADOPT_UNAVAILABLE",
}


class _Adoption:
    """One pending takeover (see the module docstring for its three steps)."""

    __slots__ = (
        "hs", "peer", "path", "asked_at", "token", "previous_owner", "session", "claiming",
        "held",
    )  # fmt: skip

    def __init__(self, hs: Response, peer: Peer, path: PathHandle, now: float) -> None:
        self.hs, self.peer, self.path, self.asked_at = hs, peer, path, now
        self.token: int | None = None  # the record's token, once checked
        self.previous_owner: str | None = None  # the record's owner then
        self.session: Session | None = None  # the pending session, once answered
        self.claiming = False
        self.held: list[bytes] = []


def adoption_error(
    found: tuple[Mapping[str, Any], int] | None,
    client_key: str,
    state_version: int,
    handshake_ts_ms: int,
) -> str | None:
    """Why the record ``found`` (``backend.get``'s answer) must not be handed over to the
    initiator (hex ``client_key``, its ``state_version``, its initiation's timestamp), or
    None if the handshake may be answered. ``no_record``: nobody owns the session."""
    if found is None:
        return "no_record"
    record = found[0]
    if not isinstance(record, Mapping):
        return "bad_record"
    key = record.get("client_public_key")
    if not isinstance(key, str) or not hmac.compare_digest(key.encode(), client_key.encode()):
        return "wrong_client"
    accepted = record.get("handshake_ts_ms", 0)
    if not isinstance(accepted, int) or isinstance(accepted, bool):
        return "bad_record"
    if handshake_ts_ms <= accepted:
        return "stale_handshake"  # the cluster accepted this initiation or a newer one
    version = record.get("state_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > state_version:
        return "stale_state_version"
    return None


class SessionTakeover:
    """The takeover half of :class:`~jumping.core.gateway.GatewayCore` (a mixin: it uses
    the gateway's tables, ``_answer``, ``_confirm`` and ``_new_session``)."""

    # attributes of GatewayCore / NodeCore it uses
    sessions: dict[bytes, Session]
    index: dict[int, Keypair]
    pending: list[Output]
    counters: Any
    node_id: str
    handshake_timeout: float
    _now: float

    def _init_takeover(self) -> None:
        self._adopting: dict[bytes, _Adoption] = {}

    # -- step 1: asked -------------------------------------------------------------------
    def _request_adoption(self, now: float, hs: Response, peer: Peer, path: PathHandle) -> None:
        sid = hs.session_id
        self._expire_adoptions(now)
        ad = self._adopting.get(sid)
        if ad is not None and ad.claiming:
            self._drop("ADOPT_CLAIMING")  # the client already proved keys answered here
            return
        if ad is None:
            if len(self._adopting) >= ADOPTIONS_PENDING_MAX:
                self._drop("ADOPT_BACKLOG")
                return
            ad = self._adopting[sid] = _Adoption(hs, peer, path, now)
        else:
            # a newer initiation (this node's replay check passed) replaces the older one;
            # keys already answered are forgotten and the record is read again for it
            waiting = ad.token is None and now - ad.asked_at < self.handshake_timeout
            self._forget_pending(ad)
            ad.hs, ad.peer, ad.path, ad.token = hs, peer, path, None
            if waiting:
                self.counters["adopt_coalesced"] += 1  # one question at a time
                return
            ad.asked_at = now
        self.counters["adopt_requests"] += 1
        self.pending.append(
            Adopt(sid.hex(), peer.public_key.hex(), hs.state_version, hs.timestamp_ms)
        )

    # -- step 2: answered ------------------------------------------------------------------
    def adoption_checked(
        self,
        now: float,
        session_id: str,
        token: int | None,
        error: str | None,
        owner: str | None = None,
    ) -> list[Output]:
        """The service read and checked the record of an ``Adopt``: ``token`` is the
        record's fencing token (the claim's CAS expectation) and ``owner`` its owner node,
        or None with ``error``
        (``no_record``, ``wrong_client``, ``stale_state_version``, ``stale_handshake``,
        ``unavailable``...)."""
        self._now = now
        try:
            sid = bytes.fromhex(session_id)
        except ValueError:
            self._drop("ADOPT_UNKNOWN")
            return self.take()
        ad = self._adopting.get(sid)
        if ad is None or ad.token is not None or ad.claiming or sid in self.sessions:
            self._drop("ADOPT_UNKNOWN")
            return self.take()
        if token is None:
            del self._adopting[sid]
            if error == "no_record":
                # nobody owns it: the session is over cluster-wide. As a single gateway
                # does, answer with a new session; the client sees the new SessionID and
                # ends the old one explicitly (OWNERSHIP_LOST) before adopting it.
                s = self._new_session(now, ad.peer, self.rng(16))
                if s is not None:
                    self.counters["sessions_created"] += 1
                    self._answer(now, ad.path, ad.hs, s)
                return self.take()
            self.counters[f"adopt_refused:{error}"] += 1
            self._drop(ADOPT_DROPS.get(error or "", "ADOPT_REFUSED"))
            return self.take()
        ad.token = token
        ad.previous_owner = owner
        # a pending session: in no table but the receiver index of its answered keys
        ad.session = Session(sid, ad.peer, now, ad.hs.state_version)
        self._answer(now, ad.path, ad.hs, ad.session)
        self._expire_adoptions(now)  # arms its expiry
        return self.take()

    def _pending_adoption(self, s: Session) -> _Adoption | None:
        ad = self._adopting.get(s.session_id) if self._adopting else None
        return ad if ad is not None and ad.session is s else None

    # -- step 3: claiming ------------------------------------------------------------------
    def _proved(self, now: float, ad: _Adoption, path: PathHandle) -> None:
        """The client's first packet under the answered keys: claim the session."""
        if ad.claiming:
            return
        s = ad.session
        assert s is not None and s.next is not None and ad.token is not None
        ad.claiming = True
        ad.path = path
        self.counters["adopt_claims"] += 1
        record = self._record(s, s.next.handshake_ms, s.fsm.state_version + 1)
        record["previous_owner"] = ad.previous_owner
        self.pending.append(Claim(s.sid_hex, record, ad.token))

    def _hold(self, s: Session, plain: bytes) -> Drop | None:
        """A data packet for a pending session: held while its claim is in flight."""
        ad = self._pending_adoption(s)
        if ad is None or not ad.claiming:
            return None
        if len(ad.held) >= ADOPT_HELD_MAX:
            return self._count("ADOPT_HELD_OVERFLOW")
        ad.held.append(plain)
        self.counters["adopt_held"] += 1
        return Drop("ADOPT_HELD")

    # -- step 4: claimed -------------------------------------------------------------------
    def _adoption_claimed(
        self, now: float, ad: _Adoption, token: int | None, error: str | None
    ) -> None:
        s = ad.session
        assert s is not None
        sid = s.session_id
        kp = s.next
        if token is None or kp is None or sid in self.sessions:
            if token is not None:
                self.pending.append(Release(s.sid_hex, token))
            self.counters[f"adopt_refused:{error or 'gone'}"] += 1
            self._drop(ADOPT_DROPS.get(error or "", "ADOPT_CONFLICT"))
            if kp is not None and ad.path is not None:
                # it proved the keys, so it hears us: resume elsewhere (or here, anew)
                s.current, s.next, s.path = kp, None, ad.path
                self._tell_peer_terminated(now, s, Reason.OWNERSHIP_LOST)
            self._forget_pending(ad)
            return
        if not self._register(now, s):
            self.pending.append(Release(s.sid_hex, token))
            self._forget_pending(ad)
            return
        # The session arrives with its history: RECOVERING at the client's state_version
        # (no transition here); the packet that proved the keys makes it ATTACHED with
        # REATTACH_OK (docs/protocol.md#transitions).
        s.fsm.state = State.RECOVERING
        s.state_since = now
        s.owned = True
        s.owner_token = token
        s.path = None
        self.counters["sessions_adopted"] += 1
        self._emit(
            "OWNERSHIP_CHANGE", s, None, owner=self.node_id, fencing_token=token,
            detail="takeover",
        )  # fmt: skip
        self._confirm(now, s, kp, ad.path)
        for plain in ad.held:
            if self._source_allowed(s, plain):
                self.pending.append(WriteTun(plain))
            else:
                self._count("SOURCE_NOT_ALLOWED")

    # -- bookkeeping -----------------------------------------------------------------------
    def _forget_pending(self, ad: _Adoption) -> None:
        s = ad.session
        if s is not None:
            for kp in s.keypairs():
                self.index.pop(kp.local_index, None)
                kp.wipe()
            s.current = s.previous = s.next = None
        ad.session = None
        ad.held = []
        ad.claiming = False

    def _expire_adoptions(self, now: float) -> None:
        """Pending takeovers nobody completed within the handshake timeout go, silently;
        a timer is armed for the next one to go."""
        if not self._adopting:
            return
        limit = self.handshake_timeout
        for sid, ad in list(self._adopting.items()):
            if not ad.claiming and now - ad.asked_at >= limit:
                self._forget_pending(ad)
                del self._adopting[sid]
                self.counters["adopt_expired"] += 1
        due = self._adoptions_due()
        if due is not None:
            self.pending.append(ArmTimer(due))

    def _adoptions_due(self) -> float | None:
        """When the next pending takeover expires (None: none waits)."""
        waiting = [ad.asked_at for ad in self._adopting.values() if not ad.claiming]
        return min(waiting) + self.handshake_timeout if waiting else None

    if TYPE_CHECKING:  # provided by GatewayCore / NodeCore

        def _drop(self, reason: str) -> None: ...
        def _count(self, reason: str) -> Drop: ...
        def _emit(
            self, event_type: str, s: Session | None, reason: str | None = None, **f: Any
        ) -> None: ...
        def take(self) -> list[Output]: ...
        def rng(self, n: int) -> bytes: ...
        def _answer(self, now: float, path: PathHandle, hs: Response, s: Session) -> None: ...
        def _confirm(self, now: float, s: Session, kp: Keypair, path: PathHandle) -> None: ...
        def _new_session(
            self, now: float, peer: Peer, session_id: bytes, state_version: int = 0
        ) -> Session | None: ...
        def _register(self, now: float, s: Session) -> bool: ...
        def _record(self, s: Session, handshake_ms: int, state_version: int) -> dict[str, Any]: ...
        def _tell_peer_terminated(self, now: float, s: Session, reason: Reason) -> None: ...
        def _source_allowed(self, s: Session, packet: bytes) -> bool: ...
