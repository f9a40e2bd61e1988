"""The transition table (docs/protocol.md): pinned, total over its rows, absorbing end."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jumping.core.fsm import LEGAL, TRANSITIONS, Reason, SessionFSM, State, is_legal, table_digest

# Changing the table, a state or a reason code changes this digest: update it deliberately,
# together with docs and the event schema (reason codes are a public contract).
PINNED = "fbc7ea5472a9b5379fa1dfaaca9fed1a05b1523c62dd545e2572f94f13ef84d5"


def test_table_digest_is_pinned() -> None:
    assert table_digest() == PINNED


def test_every_spec_row_is_present() -> None:
    assert LEGAL[(State.BIRTH, Reason.HANDSHAKE_OK)] is State.ATTACHED
    assert LEGAL[(State.RECOVERING, Reason.REATTACH_OK)] is State.ATTACHED
    assert LEGAL[(State.RECOVERING, Reason.RECOVERY_WINDOW_EXCEEDED)] is State.TERMINATED
    for s in (State.ATTACHED, State.VOLATILE, State.DEGRADED):
        assert LEGAL[(s, Reason.TRANSPORT_DEAD)] is State.RECOVERING
        assert LEGAL[(s, Reason.POLICY_FORCED_RECOVERY)] is State.RECOVERING
    for s in State:
        if s is not State.TERMINATED:
            assert LEGAL[(s, Reason.OWNERSHIP_CONFLICT)] is State.TERMINATED
    assert len(TRANSITIONS) == 12


def test_reason_codes_are_upper_snake_case() -> None:
    for r in Reason:
        assert r.value == r.name and r.value.replace("_", "").isalpha() and r.value.isupper()


def test_terminated_is_absorbing() -> None:
    assert not any(src is State.TERMINATED for (src, _r) in LEGAL)
    fsm = SessionFSM()
    assert fsm.fire(Reason.HANDSHAKE_FAIL) is not None
    for r in Reason:
        assert fsm.fire(r) is None
    assert fsm.state is State.TERMINATED and fsm.refused == len(Reason)


def test_illegal_transition_refused_and_counted() -> None:
    fsm = SessionFSM()
    assert fsm.fire(Reason.REATTACH_OK) is None
    assert fsm.state is State.BIRTH and fsm.state_version == 0 and fsm.refused == 1
    assert not is_legal("BIRTH", "ATTACHED", "NOPE")
    assert is_legal("BIRTH", "ATTACHED", "HANDSHAKE_OK")


@given(st.lists(st.sampled_from(list(Reason)), max_size=60), st.integers(0, 2**40))
def test_random_walks_keep_versions_strictly_increasing(reasons: list[Reason], start: int) -> None:
    fsm = SessionFSM(start)
    last = start
    for r in reasons:
        before = fsm.state
        change = fsm.fire(r)
        if change is None:
            assert fsm.state is before and fsm.state_version == last
        else:
            assert change.previous is before and change.state_version == last + 1
            assert is_legal(before, change.new, r)
            last = change.state_version
