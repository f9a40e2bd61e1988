"""
The session state machine (docs/protocol.md#transitions), as data.

``TRANSITIONS`` is the whole table: anything not in it is refused and counted, never
improvised. ``table_digest()`` is pinned by a test so that a change to the table, the states
or the reason codes is always deliberate (reason codes are a public contract).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum


class State(str, Enum):
    BIRTH = "BIRTH"
    ATTACHED = "ATTACHED"
    VOLATILE = "VOLATILE"
    DEGRADED = "DEGRADED"
    RECOVERING = "RECOVERING"
    TERMINATED = "TERMINATED"


class Reason(str, Enum):
    HANDSHAKE_OK = "HANDSHAKE_OK"
    HANDSHAKE_FAIL = "HANDSHAKE_FAIL"
    LOSS_THRESHOLD_EXCEEDED = "LOSS_THRESHOLD_EXCEEDED"
    CONSECUTIVE_DROPS_EXCEEDED = "CONSECUTIVE_DROPS_EXCEEDED"
    HEARTBEAT_TIMEOUT = "HEARTBEAT_TIMEOUT"
    TRANSPORT_DEAD = "TRANSPORT_DEAD"
    HEALTH_RECOVERED = "HEALTH_RECOVERED"
    VOLATILE_PERSISTED = "VOLATILE_PERSISTED"
    POLICY_FORCED_RECOVERY = "POLICY_FORCED_RECOVERY"
    REATTACH_OK = "REATTACH_OK"
    REATTACH_VALIDATION_FAILED = "REATTACH_VALIDATION_FAILED"
    NO_CANDIDATE_TRANSPORTS = "NO_CANDIDATE_TRANSPORTS"
    SWITCH_RATE_LIMITED = "SWITCH_RATE_LIMITED"
    COOLDOWN_ACTIVE = "COOLDOWN_ACTIVE"
    RECOVERY_WINDOW_EXCEEDED = "RECOVERY_WINDOW_EXCEEDED"
    SESSION_LIFETIME_EXCEEDED = "SESSION_LIFETIME_EXCEEDED"
    TRANSPORT_TTL_EXCEEDED = "TRANSPORT_TTL_EXCEEDED"
    SECURITY_FAILURE = "SECURITY_FAILURE"
    OPERATOR_TERMINATED = "OPERATOR_TERMINATED"
    OWNERSHIP_LOST = "OWNERSHIP_LOST"
    OWNERSHIP_CONFLICT = "OWNERSHIP_CONFLICT"
    POLICY_DENIED = "POLICY_DENIED"
    SESSION_EVICTED = "SESSION_EVICTED"


S = State
R = Reason
_LIVE = (S.BIRTH, S.ATTACHED, S.VOLATILE, S.DEGRADED, S.RECOVERING)
_BOUND = (S.ATTACHED, S.VOLATILE, S.DEGRADED)

#: (from states, to state, reason codes) — docs/protocol.md#transitions, row by row.
TRANSITIONS: tuple[tuple[tuple[State, ...], State, tuple[Reason, ...]], ...] = (
    ((S.BIRTH,), S.ATTACHED, (R.HANDSHAKE_OK,)),
    ((S.BIRTH,), S.TERMINATED, (R.HANDSHAKE_FAIL,)),
    (
        (S.ATTACHED,),
        S.VOLATILE,
        (R.LOSS_THRESHOLD_EXCEEDED, R.CONSECUTIVE_DROPS_EXCEEDED, R.HEARTBEAT_TIMEOUT),
    ),
    (_BOUND, S.RECOVERING, (R.TRANSPORT_DEAD,)),
    ((S.VOLATILE,), S.ATTACHED, (R.HEALTH_RECOVERED,)),
    ((S.VOLATILE,), S.DEGRADED, (R.VOLATILE_PERSISTED,)),
    (_BOUND, S.RECOVERING, (R.POLICY_FORCED_RECOVERY,)),
    ((S.DEGRADED,), S.ATTACHED, (R.HEALTH_RECOVERED,)),
    ((S.RECOVERING,), S.ATTACHED, (R.REATTACH_OK,)),
    (
        (S.RECOVERING,),
        S.DEGRADED,
        (
            R.REATTACH_VALIDATION_FAILED,
            R.NO_CANDIDATE_TRANSPORTS,
            R.SWITCH_RATE_LIMITED,
            R.COOLDOWN_ACTIVE,
        ),
    ),
    ((S.RECOVERING,), S.TERMINATED, (R.RECOVERY_WINDOW_EXCEEDED,)),
    (
        _LIVE,
        S.TERMINATED,
        (
            R.SESSION_LIFETIME_EXCEEDED,
            R.TRANSPORT_TTL_EXCEEDED,
            R.SECURITY_FAILURE,
            R.OPERATOR_TERMINATED,
            R.OWNERSHIP_LOST,
            R.OWNERSHIP_CONFLICT,
            R.POLICY_DENIED,
            R.SESSION_EVICTED,
        ),
    ),
)


def _index() -> dict[tuple[State, Reason], State]:
    legal: dict[tuple[State, Reason], State] = {}
    for sources, target, reasons in TRANSITIONS:
        for source in sources:
            for reason in reasons:
                key = (source, reason)
                if key in legal and legal[key] is not target:
                    raise AssertionError(f"ambiguous transition table at {key}")
                legal[key] = target
    return legal


#: (state, reason) -> next state. One reason from one state has exactly one target.
LEGAL: dict[tuple[State, Reason], State] = _index()


def is_legal(source: State | str, target: State | str, reason: Reason | str) -> bool:
    """True if the table allows ``source --reason--> target`` (accepts plain strings)."""
    try:
        return LEGAL.get((State(source), Reason(reason))) is State(target)
    except ValueError:
        return False


def table_digest() -> str:
    """SHA-256 over a canonical rendering of states, reasons and the table."""
    lines = ["states:" + ",".join(s.value for s in State)]
    lines.append("reasons:" + ",".join(r.value for r in Reason))
    for (source, reason), target in sorted(LEGAL.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        lines.append(f"{source.value}|{reason.value}|{target.value}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class StateChange:
    """One accepted transition; becomes exactly one SESSION_STATE_CHANGE event."""

    previous: State
    new: State
    reason: Reason
    state_version: int


class SessionFSM:
    """
    The state of one session and its monotonic ``state_version``.

    ``fire`` is the only way to move; an illegal request is refused (returns ``None``) and
    counted in ``refused`` — the caller never gets an exception.
    """

    __slots__ = ("state", "state_version", "refused")

    def __init__(self, state_version: int = 0) -> None:
        self.state = State.BIRTH
        self.state_version = state_version
        self.refused = 0

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def target(self, reason: Reason) -> State | None:
        """Where ``reason`` would lead from the current state, or None if illegal."""
        return LEGAL.get((self.state, reason))

    def fire(self, reason: Reason) -> StateChange | None:
        target = LEGAL.get((self.state, reason))
        if target is None:
            self.refused += 1
            return None
        previous = self.state
        self.state = target
        self.state_version += 1
        return StateChange(previous, target, reason, self.state_version)
