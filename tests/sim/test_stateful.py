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
