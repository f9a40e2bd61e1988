"""Random fault schedules (Hypothesis stateful) with every invariant (docs/protocol.md) checked
after every simulation step."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from jumping.testing.invariants import InvariantChecker
from jumping.testing.sim import SimNet


class Faults(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 10_000))
    def boot(self, seed: int) -> None:
        self.net = SimNet(seed=seed, links=2)
        self.net.checker = InvariantChecker(self.net.policy)
        self.net.echo = True
        self.net.start()
        self.net.run_for(1.0)

    @rule(dt=st.floats(0.05, 6.0))
    def advance(self, dt: float) -> None:
        self.net.run_for(dt)

    @rule(i=st.integers(0, 1), up=st.booleans())
    def toggle(self, i: int, up: bool) -> None:
        self.net.links[i].up = up

    @rule(i=st.integers(0, 1), loss=st.sampled_from([0.0, 0.1, 0.3, 0.6]))
    def lossy(self, i: int, loss: float) -> None:
        self.net.links[i].loss = loss

    @rule(i=st.integers(0, 1))
    def rebind(self, i: int) -> None:
        self.net.rebind(i)

    @rule(seconds=st.floats(0.1, 3.0))
    def traffic(self, seconds: float) -> None:
        self.net.traffic(until=self.net.now + seconds, interval=0.01)

    @invariant()
    def no_violation(self) -> None:
        assert self.net.checker.violations == [], self.net.checker.violations[:3]


Faults.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestFaults = Faults.TestCase


def test_quiet_gateway_challenges_a_moved_client_and_answers_its_features() -> None:
    """A schedule Hypothesis found: the client rebinds on a lossy link, goes quiet, and its
    feature announcement arrives on the new (not yet validated) path. The gateway answers
    the announcement and repeats its path challenge: two sends for one packet received,
    both bounded. The quiet-session budget must count the challenge."""
    net = SimNet(seed=35, links=2)
    net.checker = InvariantChecker(net.policy)
    net.echo = True
    net.start()
    net.run_for(1.0)
    net.links[0].loss = 0.6
    net.links[1].loss = 0.3
    net.run_for(1.5)
    net.rebind(1)
    net.traffic(until=net.now + 0.40625, interval=0.01)
    net.run_for(5.0)
    c = net.gateway.counters
    assert c["sessions_went_quiet"] >= 1
    assert c["path_challenges_sent"] > c["path_challenges"]  # a challenge was repeated
    assert net.checker.violations == []
