"""
The lease deadline of the etcd backend (jumping_etcd.liveness) driven by an injected clock:
a renewal counts only once the node's own watch delivered its heartbeat; a heartbeat that
does not come back marks the watch dead and lets the deadline pass.
"""

from __future__ import annotations

from jumping_etcd.liveness import PENDING_MAX, LeaseDeadline


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def deadline(ttl: float = 3.0) -> tuple[LeaseDeadline, Clock]:
    clock = Clock()
    d = LeaseDeadline(ttl=ttl, guard=0.6, stall_after=0.75, clock=clock)
    d.granted(clock.now)
    return d, clock


def test_a_renewal_counts_only_once_its_heartbeat_is_seen() -> None:
    d, clock = deadline()
    clock.now += 1
    seq = d.next_seq()
    d.renewed(seq, clock.now, 3)
    clock.now = 100 + 3 - 0.6  # the first grant's deadline: the renewal is not seen yet
    assert d.expired()
    assert d.seen(seq)  # now it is: valid until 101 + 3
    assert not d.expired()
    clock.now = 101 + 3 - 0.6
    assert d.expired()


def test_a_watch_that_never_delivers_lets_the_deadline_pass_whatever_the_keep_alives() -> None:
    d, clock = deadline()
    for _ in range(10):  # keep-alives succeed every second, the watch is dead
        clock.now += 1
        d.renewed(d.next_seq(), clock.now, 3)
        if clock.now >= 100 + 3 - 0.6:
            assert d.expired()
    assert d.expired()
    assert d.overdue() >= 10


def test_seeing_a_heartbeat_counts_the_older_pending_renewals_too() -> None:
    d, clock = deadline()
    seqs = []
    for _ in range(3):
        clock.now += 0.5
        seqs.append(d.next_seq())
        d.renewed(seqs[-1], clock.now, 3)
    assert d.seen(seqs[1])  # ordered stream: the first one is behind us as well
    assert d.valid_until == 100 + 1.0 + 3
    assert not d.seen(seqs[0])  # already accounted for
    assert d.seen(seqs[2]) and d.valid_until == 100 + 1.5 + 3


def test_the_granted_ttl_bounds_the_renewal_and_a_new_lease_drops_old_renewals() -> None:
    d, clock = deadline()
    clock.now += 1
    s = d.next_seq()
    d.renewed(s, clock.now, 1)  # etcd granted less than asked: good until 102 only
    assert not d.seen(s)  # moves nothing: the grant (until 103) is later
    assert d.valid_until == 103
    s2 = d.next_seq()
    d.renewed(s2, clock.now, 3)
    clock.now += 5
    d.granted(clock.now)  # a new lease: the renewal above was of the old one
    assert not d.seen(s2)
    assert d.valid_until == clock.now + 3


def test_unseen_heartbeat_is_a_stall_reported_once_per_dead_stream() -> None:
    d, clock = deadline()
    clock.now += 1
    d.renewed(d.next_seq(), clock.now, 3)
    clock.now += 0.5
    assert not d.stalled()  # not late yet
    clock.now += 0.3
    assert d.stalled() and d.stalls == 1
    assert not d.stalled()  # the same heartbeat is not reported twice
    clock.now += 0.2
    s = d.next_seq()
    d.renewed(s, clock.now, 3)
    clock.now += 0.8
    assert d.stalled() and d.stalls == 2  # a heartbeat sent after the reopening: dead again
    d.seen(s)
    clock.now += 5
    assert not d.stalled()  # nothing pending


def test_pending_renewals_are_bounded() -> None:
    d, clock = deadline()
    for _ in range(PENDING_MAX * 3):
        d.renewed(d.next_seq(), clock.now, 3)
    assert len(d._pending) == PENDING_MAX


def test_a_heartbeat_seen_before_its_round_is_confirmed_counts_once_it_is() -> None:
    """The watch event and the put's answer race: the heartbeat may come back first."""
    d, clock = deadline()
    clock.now += 1
    seq = d.next_seq()
    assert not d.seen(seq)  # delivered before the keep-alive thread confirmed the round
    assert d.valid_until == 103
    d.renewed(seq, clock.now, 3)  # now confirmed (same member, same term): it counts
    assert d.valid_until == 101 + 3
    clock.now += 1
    s2 = d.next_seq()
    d.seen(s2)
    clock.now += 5
    d.granted(clock.now)  # a new lease: the early heartbeat of the old one is forgotten
    d.renewed(s2, clock.now - 4, 3)
    assert d.valid_until == clock.now + 3
