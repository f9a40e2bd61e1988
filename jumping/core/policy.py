"""
The session policy (docs/protocol.md#policy): every default, validated bounds, a version.

``Policy.from_mapping`` either returns a complete, valid policy or raises
:class:`PolicyError` listing every problem: a policy is never half-applied.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class PolicyError(ValueError):
    """A policy mapping was rejected; the message lists every problem."""


@dataclass(frozen=True, slots=True)
class Policy:
    version: str = "default"
    heartbeat_interval_ms: int = 500
    idle_after_ms: int = 2000
    nat_keepalive_s: int = 25
    heartbeat_timeout_ms: int = 2000
    loss_window_ms: int = 2000
    loss_volatile_threshold: float = 0.20
    max_consecutive_drops: int = 3
    dead_after_ms: int = 3000
    probe_timeout_floor_ms: int = 15
    probe_timeout_multiplier: float = 3.0
    volatile_to_degraded_ms: int = 4000
    max_switches_per_min: int = 8
    switch_cooldown_ms: int = 1500
    hysteresis: float = 1.10
    transport_lost_ttl_ms: int = 15000
    recovery_window_ms: int = 8000
    reattach_proof_max_age_ms: int = 5000
    replay_window: int = 8192
    session_max_lifetime_s: int = 28800
    rekey_after_s: int = 120
    rekey_after_messages: int = 2**60
    rekey_grace_ms: int = 10000
    key_expiry_grace_s: int = 60
    rekey_on_switch: bool = False
    # control-plane limits (docs/security.md): what unauthenticated input may cost
    #: cookies (valid mac2) are required once wasted handshake work (DH that served no
    #: session, see GatewayCore.under_load) exceeds this fraction of a core
    handshake_load_fraction: float = 0.10
    #: initiations per source prefix (IPv4 /32, IPv6 /64) and second, and the burst
    handshake_per_source_per_s: float = 20.0
    handshake_per_source_burst: int = 5
    #: source prefixes tracked for that limit (least recently used forgotten first)
    handshake_source_table_size: int = 8192
    #: cookie replies under load (to initiations without a valid mac2): node-wide per
    #: second and burst, and per source prefix (so one address cannot spend the node's
    #: share), in a table of this many prefixes (least recently used forgotten first);
    #: an initiation over either budget is dropped unanswered (counted)
    cookie_replies_per_s: float = 20000.0
    cookie_replies_burst: int = 2000
    cookie_replies_per_source_per_s: float = 5.0
    cookie_replies_per_source_burst: int = 5
    cookie_source_table_size: int = 1024
    #: the gateway's session table: at most this many sessions; when it is full, a new
    #: authenticated session evicts the session that went quiet first, if it has moved no
    #: data for session_evict_idle_s (SESSION_EVICTED), else it is refused
    #: (SESSION_TABLE_FULL); a session that moved data since then is never evicted
    session_table_size: int = 131072
    session_evict_idle_s: int = 600
    #: a gateway's handshake messages wait in a queue of this many (the oldest dropped when
    #: it is full, counted) and are served with at most this much work per reactor turn,
    #: so that data and the TUN device never wait behind a flood of them
    handshake_queue_size: int = 1024
    handshake_turn_budget_ms: float = 1.0
    #: node-wide budget for path validations (challenges to new addresses), per second
    control_plane_per_s: float = 1000.0
    control_plane_burst: int = 2000
    #: the same budget per session: one client cannot spend the others' share
    path_validations_per_s: float = 10.0
    path_validation_burst: int = 20
    #: top source prefixes named in an aggregated SECURITY_EVENT (the rest is counted)
    security_top_sources: int = 5

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Policy:
        problems: list[str] = []
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            f = fields.get(key)
            if f is None:
                problems.append(f"{key}: unknown policy setting")
                continue
            default = f.default
            if key == "version":
                if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
                    problems.append("version: must be a non-empty string or integer")
                else:
                    values[key] = str(value)
                continue
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    problems.append(f"{key}: must be true or false, got {value!r}")
                else:
                    values[key] = value
                continue
            if isinstance(value, bool):
                problems.append(f"{key}: must be a number, got {value!r}")
                continue
            if isinstance(default, int) and not isinstance(default, bool):
                if not isinstance(value, int):
                    problems.append(f"{key}: must be an integer, got {value!r}")
                    continue
            elif not isinstance(value, (int, float)):
                problems.append(f"{key}: must be a number, got {value!r}")
                continue
            values[key] = value
        policy = cls(**values) if not problems else cls()
        if not problems:
            problems = policy.problems()
        if problems:
            raise PolicyError("invalid policy: " + "; ".join(problems))
        return policy

    def problems(self) -> list[str]:
        p: list[str] = []

        def rng(name: str, lo: float, hi: float) -> None:
            v = getattr(self, name)
            if not lo <= v <= hi:
                p.append(f"{name}: must be in {lo}..{hi}, got {v}")

        day = 86_400_000
        for name in (
            "heartbeat_interval_ms", "heartbeat_timeout_ms", "loss_window_ms", "dead_after_ms",
            "volatile_to_degraded_ms", "switch_cooldown_ms", "transport_lost_ttl_ms",
            "recovery_window_ms", "reattach_proof_max_age_ms", "rekey_grace_ms", "idle_after_ms",
        ):  # fmt: skip
            rng(name, 1, day)
        rng("probe_timeout_floor_ms", 1, 60_000)
        rng("probe_timeout_multiplier", 1.0, 20.0)
        rng("loss_volatile_threshold", 0.001, 0.999)
        rng("max_consecutive_drops", 1, 1000)
        rng("max_switches_per_min", 1, 600)
        rng("hysteresis", 1.0, 10.0)
        rng("session_max_lifetime_s", 1, 30 * 86400)
        rng("rekey_after_s", 1, 86400)
        rng("key_expiry_grace_s", 1, 86400)
        rng("nat_keepalive_s", 0, 3600)
        rng("rekey_after_messages", 1, 2**64 - 2**14)
        rng("handshake_load_fraction", 0.001, 1.0)
        rng("handshake_per_source_per_s", 0.1, 100_000)
        rng("handshake_per_source_burst", 1, 100_000)
        rng("handshake_source_table_size", 16, 10_000_000)
        rng("cookie_replies_per_s", 1, 10_000_000)
        rng("cookie_replies_burst", 1, 10_000_000)
        rng("cookie_replies_per_source_per_s", 0.1, 100_000)
        rng("cookie_replies_per_source_burst", 1, 100_000)
        rng("cookie_source_table_size", 16, 10_000_000)
        rng("session_table_size", 1, 10_000_000)
        rng("session_evict_idle_s", 1, 30 * 86400)
        rng("handshake_queue_size", 1, 1_000_000)
        rng("handshake_turn_budget_ms", 0.05, 1000.0)
        rng("control_plane_per_s", 1, 1_000_000)
        rng("control_plane_burst", 1, 10_000_000)
        rng("path_validations_per_s", 0.1, 10_000)
        rng("path_validation_burst", 1, 100_000)
        rng("security_top_sources", 0, 64)
        w = self.replay_window
        if w < 128 or w > 65536 or w & (w - 1):
            p.append(f"replay_window: must be a power of two in 128..65536, got {w}")
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms:
            p.append("heartbeat_timeout_ms: must exceed heartbeat_interval_ms")
        if self.dead_after_ms < self.heartbeat_timeout_ms:
            p.append("dead_after_ms: must be >= heartbeat_timeout_ms")
        if self.recovery_window_ms < self.heartbeat_interval_ms:
            p.append("recovery_window_ms: must be >= heartbeat_interval_ms")
        return p

    @property
    def key_lifetime_s(self) -> int:
        """A keypair is refused (``KEY_EXPIRED``) and wiped this long after its handshake."""
        return self.rekey_after_s + self.key_expiry_grace_s

    def digest(self) -> str:
        return hashlib.sha256(
            json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        ).hexdigest()
