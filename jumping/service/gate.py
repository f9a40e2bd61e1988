"""The initiation gate's Python side (jumping/service/_fastio.c has the C side).

A gateway refuses much of what a flood sends without any session's keys: a datagram whose
header is not version 1's, an initiation with a wrong mac1, a DATA message for no keypair, a
replay a live keypair's window has seen and, while cookies are required, an initiation
without a valid mac2 (a cookie reply within the reply budgets, else a counted drop:
GatewayCore._on_handshake). Done in Python, each refusal costs about 20 us of the
reactor: a datagram object, an address tuple, a provisional path, the handshake queue, the
core's dispatch. The gate does them in the UDP listener's read loop (``recv_burst``) on the
datagram's bytes, in 2 to 6 us, and hands every other datagram on as before.

The core stays the reference and keeps every figure. The gate is bound once to the core's
mac1 key and index table; ``arm`` sets the read pass's time and, while cookies are
required, the cookie part (:meth:`GatewayCore.gate_state`); ``done`` gives the core the
counts, the heaviest source prefixes for its SECURITY_EVENTs, and the wasted work that
keeps cookies required while the flood lasts (:meth:`GatewayCore.gated`).
tests/test_gate.py runs the same datagrams through both.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from jumping.core.gateway import GatewayCore
from jumping.interfaces import IInitiationGate

try:
    from jumping.service._fastio import Gate as _CGate
except ImportError:  # pragma: no cover - built without a C compiler: the core does it all
    _CGate = None

_log = Logger()

#: most source prefixes the gate keeps reply buckets for (a power of two)
MAX_SLOTS = 1 << 16


def _slots(size: int) -> int:
    n = 1
    while n < size and n < MAX_SLOTS:
        n <<= 1
    return n


@implementer(IInitiationGate)
class InitiationGate:
    """Keeps the C gate bound to the serving core, and its cookie part armed while the core
    requires cookies."""

    def __init__(self, dataplane: Any) -> None:
        self.dataplane = dataplane
        self._gate: Any = None
        self._core: Any = None
        self._policy: Any = None
        #: read passes the cookie part was armed for; datagrams the gate refused
        self.passes = 0
        self.refused = 0
        #: arming or folding that raised (a bug, logged; the core then does the work)
        self.errors = 0

    @property
    def available(self) -> bool:
        return _CGate is not None

    def _bind(self, core: GatewayCore) -> Any:
        """A gate for ``core`` (again after a policy change: its table size)."""
        seed = int.from_bytes(os.urandom(8), "little")
        g = _CGate(_slots(core.policy.cookie_source_table_size), core.security.tracked, seed)
        g.bind(core.me.mac1_key, core.index, core._key_lifetime)
        self._gate, self._core, self._policy = g, core, core.policy
        return g

    def arm(self) -> Any:
        core = self.dataplane.core
        if _CGate is None or not isinstance(core, GatewayCore):
            return None
        g = self._gate
        try:
            if core is not self._core or core.policy is not self._policy:
                if g is not None and g.pending:
                    self.done(g)
                g = self._bind(core)
            now = g.now = self.dataplane._now()
            if core.under_load_now(now):
                state = core.gate_state(now)
                assert state is not None
                g.arm_cookies(now, *state)
                self.passes += 1
            elif g.armed:
                g.cookies_off()
        except Exception:  # a bug: the read pass goes on without the gate, the core does it
            self.errors += 1
            _log.failure("initiation gate: arming failed")
            return None
        return g

    def done(self, gate: Any) -> None:
        if not gate.pending:
            return
        try:
            valid, send_errors, refused, replays = gate.drain()
            core = self._core
            self.refused += sum(c for _r, c, _h in refused) + sum(c for _k, c, _h in replays)
            core.gated(gate.now, valid, send_errors, refused, replays)  # the pass's time
        except Exception:
            self.errors += 1
            _log.failure("initiation gate: folding its counts into the core failed")
