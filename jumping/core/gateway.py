"""
The gateway side of the core: answers handshakes (with cookies under load), owns sessions,
routes TUN packets to sessions by destination, validates reattach proofs, and takes over
sessions another gateway of the cluster owned (:mod:`jumping.core.takeover`).

With a shared ownership backend the record carries the timestamp of the last handshake the
cluster accepted for the session (``handshake_ts_ms``): written when the session is claimed
(after the client's first packet under the new keys), rewritten (``Renew``) at every
confirmed rekey, checked by every gateway before it answers a resume.
"""

from __future__ import annotations

import hmac
import itertools
from collections.abc import Sequence
from typing import Any, cast

from jumping.core import wire
from jumping.core.fsm import Reason, State
from jumping.core.handshake import CookieChecker, HandshakeError, Response
from jumping.core.limits import SourceLimiter, TokenBucket, WorkMeter, source_prefix
from jumping.core.node import (
    _NO_SESSION,
    _REATTACH,
    NodeCore,
    Peer,
    Pieces,
    address_bytes,
    destination,
)
from jumping.core.noise import NoiseError, dh
from jumping.core.outputs import Claim, Drop, Output, Release, Renew, Send
from jumping.core.pathhandle import PathHandle
from jumping.core.policy import Policy
from jumping.core.ratelimit import SwitchLimiter
from jumping.core.routes import HostTable, PrefixTable
from jumping.core.segments import FEATURE_SEGMENTS as _SEGMENTS
from jumping.core.session import Keypair, Session, SpentKeys
from jumping.core.takeover import (  # noqa: F401  (adoption_error: re-exported)
    ADOPT_DROPS,
    ADOPTIONS_PENDING_MAX,
    SessionTakeover,
    adoption_error,
)
from jumping.core.timers import T

_MAC_OFFSET = wire.INIT.size  # mac1, then mac2, follow the initiation's body
_MAC2_OFFSET = _MAC_OFFSET + wire.MAC_LEN
_NO_MAC2 = bytes(wire.MAC_LEN)  # what an initiation without a cookie carries as mac2
_PROVEN = b"proven"  # marker: the initiation's mac2 is valid


class GatewayCore(NodeCore, SessionTakeover):
    """Accepts clients' handshakes; routes TUN packets to sessions by destination."""

    role = "gateway"

    def __init__(
        self,
        *,
        peers: Sequence[Peer],
        cookies: str = "load",
        switch_limiter: Any = None,
        adopt_sessions: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        #: answer a resume (an initiation naming a SessionID this node does not know) by
        #: asking the ownership backend to hand the session over (``Adopt``). Off for a
        #: single node (nobody else can own a session), on with a cluster backend.
        self.adopt_sessions = adopt_sessions
        self._init_takeover()
        self.peers = {p.public_key: p for p in peers}
        #: DH(our static key, peer's static key) per configured peer, computed when the peer
        #: is added (about 50 us each, so 2-3 s for 50 000 peers at start) and kept while it
        #: is configured: the responder's ``ss`` without a DH operation, one of four per
        #: handshake (wireguard-go precomputes it the same way, when a peer is created)
        self._static_static: dict[bytes, bytes] = {}
        #: quiet sessions in the order they went quiet: eviction candidates, oldest first.
        #: A list through the sessions' own ``quiet_prev``/``quiet_next`` (O(1) in and out,
        #: no table entry per session: issue 18); ``quiet_sessions()`` walks it
        self._quiet_head: Session | None = None
        self._quiet_tail: Session | None = None
        for key in self.peers:
            self._precompute(key)
        self.cookies = CookieChecker(self.me, self.rng)
        if cookies not in COOKIE_MODES:
            raise ValueError(f"cookies must be one of {', '.join(COOKIE_MODES)}, got {cookies!r}")
        #: "load": valid mac2 required while wasted handshake work is over the policy's
        #: fraction of a core (and for UNDER_LOAD_HOLD s after); "always"; "never"
        self.cookie_mode = cookies
        #: handshake work demanded (every initiation with a valid mac1); the service sets
        #: ``handshake_work.cost`` to what one handshake measurably costs on this host
        self.handshake_work = WorkMeter(tau=LOAD_TAU)
        #: the part of it that served no session: what cookies protect against (see
        #: ``under_load``); same cost per initiation
        self.wasted_work = WorkMeter(tau=LOAD_TAU)
        self._loaded_until = -1.0
        p = self.policy
        self.source_limiter = SourceLimiter(
            p.handshake_per_source_per_s, p.handshake_per_source_burst,
            p.handshake_source_table_size,
        )  # fmt: skip
        #: host routes: a peer's /32 and /128 -> the session that confirmed last
        self.routes: dict[bytes, Session] = {}
        self._ranks: dict[bytes, int] = {}
        self._rank_seq = itertools.count()
        #: every configured peer's /32 and /128s (changes with the configuration only)
        self.hosts = HostTable(self._rank)
        for peer in self.peers.values():
            self._rank(peer)
            self.hosts.add(peer, peer.exact)
        #: the wider allowed IPs of each peer with a live session, longest prefix first
        self.prefixes = PrefixTable(self._rank)
        #: the IRateLimitPolicy for transport switches; follows the policy (reconfigure)
        self.switch_limiter: Any = switch_limiter or SwitchLimiter()
        self.switch_limiter.reconfigure(self.policy)
        self.control_bucket = TokenBucket(p.control_plane_per_s, p.control_plane_burst, self._now)
        #: the budgets of cookie replies (docs/security.md): node-wide and per source prefix
        self.cookie_bucket = TokenBucket(p.cookie_replies_per_s, p.cookie_replies_burst, self._now)
        self.cookie_source_limiter = SourceLimiter(
            p.cookie_replies_per_source_per_s, p.cookie_replies_per_source_burst,
            p.cookie_source_table_size,
        )  # fmt: skip
        self._denied_at: dict[bytes, float] = {}

    # routing (jumping/core/routes.py) ------------------------------------------------
    def _rank(self, peer: Peer) -> int:
        """A peer's place in the configuration (ties between identical prefixes)."""
        r = self._ranks.get(peer.public_key)
        if r is None:
            r = self._ranks[peer.public_key] = next(self._rank_seq)
        return r

    def _source_allowed(self, s: Session, packet: bytes) -> bool:
        return bool(s.peer.allows(packet))

    def _set_routes(self, s: Session) -> None:
        routes = self.routes
        for key in s.peer.exact:
            routes[key] = s

    def _drop_routes(self, s: Session) -> None:
        """Remove the host routes that point at ``s`` (its peer's /32 and /128s)."""
        routes = self.routes
        for key in s.peer.exact:
            if routes.get(key) is s:
                del routes[key]

    def _forget_routes(self, s: Session) -> None:
        self._drop_routes(s)
        live = s.peer.sessions
        if s in live:
            live.remove(s)
            if not live and s.peer.wide:
                self.prefixes.remove(s.peer, s.peer.wide)

    def _route(self, packet: bytes) -> Session | None:
        dst = destination(packet)
        if dst is None:
            return None
        s = self.routes.get(dst)
        if s is not None:
            return s
        s = self.hosts.lookup(dst)
        if s is not None:
            return s
        peer = self.prefixes.lookup(dst)
        return peer.sessions[-1] if peer is not None else None

    def _seal_data(self, now: float, packet: bytes) -> tuple[PathHandle, bytes] | Drop:
        """Encrypt one TUN packet for the session owning its destination."""
        s = self._route(packet)
        if s is None:
            return self._count("NO_ROUTE")
        kp = s.current
        if kp is None or s.path is None or not s.owned:
            return self._count("NO_SESSION_KEYS")
        data = kp.seal(kp.data_prefix, packet)
        if data is None:
            return self._count("COUNTER_EXHAUSTED")
        s.tx_bytes += len(data)
        s.tx_packets += 1
        self._sent(now, s)
        return s.path, data

    def _sent(self, now: float, s: Session) -> None:
        s.last_tx = now
        s.last_data = now
        if s.quiet:
            self._wake(now, s)
        if s.first_unacked <= s.last_rx:
            self._expect_answer(now, s)

    def accepts_segments(self, packet: bytes) -> bool:
        s = self._route(packet)
        return (
            s is not None and s.current is not None and s.path is not None and s.owned
            and bool((s.peer_features or 0) & _SEGMENTS)
        )  # fmt: skip

    def _seal_pieces(self, now: float, item: Pieces) -> tuple[PathHandle, list[bytes]] | Drop:
        packet, hl, gso_size = item
        s = self._route(packet)
        if s is None:
            return self._count("NO_ROUTE")
        kp = s.current
        if kp is None or s.path is None or not s.owned:
            return self._count("NO_SESSION_KEYS")
        datagrams = kp.seal_pieces(packet, hl, gso_size)
        if datagrams is None:
            return self._count("COUNTER_EXHAUSTED")
        s.tx_bytes += len(packet) + len(datagrams) * (wire.OVERHEAD + hl) - hl
        s.tx_packets += len(datagrams)
        self._sent(now, s)
        return s.path, datagrams

    def _on_features(self, now: float, s: Session, body: bytes, path: PathHandle) -> None:
        super()._on_features(now, s, body, path)
        self._control(now, s, wire.Control.KEEPALIVE, self._features_body(), path)

    def under_load_now(self, now: float) -> bool:
        """Are initiations without a valid mac2 refused at ``now``? Reads only (status and
        metrics): :meth:`under_load` is what an initiation asks, and it may engage them."""
        if self.cookie_mode != "load":
            return self.cookie_mode == "always"
        return now < self._loaded_until

    def under_load(self, now: float) -> bool:
        """Must initiations carry a valid mac2 (a cookie: the source is proven) now?

        Yes while the handshake work *wasted* recently is over the policy's fraction of a
        core: initiations whose DH served no session (the key is unknown, a replay, the
        handshake did not authenticate, a peer initiating again within PEER_REINIT_S of
        its last one, as a flood with a stolen key would) and, once cookies are required,
        those refused for want of one whose source does not come back with the cookie
        (the demand of a spoofed flood, which lasts as long as the flood). What a
        cookie proves is only that the source receives at its address, which spoofed
        floods cannot do and legitimate clients always can: a legitimate reconnection
        storm wastes nothing and is served without the extra round trip; the per-source
        limits and the handshake queue bound it."""
        if self.cookie_mode != "load":
            return self.cookie_mode == "always"
        wasted = self.wasted_work
        wasted.cost = self.handshake_work.cost  # what the service measured one to cost
        if wasted.load(now) >= self.policy.handshake_load_fraction:
            self._loaded_until = now + UNDER_LOAD_HOLD
        return now < self._loaded_until

    def gate_state(self, now: float) -> tuple[bytes, bytes, bytes, int, float, int] | None:
        """While cookies are required, what lets an initiation gate in the service refuse
        the initiations without a valid mac2 as :meth:`_on_handshake` does (cookie secret,
        reply key, nonce prefix, the cookie replies the node's budget allows
        now, the per-source rate and burst); else None. :meth:`gated` folds in what the gate
        did. Reads only, like :meth:`under_load_now`."""
        if not self.under_load_now(now):
            return None
        bucket = self.cookie_bucket
        bucket.ready(now, 0.0)  # refilled to now, nothing taken
        p = self.policy
        return (
            *self.cookies.gate_keys(now), int(bucket.tokens),
            p.cookie_replies_per_source_per_s, p.cookie_replies_per_source_burst,
        )  # fmt: skip

    def gated(
        self, now: float, valid: int, send_errors: int, refused: list[tuple[str, int, list[Any]]],
        replays: Sequence[tuple[Keypair, int, list[Any]]] = (),
    ) -> None:  # fmt: skip
        """What an initiation gate armed with :meth:`gate_state` did: ``valid`` initiations
        with a valid mac1 refused for want of a cookie (demanded and wasted work, as in
        :meth:`_on_handshake`), per drop reason the count and the heaviest source prefixes
        (Misra-Gries, merged into the security ledger), replies the socket refused, and per
        keypair the DATA messages its replay window had seen (REPLAY, for its session)."""
        self.counters["gated_initiations"] += sum(c for _r, c, _h in refused)
        for kp, count, heavy in replays:
            self.counters["gated_replays"] += count
            self.drops["REPLAY"] += count
            self.security.merge("REPLAY", count, heavy, kp.session.sid_hex)
        if valid:
            self.handshake_work.add(now, valid)
            self.wasted_work.add(now, valid)
        if send_errors:
            self.counters["cookie_reply_send_errors"] += send_errors
        for reason, count, heavy in refused:
            self.drops[reason] += count
            self.security.merge(reason, count, heavy)
            if reason == "COOKIE_REQUIRED":
                self.counters["cookie_replies"] += count
                self.cookie_bucket.take(now, count)
        self.under_load(now)  # the flood's wasted work keeps cookies required

    def _wasted(self, now: float, reason: str, path: PathHandle | None = None) -> None:
        """An initiation's DH served no session: counted as ``reason`` and as wasted work."""
        self.wasted_work.add(now)
        self._drop(reason, path)

    def _policy_changed(self, policy: Policy) -> None:
        self.source_limiter.configure(
            policy.handshake_per_source_per_s, policy.handshake_per_source_burst,
            policy.handshake_source_table_size,
        )  # fmt: skip
        self.control_bucket.rate = policy.control_plane_per_s
        self.control_bucket.burst = policy.control_plane_burst
        self.cookie_bucket.rate = policy.cookie_replies_per_s
        self.cookie_bucket.burst = policy.cookie_replies_burst
        self.cookie_source_limiter.configure(
            policy.cookie_replies_per_source_per_s, policy.cookie_replies_per_source_burst,
            policy.cookie_source_table_size,
        )  # fmt: skip
        for s in self.sessions.values():
            s.validations = None  # the next validation starts a bucket under the new limits

    def _on_handshake(self, now: float, path: PathHandle, t: int, data: bytes) -> None:
        if t != wire.MessageType.HANDSHAKE_INIT:
            self._drop("UNEXPECTED_HANDSHAKE", path)
            return
        if len(data) != wire.INIT_LEN:
            self._drop("BAD_LENGTH", path)
            return
        cookies = self.cookies
        if not cookies.check_mac1(data, _MAC_OFFSET):
            self._drop("BAD_MAC1", path)
            return
        # as in WireGuard: the work asked of us is measured; over the budget, only a source
        # that proved it receives at its address (mac2 = a MAC under our cookie for it) gets
        # a DH, and then no more than its prefix's share
        self.handshake_work.add(now)
        prefix = source_prefix(path)
        proven = False
        if self.under_load(now):
            # the cheap path of a flood: an initiation without a mac2 (zero: a source that
            # has no cookie) needs no cookie computed to be refused; a reply only within
            # the node's and its source's budgets (the node's looked at first: a spoofed
            # flood beyond it touches no table), else no answer at all
            cookie = b""
            if data[_MAC2_OFFSET:] != _NO_MAC2:
                cookie = cookies.cookie(now, address_bytes(path))
                if cookies.check_mac2(cookie, data, _MAC_OFFSET):
                    cookie = _PROVEN
            if cookie is not _PROVEN:
                # refused demand: wasted unless its source comes back with the cookie
                self.wasted_work.add(now)
                bucket = self.cookie_bucket
                if bucket.ready(now) and self.cookie_source_limiter.allow(now, prefix):
                    bucket.take(now)
                    if not cookie:
                        cookie = cookies.cookie(now, address_bytes(path))
                    self.counters["cookie_replies"] += 1
                    self._drop_from("COOKIE_REQUIRED", prefix)
                    self.pending.append(Send(path, cookies.cookie_reply(cookie, data, _MAC_OFFSET)))
                else:
                    self._drop_from("COOKIE_REPLY_LIMITED", prefix)
                return
            proven = True
            self.counters["cookie_valid"] += 1
        if not self.source_limiter.allow(now, prefix):
            self._drop("HANDSHAKE_RATE_LIMITED", path)
            return
        try:
            hs = Response(self.me, data, self.rng, self._peer_static_static)
        except HandshakeError as e:
            self._wasted(now, str(e.args[0]), path)
            return
        peer = self.peers.get(hs.remote_static)
        if peer is None:
            self._wasted(now, "UNKNOWN_PEER", path)
            return
        if hs.timestamp_ms <= peer.last_init_ms:
            self._wasted(now, "HANDSHAKE_REPLAY", path)
            return
        peer.last_init_ms = hs.timestamp_ms
        if now - peer.last_init_at < PEER_REINIT_S:
            self.wasted_work.add(now)  # answered, but a client retries no faster than this
        peer.last_init_at = now
        s = self.sessions.get(hs.session_id) if hs.session_id != _NO_SESSION else None
        if s is not None and s.peer is not peer:
            self._wasted(now, "SESSION_PEER_MISMATCH")
            return
        if s is None and hs.session_id != _NO_SESSION and self.adopt_sessions:
            self._request_adoption(now, hs, peer, path)
            return
        if s is None:
            s = self._new_session(now, peer, self.rng(16))
            if s is None:
                return
            self.counters["sessions_created"] += 1
        self._answer(now, path, hs, s)
        if proven:
            # a source that came back with its cookie and completed a handshake: the
            # refusal that sent it the cookie was a legitimate client's, not waste (else a
            # legitimate storm's own refusals would keep cookies on for as long as it
            # lasts). Only an answered handshake takes one back, so valid mac2s alone
            # (one real address, rate-limited, or an unknown key) cannot cancel a flood
            self.wasted_work.add(now, -1.0)

    def _new_session(
        self, now: float, peer: Peer, session_id: bytes, state_version: int = 0
    ) -> Session | None:
        s = Session(session_id, peer, now, state_version)
        return s if self._register(now, s) else None

    def _register(self, now: float, s: Session) -> bool:
        """Enter ``s`` in the session table (a peer keeps at most two live sessions). A full
        table makes room by evicting the session that went quiet first, if it has moved no
        data for ``session_evict_idle_s``; else ``s`` is refused."""
        if len(self.sessions) >= self.max_sessions:
            victim = self._evictable(now)
            if victim is not None:
                self.counters["sessions_evicted"] += 1
                self._tell_peer_terminated(now, victim, Reason.SESSION_EVICTED)
                self._transition(now, victim, Reason.SESSION_EVICTED, detail="session_table_full")
            if len(self.sessions) >= self.max_sessions:  # one eviction per new session at most
                self._drop("SESSION_TABLE_FULL")
                return False
        self.sessions[s.session_id] = s
        self._born(now, s, now + self.handshake_timeout)
        live = s.peer.sessions
        live.append(s)
        if len(live) == 1 and s.peer.wide:
            self.prefixes.add(s.peer, s.peer.wide)
        if len(live) > 2:
            old = live[0]
            self._tell_peer_terminated(now, old, Reason.POLICY_DENIED)
            self._transition(now, old, Reason.POLICY_DENIED, detail="superseded")
        return True

    def _spent(self, kp: Keypair) -> Keypair:
        """An expired keypair's tombstone (jumping.core.session.SpentKeys), in the index in
        its place: it reads as a wiped Keypair (a duck, hence the cast)."""
        spent = SpentKeys(kp)
        self.index[kp.local_index] = cast(Keypair, spent)
        return cast(Keypair, spent)

    def _record(self, s: Session, handshake_ms: int, state_version: int) -> dict[str, object]:
        """The ownership record of ``s`` as this node writes it."""
        return {
            "client_public_key": s.peer.key_hex,
            "state_version": state_version,
            "owner": self.node_id,
            "handshake_ts_ms": handshake_ms,
        }

    def _push(self, s: Session, at: float) -> None:
        if self._adopting and self._pending_adoption(s) is not None:
            return  # a pending takeover has no timers: it expires with its table entry
        super()._push(s, at)

    def _answer(self, now: float, path: PathHandle, hs: Response, s: Session) -> None:
        """Write the handshake response for ``s``; its keys become ``s.next`` until the
        client's first packet under them confirms them."""
        local = self._new_index()
        message, est = hs.write(local, s.session_id, s.fsm.state_version, s.peer.psk)
        if s.next is not None:
            self.index.pop(s.next.local_index, None)
            s.next.wipe()
        kp = Keypair(
            s, local, est.remote_index, est.send_key, est.recv_key, now,
            self.policy.replay_window, confirmed=False, handshake_ms=hs.timestamp_ms,
        )  # fmt: skip
        s.next = kp
        self.index[local] = kp
        self.counters["handshakes_answered"] += 1
        self._send(path, message, s)
        if s.fsm.state is State.RECOVERING and not s.timers[T.STATE]:
            # adopted: the recovery window runs from now
            self._arm(s, T.STATE, now + self.policy.recovery_window_ms / 1000.0)

    def _confirm(self, now: float, s: Session, kp: Keypair, path: PathHandle) -> None:
        ad = self._pending_adoption(s)
        if ad is not None:
            self._proved(now, ad, path)  # a takeover: claim first (jumping.core.takeover)
            return
        if s.previous is not None:
            self.index.pop(s.previous.local_index, None)
            s.previous.wipe()
        s.previous, s.current, s.next = s.current, kp, None
        kp.confirmed = True
        self._keys_installed(now, s)
        self.counters["handshakes_confirmed"] += 1
        if s.fsm.state is State.RECOVERING and s.path is None:
            # an adopted session: the client proved the keys of its resume handshake
            self._bind(now, s, path)
            self._set_routes(s)
            s.last_rx = now
            self._transition(now, s, Reason.REATTACH_OK, detail="takeover")
            self._emit(
                "REATTACH_RESULT", s, Reason.REATTACH_OK.value, ok=True,
                transport_id=getattr(path, "transport_id", None),
            )  # fmt: skip
        elif s.fsm.state is State.BIRTH:
            self._bind(now, s, path)
            self._set_routes(s)
            self._transition(now, s, Reason.HANDSHAKE_OK)
            record = self._record(s, kp.handshake_ms, s.fsm.state_version)
            self.pending.append(Claim(s.sid_hex, record, None))
        else:
            self.counters["rekeys"] += 1
            if self.adopt_sessions and s.owned and s.owner_token is not None:
                # the cluster's record learns the newer accepted handshake: every gateway
                # refuses this initiation and every older one from now on
                record = self._record(s, kp.handshake_ms, s.fsm.state_version)
                self.pending.append(Renew(s.sid_hex, record, s.owner_token))

    def _evictable(self, now: float) -> Session | None:
        """The session that went quiet first, if it has moved no data for
        ``session_evict_idle_s``; None if there is none. ``_quiet`` is in the order sessions
        went quiet (a quiet session's timers stop, so it is the order of their last data);
        sessions that woke or ended are unlinked, so this is O(1), not a scan."""
        s = self._quiet_head
        if s is None:
            return None
        return s if s.last_data <= now - self.policy.session_evict_idle_s else None

    def quiet_sessions(self) -> list[Session]:
        """The eviction candidates, oldest first (introspection and tests; O(n))."""
        out = []
        s = self._quiet_head
        while s is not None:
            out.append(s)
            s = s.quiet_next
        return out

    def _quiet_unlink(self, s: Session) -> None:
        p, n = s.quiet_prev, s.quiet_next
        if p is None and self._quiet_head is not s:
            return  # not in the list
        if p is None:
            self._quiet_head = n
        else:
            p.quiet_next = n
        if n is None:
            self._quiet_tail = p
        else:
            n.quiet_prev = p
        s.quiet_prev = s.quiet_next = None

    def _terminated(self, now: float, s: Session, reason: Reason) -> None:
        self._quiet_unlink(s)  # an ended session keeps no link to the live ones
        super()._terminated(now, s, reason)

    def _went_quiet(self, now: float, s: Session) -> None:
        if s.quiet_prev is not None or self._quiet_head is s:
            return  # already in the list: it keeps its place
        tail = self._quiet_tail
        s.quiet_prev = tail
        if tail is None:
            self._quiet_head = s
        else:
            tail.quiet_next = s
        self._quiet_tail = s

    def _woke(self, now: float, s: Session) -> None:
        self._quiet_unlink(s)

    def _precompute(self, key: bytes) -> None:
        try:
            self._static_static[key] = dh(self.me.private, key)
        except NoiseError:  # a low-order key: its handshakes fail to authenticate, as before
            pass

    def _peer_static_static(self, remote: bytes) -> bytes | None:
        """DH(our static key, ``remote``) if ``remote`` is a configured peer's key; None for
        any other key (the handshake computes it, then the initiation is UNKNOWN_PEER)."""
        return self._static_static.get(remote)

    def set_peers(self, now: float, peers: Sequence[Peer]) -> list[Output]:
        """Apply a reloaded ``[[peers]]`` list, live: a new peer can connect at once; a
        removed peer's sessions end with ``POLICY_DENIED`` (the peer is told); a kept
        peer's ``allowed_ips``, name and pre-shared key change in place (its session keeps
        its state, keys, index and path; routes follow the new prefixes at once). Peers
        that did not change are not touched, and nothing is emitted for them."""
        self._now = now
        wanted = {p.public_key: p for p in peers}
        for key in [k for k in self.peers if k not in wanted]:
            gone = self.peers.pop(key)
            self.hosts.remove(gone, gone.exact)
            self._ranks.pop(key, None)
            self._static_static.pop(key, None)
            for sid, ad in list(self._adopting.items()):
                if ad.peer is gone and ad.session is None and not ad.claiming:
                    del self._adopting[sid]  # a takeover not yet answered: forget it
            for s in list(gone.sessions):
                self._tell_peer_terminated(now, s, Reason.POLICY_DENIED)
                self._transition(now, s, Reason.POLICY_DENIED, detail="peer_removed")
        for key, new in wanted.items():
            old = self.peers.get(key)
            if old is None:
                self.peers[key] = new
                self._precompute(key)
                self._rank(new)
                self.hosts.add(new, new.exact)
                continue
            old.name, old.psk = new.name, new.psk
            if old.networks != new.networks:
                for x in old.sessions:
                    self._drop_routes(x)
                if old.sessions and old.wide:
                    self.prefixes.remove(old, old.wide)
                self.hosts.remove(old, old.exact)
                old.networks, old.exact, old.wide = new.networks, new.exact, new.wide
                self.hosts.add(old, old.exact)
                if old.sessions and old.wide:
                    self.prefixes.add(old, old.wide)
                for x in old.sessions:  # oldest first: the newest holds the routes
                    self._set_routes(x)
        return self.take()

    def claimed(
        self, now: float, session_id: str, token: int | None, error: str | None
    ) -> list[Output]:
        """The ownership backend answered a ``Claim``."""
        self._now = now
        ad = self._adopting.get(bytes.fromhex(session_id)) if self._adopting else None
        if ad is not None and ad.claiming:
            del self._adopting[bytes.fromhex(session_id)]
            self._adoption_claimed(now, ad, token, error)
            return self.take()
        s = self.sessions.get(bytes.fromhex(session_id))
        if s is None:
            if token is not None:
                self.pending.append(Release(session_id, token))
            return self.take()
        if token is not None:
            s.owner_token = token
            s.owned = True
            self._emit("OWNERSHIP_CHANGE", s, None, owner=self.node_id, fencing_token=token)
        else:
            reason = Reason.OWNERSHIP_LOST if error == "unavailable" else Reason.OWNERSHIP_CONFLICT
            self._tell_peer_terminated(now, s, reason)
            self._transition(now, s, reason, detail=error or "")
        return self.take()

    def renewed(
        self, now: float, session_id: str, token: int | None, error: str | None
    ) -> list[Output]:
        """The ownership backend answered a ``Renew``: ``token`` is our new fencing token,
        or None with ``error``: ``conflict`` (someone else holds the record: lost, fail
        closed) or ``unavailable`` (the record keeps its older handshake timestamp; the
        lease and the watch decide about ownership)."""
        self._now = now
        s = self.sessions.get(bytes.fromhex(session_id))
        if s is None or not s.owned:
            return self.take()
        if token is not None:
            s.owner_token = token
        elif error == "conflict":
            s.owned = False
            s.owner_token = None
            self._tell_peer_terminated(now, s, Reason.OWNERSHIP_LOST)
            self._transition(now, s, Reason.OWNERSHIP_LOST, detail="renew_refused")
        else:
            self.counters["renew_failed"] += 1
        return self.take()

    def ownership_lost(self, now: float, session_id: str) -> list[Output]:
        """The backend says we no longer own it (watch fired, lease lost): fail closed."""
        self._now = now
        s = self.sessions.get(bytes.fromhex(session_id))
        if s is not None:
            s.owned = False
            s.owner_token = None
            # tell the client (if it still hears us): it resumes on another gateway
            self._tell_peer_terminated(now, s, Reason.OWNERSHIP_LOST)
            self._transition(now, s, Reason.OWNERSHIP_LOST)
        return self.take()

    def _not_owned(self, s: Session, plain: bytes) -> Drop:
        held = self._hold(s, plain)
        return held if held is not None else super()._not_owned(s, plain)

    def _peer_terminated(self, now: float, s: Session, body: bytes) -> None:
        if self._pending_adoption(s) is not None:
            self._drop("ADOPT_PENDING")  # not a session here (yet): nothing to end
            return
        super()._peer_terminated(now, s, body)

    def _node_timers(self, now: float) -> None:
        super()._node_timers(now)
        self._expire_adoptions(now)
        # full buckets are no state: forgotten in bounded steps
        self.source_limiter.prune(now, PRUNE_PER_TICK)
        self.cookie_source_limiter.prune(now, PRUNE_PER_TICK)

    def _node_deadline(self) -> float | None:
        at = super()._node_deadline()
        due = self._adoptions_due()
        return due if at is None or (due is not None and due < at) else at

    def _on_session_control(
        self, now: float, s: Session, kind: int, body: bytes, path: PathHandle
    ) -> None:
        if self._pending_adoption(s) is not None:
            self._drop("ADOPT_PENDING")
            return
        ctl = wire.Control
        if kind == ctl.REATTACH:
            self._on_reattach(now, s, body, path)
        elif kind == ctl.RESPONSE:
            self._on_response(now, s, body, path)
        elif kind == ctl.PROBE_REPLY:
            pass  # the answer to our silence probe: being authenticated is all it had to be
        else:
            self._drop("UNEXPECTED_CONTROL")

    # timers --------------------------------------------------------------------------
    def _silence_step(self) -> float:
        return self.policy.heartbeat_interval_ms / 1000.0  # the first echo request

    def _silent(self, now: float, s: Session, at: float) -> float:
        """Data we sent is unanswered: ask the client for an echo every heartbeat interval
        (an idle client sends nothing by itself), until the silence thresholds decide."""
        if s.path is not None and s.current is not None:
            self.counters["silence_probes"] += 1
            self._control(now, s, wire.Control.PROBE, bytes(32))
        return min(at, now + self.policy.heartbeat_interval_ms / 1000.0)

    # path validation ------------------------------------------------------------
    # A path is used for the session only after the client answered a challenge sent on
    # it (return routability). Until then we send on it at most AMPLIFICATION x what we
    # received from it: a forged or rewritten source address can't make us a reflector.
    def _challenge(self, now: float, s: Session, path: PathHandle, why: str, received: int) -> None:
        ch = s.challenge
        if ch is None or type(ch) is tuple or ch.path is not path:
            # a budget per session first (one client cannot spend the others' share), then
            # the node-wide one
            budget = s.validations
            if budget is None:
                p = self.policy
                budget = s.validations = TokenBucket(
                    p.path_validations_per_s, p.path_validation_burst, now
                )
            if not budget.take(now):
                self._drop("VALIDATION_BUDGET", path)
                return
            if not self.control_bucket.take(now):
                self._drop("CONTROL_PLANE_LIMIT", path)
                return
            ch = s.challenge = _Challenge(path, why, now, self.rng(8))
            self.counters["path_challenges"] += 1
        ch.received += received
        if why == "reattach":
            ch.why = "reattach"
        if now - ch.sent_at < CHALLENGE_RETRY and ch.sent:
            return
        cost = wire.OVERHEAD + 1 + len(ch.nonce)
        if ch.attempts >= CHALLENGE_ATTEMPTS:
            self.counters["anti_amplification_limited"] += 1
            if not ch.failed:
                # every challenge went unanswered: this path will not carry the session
                ch.failed = True
                self.counters["path_validation_failed"] += 1
                self._emit(
                    "TRANSPORT_SWITCH_FAILED", s, Reason.REATTACH_VALIDATION_FAILED.value,
                    old_transport_id=getattr(s.path, "transport_id", None),
                    new_transport_id=getattr(path, "transport_id", None),
                    error="path_validation_timeout",
                )  # fmt: skip
            return
        if ch.sent + cost > AMPLIFICATION * ch.received:
            self.counters["anti_amplification_limited"] += 1
            return
        ch.sent += cost
        ch.sent_at = now
        ch.attempts += 1
        self.counters["path_challenges_sent"] += 1  # first sends and retries
        self._control(now, s, wire.Control.CHALLENGE, ch.nonce, path)

    def _off_path(self, now: float, s: Session, path: PathHandle) -> None:
        if s.fsm.state is State.BIRTH or s.fsm.terminated:
            return
        # NAT rebinding or a client that moved without telling us: validate, then maybe switch
        self._challenge(now, s, path, "rebinding", wire.OVERHEAD + 1)

    def _on_reattach(self, now: float, s: Session, body: bytes, path: PathHandle) -> None:
        p = self.policy
        self._emit("REATTACH_ATTEMPT", s, None, transport_id=getattr(path, "transport_id", None))
        ok = len(body) == _REATTACH.size
        if ok:
            ts_ms, sid = _REATTACH.unpack(body)
            ok = sid == s.session_id and abs(now * 1000 - ts_ms) <= p.reattach_proof_max_age_ms
        if not ok:
            self.counters["reattach_rejected"] += 1
            self._emit("REATTACH_RESULT", s, Reason.REATTACH_VALIDATION_FAILED.value, ok=False)
            self._drop("REATTACH_INVALID", path, s)
            return
        if path is s.path:
            if s.fsm.state is State.RECOVERING:
                self._transition(now, s, Reason.REATTACH_OK)
                self._emit("REATTACH_RESULT", s, Reason.REATTACH_OK.value, ok=True)
            self._control(now, s, wire.Control.REATTACH_ACK, body, path)
            return
        self._challenge(now, s, path, "reattach", wire.OVERHEAD + 1 + len(body))

    def _on_response(self, now: float, s: Session, body: bytes, path: PathHandle) -> None:
        ch = s.challenge
        if type(ch) is tuple:
            # the challenge was answered already: a copy of that answer is the client's own
            # answer to a retried challenge (a round trip longer than CHALLENGE_RETRY), not
            # an invalid proof. Only the client can seal it, on the path it was sent to.
            if ch[0] is path and hmac.compare_digest(body, ch[1]):
                self.counters["duplicate_responses"] += 1
                return
            ch = None
        if ch is None or ch.path is not path or not hmac.compare_digest(body, ch.nonce):
            self._drop("UNEXPECTED_RESPONSE")
            return
        # answered: what is kept is what recognises the answers to its retries (two
        # references in a tuple, the nonce's bytes already made), until the next challenge
        s.challenge = (ch.path, ch.nonce)
        if ch.why == "rebinding" and s.last_rx >= ch.started and path is not s.path:
            # the old path is alive too: a second live path is not a reason to move
            self.counters["offpath_ignored_live_active"] += 1
            return
        denied = self.switch_limiter.check(s.sid_hex, int(now * 1000))
        if denied is not None:
            self.counters["switch_denied"] += 1
            if (
                now - self._denied_at.get(s.session_id, -1e18)
                >= self.policy.switch_cooldown_ms / 1000
            ):
                self._denied_at[s.session_id] = now  # one event per cooldown per session
                if len(self._denied_at) > 4 * self.max_sessions:
                    self._denied_at.clear()
                self._emit(
                    "TRANSPORT_SWITCH_DENIED", s, denied,
                    old_transport_id=getattr(s.path, "transport_id", None),
                    new_transport_id=getattr(path, "transport_id", None),
                )  # fmt: skip
            return
        self.switch_limiter.record(s.sid_hex, int(now * 1000))
        if s.fsm.state is not State.RECOVERING:
            self._transition(now, s, Reason.TRANSPORT_DEAD, detail=f"client_{ch.why}")
        self._bind(now, s, path, latency_ms=int((now - ch.started) * 1000))
        s.last_rx = now
        self._transition(now, s, Reason.REATTACH_OK)
        self._emit("REATTACH_RESULT", s, Reason.REATTACH_OK.value, ok=True)
        self._control(
            now, s, wire.Control.REATTACH_ACK, _REATTACH.pack(int(now * 1000), s.session_id), path
        )


COOKIE_MODES = ("load", "always", "never")
#: time constant of the handshake-work meter, seconds (reacts within a fraction of a second)
LOAD_TAU = 0.25
#: once over the budget, cookies stay required this long (no flapping on the threshold)
UNDER_LOAD_HOLD = 1.0
#: a peer's initiation within this many seconds of its previous one counts as wasted
#: work (a client retries an unanswered initiation after handshake_retry_ms, 1 s, and
#: rekeys after minutes; many per second from one key is a flood with that key)
PEER_REINIT_S = 0.5
CHALLENGE_RETRY = 0.1
#: refilled source-limiter buckets forgotten per node tick (about 2 ms of work at most)
PRUNE_PER_TICK = 5_000
CHALLENGE_ATTEMPTS = 8
AMPLIFICATION = 3


class _Challenge:
    __slots__ = (
        "path", "why", "started", "nonce", "sent_at", "sent", "received", "attempts", "failed",
    )  # fmt: skip

    def __init__(self, path: PathHandle, why: str, now: float, nonce: bytes) -> None:
        self.path = path
        self.why = why
        self.started = now
        self.nonce = nonce
        self.sent_at = 0.0
        self.sent = 0
        self.received = 0
        self.attempts = 0
        self.failed = False  # TRANSPORT_SWITCH_FAILED was reported (once per challenge)
