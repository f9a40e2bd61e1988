"""A session's numbers (times and counters) are unboxed where the C data plane is built:
stored as doubles and 64-bit integers inside the session, not as a float or int object of
32 bytes each behind a slot (issue 18). The pure-Python twin has the same names."""

from __future__ import annotations

import gc

import pytest

from jumping.core import aead
from jumping.core.session import _NUMBER_SLOTS, Session, _PyNumbers
from jumping.testing.sim import SimNet

needs_c = pytest.mark.skipif(aead.CSessionBase is None, reason="_dataplane is not built")


def test_both_layouts_have_the_same_numbers() -> None:
    assert _PyNumbers.__slots__ == _NUMBER_SLOTS
    if aead.CSessionBase is not None:
        members = {n for n in dir(aead.CSessionBase) if not n.startswith("__")}
        assert members == set(_NUMBER_SLOTS)
        assert Session.__mro__[1] is aead.CSessionBase
    assert not set(_NUMBER_SLOTS) & set(Session.__slots__)


@needs_c
def test_a_live_session_holds_no_number_objects() -> None:
    net = SimNet(seed=3)
    net.start()
    net.run_for(2.0)
    (s,) = net.gateway.sessions.values()
    assert s.rx_packets > 0 and s.rx_bytes > 0 and s.last_rx > 0.0
    held = {id(r) for r in gc.get_referents(s) if type(r) in (float, int)}
    # only the other slots' numbers (the deadline stays an object: the timer heap's entry
    # is live while it is the same one; tokens, feature bits)
    slots = {id(getattr(s, n)) for n in Session.__slots__ if hasattr(s, n)}
    assert held <= slots and id(s.deadline) in held
    assert isinstance(s.last_rx, float) and isinstance(s.rx_bytes, int)


@pytest.mark.parametrize("base", [_PyNumbers] + ([aead.CSessionBase] if aead.CSessionBase else []))
def test_numbers_read_back_as_written(base: type) -> None:
    class S(base):  # type: ignore[misc, valid-type]
        __slots__ = ()

    s = S()
    s.last_rx = 1800000000.125
    s.rx_bytes = 0
    s.rx_bytes += 2**40
    s.first_unacked = 0.0
    s.lost_since = 7  # an int is a time too
    assert (s.last_rx, s.rx_bytes, s.first_unacked) == (1800000000.125, 2**40, 0.0)
    assert s.lost_since == 7.0
    if base is not _PyNumbers:
        with pytest.raises(TypeError):
            s.last_rx = "now"
