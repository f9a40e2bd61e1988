"""jumping.sinkwriter.BoundedWriter: a burst of puts costs the writer thread one wake-up and
goes out in one batch (issue 18: a wake-up per event was 15 % of a gateway's CPU), and
nothing is lost or reordered on the way."""

from __future__ import annotations

import threading
import time

import pytest

from jumping.sinkwriter import BoundedWriter


def _writer(linger_s: float) -> tuple[BoundedWriter, list[list[int]]]:
    batches: list[list[int]] = []
    lock = threading.Lock()

    def write(batch: list[int]) -> int:
        with lock:
            batches.append(list(batch))
        return len(batch)

    return BoundedWriter("test", 10_000, write, linger_s=linger_s), batches


@pytest.mark.parametrize("linger_s", [0.0, 0.05])
def test_a_burst_is_written_whole_and_in_order(linger_s: float) -> None:
    w, batches = _writer(linger_s)
    w.start()
    try:
        for burst in range(5):
            for i in range(200):
                assert w.put(burst * 200 + i)
                if i % 10 == 0:
                    time.sleep(0.0005)  # a reactor that does other work between events
            time.sleep(0.2)
        assert [x for b in batches for x in b] == list(range(1000))
        if linger_s:
            # each burst (about 10 ms of puts) wakes the thread once and is one batch
            assert len(batches) == 5, [len(b) for b in batches]
    finally:
        w.close()
        assert w.join(5)


def test_close_writes_what_a_lingering_writer_holds() -> None:
    w, batches = _writer(0.2)
    w.start()
    for i in range(50):
        w.put(i)
    w.close(timeout=2.0)
    assert w.join(5)
    assert [x for b in batches for x in b] == list(range(50))


def test_linger_is_bounded() -> None:
    with pytest.raises(ValueError, match="linger_s must be within 0..1 s"):
        BoundedWriter("test", 10, lambda b: 0, linger_s=5.0)
