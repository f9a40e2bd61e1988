"""
A reload (SIGHUP or ``jumpctl reload``): re-read the configuration file and apply its
``[policy]`` and ``[[peers]]``, whole or not at all.

A file that is invalid, or that changes anything else (the TUN device, the listeners, the
plugins... which need a restart), changes nothing: the answer names the keys and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

#: NodeConfig fields a reload applies; ``path`` is where the file is, not what it says
LIVE = {"policy", "peers", "path"}
#: how a refused key is named to the operator
_TABLE = {
    "role": "[node] role", "node_id": "[node] node_id", "private_key": "[node] private_key",
    "secret": "[node] secret", "tun": "[tun]", "listen": "[[listen]]",
    "gateway": "[gateway]", "ownership": "[ownership]", "events": "[[events]]",
    "address_privacy": "[events] address_privacy", "metrics_listen": "[metrics]",
    "rate_limit": "[rate_limit]", "control": "[control]", "run_as": "[node] user/group",
    "run_as_names": "[node] user/group", "capabilities": "[node] capabilities",
}  # fmt: skip


class ReloadRefused(Exception):
    """The file cannot be applied; the message is one line."""


@dataclass
class Plan:
    config: Any
    peers: list[Any] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


def plan(running: Any) -> Plan:
    """Read ``running.path`` again and compare it with the running configuration."""
    from jumping.config import load_config
    from jumping.errors import ConfigError, KeyFileError
    from jumping.service.assemble import peers_of

    try:
        new = load_config(running.path)
    except (ConfigError, OSError) as e:
        raise ReloadRefused(str(e)) from None
    other = sorted(
        _TABLE.get(f.name, f.name)
        for f in fields(running)
        if f.name not in LIVE and getattr(running, f.name) != getattr(new, f.name)
    )
    if other:
        raise ReloadRefused(
            f"{running.path}: {', '.join(other)} changed: a reload applies [policy] and "
            "[[peers]] only; restart the node for the rest (nothing was changed)"
        )
    try:
        peers = peers_of(new) if new.role == "gateway" else []
    except KeyFileError as e:
        raise ReloadRefused(str(e)) from None
    out = Plan(new, peers)
    before = {p.public_key: p for p in running.peers}
    after = {p.public_key: p for p in new.peers}
    out.added = [_name(p) for k, p in after.items() if k not in before]
    out.removed = [_name(p) for k, p in before.items() if k not in after]
    out.changed = [_name(p) for k, p in after.items() if k in before and before[k] != p]
    return out


def _name(p: Any) -> str:
    return p.name or p.public_key.hex()[:16]


def apply(svc: Any) -> dict[str, Any]:
    """Reload ``svc`` (a NodeService) from its file: the answer ``jumpctl reload`` prints;
    ``applied`` False with ``error`` when nothing was changed."""
    from twisted.logger import Logger

    from jumping.core.gateway import GatewayCore

    log = Logger()
    core = svc.core
    if core is None:
        return {"applied": False, "error": "the node is not serving yet: nothing to reload"}
    try:
        p = plan(svc.config)
    except ReloadRefused as e:
        log.error("policy reload rejected, keeping version {v} and the peers: {e}",
                  v=core.policy.version, e=str(e))  # fmt: skip
        svc.policy_rejections += 1
        svc.control_actions["reload", "rejected"] += 1
        return {"applied": False, "error": str(e)}
    now = svc.reactor.seconds()
    svc.run_outputs(core.set_policy(now, p.config.policy))
    svc.limits_changed()
    if isinstance(core, GatewayCore):
        svc.run_outputs(core.set_peers(now, p.peers))
    svc.config = p.config
    svc.control_actions["reload", "applied"] += 1
    log.info("reload: policy version {v} applied; peers added {a}, removed {r}, changed {c}",
             v=p.config.policy.version, a=p.added, r=p.removed, c=p.changed)  # fmt: skip
    return {
        "applied": True, "policy_version": str(p.config.policy.version),
        "peers_added": p.added, "peers_removed": p.removed, "peers_changed": p.changed,
    }  # fmt: skip
