"""The timer heap drops what ended sessions left in it (issue 18's churn): a stale entry is
otherwise only dropped when it reaches the top, and an ended session's lifetime entry is
hours away, so every session that ever ended stayed in memory that long."""

from __future__ import annotations

from jumping.core.fsm import Reason
from jumping.core.node import HEAP_SLACK
from tests.core.test_hardening import _gateway, _init, spoofed


def test_ended_sessions_do_not_stay_in_the_timer_heap() -> None:
    gw, gw_key, client_key = _gateway(
        handshake_per_source_per_s=100_000, handshake_per_source_burst=100_000
    )
    born = 0
    for i in range(3 * HEAP_SLACK):
        t = 100.0 + i * 0.1
        gw.receive(t, spoofed(1), _init(client_key, gw_key, t).message)
        for sid in list(gw.sessions):
            born += 1
            gw.terminate(t, sid, Reason.OPERATOR_TERMINATED)
    assert born == 3 * HEAP_SLACK and gw.session_count() == 0
    heap = gw._heap
    assert len(heap) <= HEAP_SLACK + 1, len(heap)
    assert gw.counters["timer_heap_compactions"] >= 2
    # what is left is live: no entry refers to an ended session
    gw.receive(999.0, spoofed(1), _init(client_key, gw_key, 999.0).message)
    (s,) = gw.sessions.values()
    live = [e for e in gw._heap if e[0] is e[1].deadline]
    assert [e[1] for e in live] == [s]
