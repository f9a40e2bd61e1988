"""
A reference model of the invariants (docs/protocol.md), checked against what the cores did.

``InvariantChecker.step(net)`` is called after every simulation step; it reads the cores'
state and the events emitted since the last step and records every violation (it never
raises, so a run can report all of them). Checked:

1. one active binding per session (and the binding only changes through a switch event);
3. ``state_version`` strictly increases per (node, session); every transition is legal;
5. RECOVERING lasts at most ``recovery_window_ms`` (+ one timer granularity);
6. switches: at most ``max_switches_per_min`` in any 60 s window, ``switch_cooldown_ms`` apart;
8/10. nothing happens to a session after TERMINATED; no internal error in the core;
quiet. a quiet (idle) session originates nothing: between two steps in which it stayed quiet
   it sent no more packets than it received, plus its NAT keepalives (client), handshake
   messages and the gateway's echo requests about data it sent before going quiet.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from jumping.core.fsm import is_legal
from jumping.core.policy import Policy

SLACK = 0.3  # seconds of timer granularity allowed on time bounds


@dataclass
class InvariantChecker:
    policy: Policy
    violations: list[str] = field(default_factory=list)
    transitions: int = 0
    switches: int = 0
    _seen: dict[str, int] = field(default_factory=dict)
    _closed: set[tuple[str, str]] = field(default_factory=set)
    _version: dict[tuple[str, str], int] = field(default_factory=dict)
    _state: dict[tuple[str, str], str] = field(default_factory=dict)
    _recovering_since: dict[tuple[str, str], float] = field(default_factory=dict)
    _switch_times: dict[tuple[str, str], deque[float]] = field(
        default_factory=lambda: defaultdict(deque)
    )
    _quiet: dict[tuple[str, int], tuple[int, int, int]] = field(default_factory=dict)

    def _bad(self, now: float, msg: str) -> None:
        if len(self.violations) < 1000:
            self.violations.append(f"t={now:.3f}: {msg}")

    def step(self, net: Any) -> None:
        now = net.now
        for side in ("client", "gateway"):
            log = net.log[side]
            start = self._seen.get(side, 0)
            times = log.event_times
            for i in range(start, len(log.events)):
                # judged at the time it was emitted, not when this step looks at it
                self._event(times[i] if i < len(times) else now, side, log.events[i])
            self._seen[side] = len(log.events)
            core = net.core(side)
            if core.counters.get("internal_error"):
                self._bad(now, f"{side}: internal error in the core")
        for key, since in self._recovering_since.items():
            if now - since > self.policy.recovery_window_ms / 1000.0 + SLACK:
                self._bad(now, f"{key}: RECOVERING for {now - since:.3f}s")
        for side in ("client", "gateway"):
            self._quiet_sessions(now, side, net.core(side))
        # at most one session per client key is live on the gateway with a binding that the
        # client is also using, and each session has exactly one path object or none
        for s in net.gateway.sessions.values():
            if isinstance(s.path, (list, tuple, set)):
                self._bad(now, "gateway session bound to several paths")

    def _quiet_sessions(self, now: float, side: str, core: Any) -> None:
        # what a quiet session may still send: NAT keepalives, handshakes (and the client's
        # confirmation of new keys), the gateway's echo requests about data it sent before
        # it went quiet
        c = core.counters
        # a feature announcement is bounded too (FEATURE_ANNOUNCEMENTS per keypair): its
        # repeats can fall after the session went quiet when the answers were lost.
        # A path challenge is bounded by its attempts and the anti-amplification limit; it
        # can come on top of the answer to the packet that caused it (a client that moved
        # while quiet announces its features on the new path: the gateway answers them
        # and challenges the path, two sends for one packet received)
        allowed = (c["nat_keepalives"] + c["handshakes_sent"] + c["handshakes_answered"]
                   + c["cookie_replies"] + c["silence_probes"] + c["rekeys"]
                   + c["feature_announcements"] + c["path_challenges_sent"])  # fmt: skip
        seen: dict[tuple[str, int], tuple[int, int, int]] = {}
        for s in core.sessions.values():
            if not s.quiet:
                continue
            key = (side, id(s))
            now_counts = (s.tx_packets, s.rx_packets, allowed)
            before = self._quiet.get(key)
            if before is not None:
                sent = now_counts[0] - before[0]
                budget = now_counts[1] - before[1] + now_counts[2] - before[2]
                if sent > budget:
                    self._bad(now, f"{side} {s.sid_hex}: quiet but sent {sent} > {budget}")
            seen[key] = now_counts
        self._quiet = {k: v for k, v in self._quiet.items() if k[0] != side} | seen

    def _event(self, now: float, side: str, e: Any) -> None:
        key = (side, e.session_id or "")
        if key[1] and self._state.get(key) == "TERMINATED":
            if e.event_type == "SESSION_TERMINATED" and key not in self._closed:
                self._closed.add(key)  # exactly one summary follows the final transition
            else:
                self._bad(now, f"{key}: {e.event_type} after TERMINATED")
        if e.event_type == "SESSION_STATE_CHANGE":
            self.transitions += 1
            prev, new, reason = e.fields["previous_state"], e.fields["new_state"], e.reason_code
            if not is_legal(prev, new, reason):
                self._bad(now, f"{key}: illegal {prev} -{reason}-> {new}")
            last = self._state.get(key)
            if last is not None and last != prev:
                self._bad(now, f"{key}: previous_state {prev} but was {last}")
            v = self._version.get(key)
            if v is not None and e.state_version <= v:
                self._bad(now, f"{key}: state_version {e.state_version} after {v}")
            self._version[key] = e.state_version
            self._state[key] = new
            if new == "RECOVERING":
                self._recovering_since[key] = now
            else:
                self._recovering_since.pop(key, None)
        elif e.event_type == "TRANSPORT_SWITCH":
            self.switches += 1
            times = self._switch_times[key]
            p = self.policy
            # the limit binds switch *decisions*: a client decides when it sends the reattach
            # (the event reports the latency since), a gateway when the path is validated
            at = now - e.fields.get("switch_latency_ms", 0) / 1000.0 if side == "client" else now
            if times and at - times[-1] < p.switch_cooldown_ms / 1000.0 - 0.002:
                self._bad(now, f"{key}: switches {at - times[-1]:.3f}s apart")
            times.append(at)
            # the limiter's window is half-open, [t, t + 60 s): a switch exactly 60 s after
            # another is a new window; 2 ms of slack for times reported in whole ms
            while times and at - times[0] >= 60.0 - 0.002:
                times.popleft()
            if len(times) > p.max_switches_per_min:
                self._bad(now, f"{key}: {len(times)} switches within 60 s")
