"""
Switch rate limits (docs/protocol.md, invariant 6): at most ``max_per_min`` switches in any
60 s window and at least ``cooldown_ms`` between two, per key.

Pure and bounded: a key keeps at most ``max_per_min`` timestamps; at most ``max_keys``
keys are tracked (least recently used evicted). Provides ``IRateLimitPolicy``.

A limit not given to the constructor (the ``[rate_limit]`` table left it out) follows the
node's policy (``max_switches_per_min``, ``switch_cooldown_ms``) through
:meth:`SwitchLimiter.reconfigure`, at start and on every reload; a limit given is kept.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

from zope.interface import implementer

from jumping.interfaces import IRateLimitPolicy

WINDOW_MS = 60_000
#: the limits before the first :meth:`SwitchLimiter.reconfigure` (the default policy's)
DEFAULT_MAX_PER_MIN = 8
DEFAULT_COOLDOWN_MS = 1500


@implementer(IRateLimitPolicy)
class SwitchLimiter:
    def __init__(
        self,
        max_per_min: int | None = None,
        cooldown_ms: int | None = None,
        max_keys: int = 100_000,
    ) -> None:
        for name, v, lo in (("max_per_min", max_per_min, 1), ("cooldown_ms", cooldown_ms, 1),
                            ("max_keys", max_keys, 1)):  # fmt: skip
            if v is None and name != "max_keys":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        #: the limits set by the plugin's options: a policy reload does not change them
        self.fixed = {k for k, v in (("max_per_min", max_per_min), ("cooldown_ms", cooldown_ms))
                      if v is not None}  # fmt: skip
        self.max_per_min = DEFAULT_MAX_PER_MIN if max_per_min is None else max_per_min
        self.cooldown_ms = DEFAULT_COOLDOWN_MS if cooldown_ms is None else cooldown_ms
        self.max_keys = max_keys
        self._keys: OrderedDict[str, deque[int]] = OrderedDict()

    def reconfigure(self, policy: Any) -> None:
        """Take the switch limits the options left open from ``policy``; keep every key's
        history (a key holding more timestamps than a lower cap keeps its newest)."""
        if "max_per_min" not in self.fixed and policy.max_switches_per_min != self.max_per_min:
            self.max_per_min = int(policy.max_switches_per_min)
            for key, times in self._keys.items():
                self._keys[key] = deque(times, maxlen=self.max_per_min)
        if "cooldown_ms" not in self.fixed:
            self.cooldown_ms = int(policy.switch_cooldown_ms)

    @property
    def tracked(self) -> int:
        return len(self._keys)

    def check(self, key: str, now_ms: int) -> str | None:
        times = self._keys.get(key)
        if not times:
            return None
        if now_ms - times[-1] < self.cooldown_ms:
            return "COOLDOWN_ACTIVE"
        recent = sum(1 for t in times if now_ms - t < WINDOW_MS)
        if recent >= self.max_per_min:
            return "SWITCH_RATE_LIMITED"
        return None

    def record(self, key: str, now_ms: int) -> None:
        times = self._keys.get(key)
        if times is None:
            if len(self._keys) >= self.max_keys:
                self._keys.popitem(last=False)
            times = self._keys[key] = deque(maxlen=self.max_per_min)
        else:
            self._keys.move_to_end(key)
        times.append(now_ms)

    def forget(self, key: str) -> None:
        self._keys.pop(key, None)
