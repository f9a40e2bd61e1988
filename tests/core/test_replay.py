"""The RFC 6479 replay window against a reference model (Hypothesis): any sequence of
counters is accepted or rejected exactly as the model says, in fixed memory. Both windows
run everything: jumping/core/replay.py's and the C one of jumping/core/_dataplane.c (the one
keypairs use where it is built)."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jumping.core.aead import CReplayWindow, Window
from jumping.core.replay import LIMIT, ReplayWindow

#: both implementations where the C one is built (JUMPING_PURE_PYTHON: the Python one only)
IMPLS = [ReplayWindow] + ([CReplayWindow] if CReplayWindow is not None else [])
NAMES = ["python", "c"][: len(IMPLS)]

DEFAULT_BITS = 8192  # docs/protocol.md#policy: replay_window default
SMALL_BITS = 128  # the smallest window replay.py supports


class Model:
    """What the window promises: a counter is fresh iff it is in [0, 2**64) and either
    above every counter accepted so far, or within ``bits - 64`` below the highest and
    never accepted before. Keeps every counter it saw: memory is no concern here."""

    def __init__(self, bits: int) -> None:
        self.size = bits - 64
        self.top = -1
        self.seen: set[int] = set()

    def check(self, c: int) -> bool:
        if c < 0 or c >= LIMIT:
            return False
        if c > self.top:
            return True
        return self.top - c < self.size and c not in self.seen

    def update(self, c: int) -> bool:
        ok = self.check(c)
        if ok:
            self.seen.add(c)
            self.top = max(self.top, c)
        return ok


def near(*points: int, spread: int = 300) -> st.SearchStrategy[int]:
    return st.one_of(*(st.integers(p - spread, p + spread) for p in points))


# One step: an absolute counter, a move relative to the highest one seen (around the
# window's edge and block boundaries), or a replay of an earlier counter.
def steps(bits: int) -> st.SearchStrategy[list[tuple[str, int]]]:
    absolute = st.one_of(
        st.integers(-3, 200),
        near(LIMIT - 1, LIMIT - bits, spread=bits + 70),
        st.integers(0, LIMIT + 5),
        near(bits, 2 * bits, 10 * bits),
    )
    relative = st.one_of(
        st.integers(-bits - 130, 130),
        near(-(bits - 64), -bits, -64, 64, bits - 64, bits, 2 * bits, spread=3),
        st.integers(-(2**40), 2**40),
        st.sampled_from([64 * k for k in range(bits // 64 + 3)]),
    )
    return st.lists(
        st.one_of(
            st.tuples(st.just("abs"), absolute),
            st.tuples(st.just("rel"), relative),
            st.tuples(st.just("dup"), st.integers(0, 10_000)),
        ),
        max_size=300,
    )


def run(bits: int, ops: list[tuple[str, int]], split: bool) -> None:
    for impl in IMPLS:
        run_one(impl, bits, ops, split)


def run_one(impl: type, bits: int, ops: list[tuple[str, int]], split: bool) -> None:
    w, m = impl(bits), Model(bits)
    blocks, n_blocks, size = w.blocks, len(w.blocks), sys.getsizeof(w)
    history: list[int] = []
    for kind, v in ops:
        if kind == "abs":
            c = v
        elif kind == "rel":
            c = max(m.top, 0) + v
        else:
            c = history[v % len(history)] if history else v
        history.append(c)
        expected = m.check(c)
        assert w.check(c) is expected, (c, m.top)
        if split:  # check, then update only what authenticated (as the session does)
            got = w.update(c) if expected else w.check(c)
        else:
            got = w.check_and_update(c)
        assert got is expected, (c, m.top)
        m.update(c)
        assert w.top == m.top
        # O(1) memory: the same blocks, the same length, every block a 64-bit word
        assert sys.getsizeof(w) == size and len(w.blocks) == n_blocks
        assert impl is not ReplayWindow or w.blocks is blocks
        assert all(0 <= b < 2**64 for b in w.blocks)


# (no pytest.mark.parametrize on @given tests: pytest-twisted wraps hypothesis's inner
# test once per parametrization of the same function object and then fails)
def check_against_model(bits: int, data: st.DataObject) -> None:
    run(bits, data.draw(steps(bits)), split=data.draw(st.booleans()))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_default_window_matches_the_model(data: st.DataObject) -> None:
    check_against_model(DEFAULT_BITS, data)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_small_window_matches_the_model(data: st.DataObject) -> None:
    check_against_model(SMALL_BITS, data)


@settings(max_examples=200, deadline=None)
@given(bits=st.sampled_from([DEFAULT_BITS, SMALL_BITS, 1024]), data=st.data())
def test_update_without_check_matches_the_model(bits: int, data: st.DataObject) -> None:
    """``update`` alone enforces the window too (it never trusts a prior ``check``)."""
    ops = data.draw(steps(bits))
    for impl in IMPLS:
        w, m = impl(bits), Model(bits)
        for kind, v in ops:
            c = v if kind != "rel" else max(m.top, 0) + v
            assert w.update(c) is m.update(c), (impl, c, m.top)


@pytest.mark.parametrize("impl", IMPLS, ids=NAMES)
@pytest.mark.parametrize("bits", [DEFAULT_BITS, SMALL_BITS])
def test_exhaustive_window_edges(impl: type, bits: int) -> None:
    size = bits - 64
    w = impl(bits)
    assert w.check_and_update(0)  # counter 0 is a valid first counter
    assert not w.check_and_update(0)
    top = 5 * bits + 17
    assert w.check_and_update(top)
    assert not w.check(top - size) and not w.update(top - size)  # just outside
    for c in range(top - size + 1, top):  # every counter inside: fresh exactly once
        assert w.check(c) and w.update(c)
        assert not w.check(c) and not w.update(c)
    assert not w.check(top)
    assert not w.check(-1) and not w.update(-1)


@pytest.mark.parametrize("impl", IMPLS, ids=NAMES)
@pytest.mark.parametrize("bits", [DEFAULT_BITS, SMALL_BITS])
@pytest.mark.parametrize("blocks", [1, 2, 63, 64, 127, 128, 129, 1000])
def test_a_far_jump_clears_what_it_passes(impl: type, bits: int, blocks: int) -> None:
    """Fill every slot of the ring, jump ``blocks`` blocks ahead: every counter inside the
    new window that was never seen is fresh, even where a stale bit shared its slot."""
    size = bits - 64
    w = impl(bits)
    for c in range(2 * bits):
        assert w.check_and_update(c)
    old_top = 2 * bits - 1
    top = old_top + 64 * blocks
    assert w.check_and_update(top)
    for c in range(top - size + 1, top):
        assert w.check_and_update(c) is (c > old_top), c
    assert not w.check_and_update(top)


@pytest.mark.parametrize("impl", IMPLS, ids=NAMES)
@pytest.mark.parametrize("bits", [DEFAULT_BITS, SMALL_BITS])
def test_the_end_of_the_counter_space(impl: type, bits: int) -> None:
    w = impl(bits)
    assert w.check_and_update(LIMIT - 2)
    assert w.check_and_update(LIMIT - 1)
    assert not w.check(LIMIT) and not w.update(LIMIT)  # never wraps
    assert not w.check_and_update(LIMIT + 1)
    assert not w.check_and_update(LIMIT - 1)
    assert w.check_and_update(LIMIT - 3)
    assert w.top == LIMIT - 1


@pytest.mark.parametrize("impl", IMPLS, ids=NAMES)
@pytest.mark.parametrize("bits", [0, 64, 100, 129, 8191, 131072, True, 8192.0])
def test_invalid_sizes_are_refused(impl: type, bits: object) -> None:
    with pytest.raises(ValueError):
        impl(bits)  # type: ignore[arg-type]


def test_keypairs_use_the_c_window_where_it_is_built() -> None:
    """One object of about 1 KiB with its blocks inline (from malloc, not pymalloc's pools):
    nothing small is left behind in the pools when an idle session's keys expire."""
    w = Window(DEFAULT_BITS)
    assert (type(w) is CReplayWindow) if CReplayWindow is not None else type(w) is ReplayWindow
    if CReplayWindow is not None:
        assert sys.getsizeof(w) > DEFAULT_BITS // 8  # the blocks are in it
        assert w.blocks.format == "Q" and w.blocks.itemsize == 8 and not w.blocks.readonly
        assert (w.bits, w.size, w.mask, w.top) == (8192, 8128, 127, -1)
        w.top = LIMIT - 1
        assert w.top == LIMIT - 1 and not w.check(LIMIT - 1 - w.size) and w.check(LIMIT - 2)
        w.top = -1
        assert w.check_and_update(0) and w.top == 0
        with pytest.raises(ValueError):
            w.top = LIMIT
        with pytest.raises(TypeError):
            w.check("1")  # type: ignore[arg-type]
