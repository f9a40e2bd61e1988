"""
Switch rate limits (docs/protocol.md, invariant 6): at most ``max_per_min`` switches in any
60 s window and at least ``cooldown_ms`` between two, per key.

Pure and bounded: a key keeps at most ``max_per_min`` timestamps; at most ``max_keys``
keys are tracked (least recently used evicted). Provides ``IRateLimitPolicy``.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from zope.interface import implementer

from jumping.interfaces import IRateLimitPolicy

WINDOW_MS = 60_000


@implementer(IRateLimitPolicy)
class SwitchLimiter:
    def __init__(
        self, max_per_min: int = 8, cooldown_ms: int = 1500, max_keys: int = 100_000
    ) -> None:
        for name, v, lo in (("max_per_min", max_per_min, 1), ("cooldown_ms", cooldown_ms, 1),
                            ("max_keys", max_keys, 1)):  # fmt: skip
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        self.max_per_min = max_per_min
        self.cooldown_ms = cooldown_ms
        self.max_keys = max_keys
        self._keys: OrderedDict[str, deque[int]] = OrderedDict()

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
