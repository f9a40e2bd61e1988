"""The built-in ``token-bucket`` policy passes the shared IRateLimitPolicy mixin."""

from __future__ import annotations

from typing import Any

from jumping import plugin
from jumping.interfaces import IRateLimitPolicy
from jumping.testing.conformance import RateLimitPolicyTests


class TestTokenBucket(RateLimitPolicyTests):
    def make_policy(self, *, max_per_min: int, cooldown_ms: int, max_keys: int) -> Any:
        return plugin.load(
            IRateLimitPolicy,
            "token-bucket",
            max_per_min=max_per_min,
            cooldown_ms=cooldown_ms,
            max_keys=max_keys,
        )

    def make_policy_following(self, *, max_keys: int) -> Any:
        return plugin.load(IRateLimitPolicy, "token-bucket", max_keys=max_keys)
