"""
Named per-session timers, the way wireguard-go's ``device/timers.go`` names its timers.

A session has one slot per timer in ``Session.timers``: an absolute deadline in seconds, or
0.0 when the timer is not armed. A timer is armed by the event that makes it necessary
(``NodeCore._arm``) and, once due, calls exactly one handler, ``_expired_<name>`` on the
node core (gateway and client may each override it). Due timers of one session run in the
order below. The one-line contract of each timer:

- ``LIFETIME``: armed at birth for ``session_max_lifetime_s``; the session ends
  (``SESSION_LIFETIME_EXCEEDED``), the peer is told.
- ``HANDSHAKE``: armed while the session is BIRTH (or a rekey is outstanding on the
  client); retries the initiation every ``handshake_retry_ms``, ``HANDSHAKE_FAIL`` after
  ``handshake_timeout_ms``.
- ``PREVIOUS_KEYS``: armed when a rekey leaves a previous keypair; wipes it
  ``rekey_grace_ms`` after the new one.
- ``KEY_EXPIRY``: armed when a keypair becomes current; ``rekey_after_s +
  key_expiry_grace_s`` after its handshake its keys are wiped (what arrives under them is
  then a ``KEY_EXPIRED`` drop, before decryption).
- ``REKEY``: client, armed when a keypair becomes current; at ``rekey_after_s`` starts a
  rekey if traffic flows (an idle session does not rekey: its first packet will).
- ``SILENCE``: armed by the first packet that expects an answer after we last heard the
  peer; judges the silence since then: ``heartbeat_timeout_ms`` → VOLATILE,
  ``dead_after_ms`` → RECOVERING (gateway: asks the client for an echo meanwhile).
- ``STATE``: armed on entering VOLATILE, DEGRADED or RECOVERING; ``volatile_to_degraded_ms``
  → DEGRADED, ``recovery_window_ms`` → TERMINATED, and in any of the three, nothing
  authenticated on the session's transport for ``transport_lost_ttl_ms`` since its first
  unanswered packet (an idle session's silence is not a loss) → TERMINATED
  (``TRANSPORT_TTL_EXCEEDED``: bounds a RECOVERING / DEGRADED loop of refused switches).
- ``IDLE``: armed by traffic; ``idle_after_ms`` after the last data packet (either way) the
  session goes quiet: no heartbeat, no probe, only the client's NAT keepalive.
- ``STATS``: armed by traffic; SESSION_STATS every ``stats_interval`` while bytes move, and
  at the slow ``stats_idle_interval`` for a quiet session.
- ``HEARTBEAT``: client, while traffic flows; probes the active path every
  ``heartbeat_interval_ms``, counts lost probes, applies the loss thresholds and selection.
- ``CANDIDATES``: client, while traffic flows; probes the other paths every
  ``probe_interval`` (every PTO/3 while the active path is suspected).
- ``PROBE_TIMEOUT``: client, armed with SILENCE; at PTO/3 an echo probe on the active
  path, at one PTO the path is suspected and the session fails over.
- ``NAT_KEEPALIVE``: client, while quiet; a keepalive every ``nat_keepalive_s`` to hold
  NAT bindings, unanswered, starting no other timer.
- ``REATTACH``: client, while RECOVERING; resends the reattach proof, moves on to the next
  candidate when the current one does not answer.
- ``FEATURES``: client, armed by the announcement of its revision and features under new
  keys; repeats it (at most ``FEATURE_ANNOUNCEMENTS`` times in all) while the gateway has
  not answered (a revision-1 gateway never does).
"""

from __future__ import annotations

from enum import IntEnum


class T(IntEnum):
    LIFETIME = 0
    HANDSHAKE = 1
    PREVIOUS_KEYS = 2
    KEY_EXPIRY = 3
    REKEY = 4
    SILENCE = 5
    STATE = 6
    IDLE = 7
    STATS = 8
    HEARTBEAT = 9
    CANDIDATES = 10
    PROBE_TIMEOUT = 11
    NAT_KEEPALIVE = 12
    REATTACH = 13
    FEATURES = 14


COUNT = len(T)
#: a gateway arms only the first nine (through STATS): the rest are the client's, and a
#: gateway session's timer list stops there (48 bytes less per session, issue 18)
GATEWAY_COUNT = T.STATS + 1
#: handler name of each timer, in the order due timers run
HANDLERS = tuple(f"_expired_{t.name.lower()}" for t in T)
#: timer ids as plain ints, in run order (no enum look-ups on the timer path)
ORDER = tuple(range(COUNT))
