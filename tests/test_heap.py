"""jumping.service.heap: malloc_trim only once enough was freed (keys expired plus sessions
ended since the last trim), and glibc's malloc_trim is what it calls here."""

from __future__ import annotations

from collections import Counter

from jumping.service import heap


def test_trims_only_after_the_threshold_and_counts_from_the_last_trim() -> None:
    calls: list[int] = []
    counters: Counter[str] = Counter(keys_expired=5)
    t = heap.HeapTrimmer(counters, threshold=10, trim=lambda pad: calls.append(pad) or 1)
    assert t.available and not t.check(), "nothing freed since it was made"
    counters["keys_expired"] += 6
    counters["sessions_ended"] += 3
    assert not t.check() and calls == [], "9 < 10"
    counters["sessions_ended"] += 1
    assert t.check() and calls == [0] and t.trims == 1
    assert not t.check(), "the next trim needs 10 more"
    counters["keys_expired"] += 10
    assert t.check() and t.trims == 2


def test_without_malloc_trim_it_never_trims() -> None:
    t = heap.HeapTrimmer(Counter(keys_expired=0), threshold=1, trim=None)
    t.counters["keys_expired"] += 5  # type: ignore[index]
    assert not t.available and not t.check()


def test_this_libc_has_malloc_trim() -> None:
    fn = heap._malloc_trim()
    assert fn is not None, "glibc expected on the machines Jumping supports"
    assert fn(0) in (0, 1)
