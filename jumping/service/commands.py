"""
What the control socket answers (jumping/service/control.py): the node's status, its
sessions, and the two operator actions, ``terminate`` and ``reload``. Reads the service
and its core on the reactor thread; changes go through the core like everything else.
"""

from __future__ import annotations

from typing import Any

from jumping.service.control import ControlError
from jumping.sinkwriter import sink_health

#: the text given with ``jumpctl terminate --reason`` is cut to this many characters
MAX_REASON = 200


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jumping")
    except PackageNotFoundError:
        return "unknown"


def _address(a: Any) -> str | None:
    if a is None:
        return None
    try:
        host, port = a[0], a[1]
    except (TypeError, IndexError):
        return str(a)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _path(p: Any) -> dict[str, Any] | None:
    if p is None:
        return None
    return {
        "transport_id": p.transport_id,
        "kind": p.kind,
        "local": _address(p.local_address),
        "remote": _address(p.remote_address),
        "connected": bool(p.connected),
    }


def status(svc: Any) -> dict[str, Any]:
    core = svc.core
    now = svc.reactor.seconds()
    cfg = svc.config
    out: dict[str, Any] = {
        "node_id": cfg.node_id,
        "role": cfg.role,
        "version": _version(),
        "uptime_s": round(now - svc.started_at, 3) if svc.started_at is not None else None,
        "serving": core is not None,
        "policy_version": str(core.policy.version if core else cfg.policy.version),
        "sessions": dict(sorted(core.state_counts().items())) if core else {},
        # what the core dropped and counted since it started, by reason (the metrics'
        # jumping_drops_total and counters, for an operator without a Prometheus server)
        "drops": dict(sorted(core.drops.items())) if core else {},
        "counters": dict(sorted(core.counters.items())) if core else {},
        "tun": {"name": cfg.tun.name, "mtu": svc.mtu, "write_errors": svc.tun_write_errors},
        "dispatch": "lean" if getattr(svc, "lean_dispatch", False) else "twisted",
        "sinks": [
            {
                "name": s.name,
                "delivered": s.delivered,
                "dropped": s.dropped,
                "queue_depth": s.queue_depth,
                **sink_health(s),
            }
            for s in svc.sinks
        ],  # fmt: skip
        "listeners": [{"local": _address(lst.local_address)} for lst in svc.listeners],
        "paths": [_path(p) for p in svc.paths],
        "control_actions": {f"{a}:{r}": n for (a, r), n in sorted(svc.control_actions.items())},
    }
    if cfg.role == "gateway":
        own = svc.ownership
        out["ownership"] = {
            "backend": cfg.ownership.name,
            "healthy": bool(own.healthy) if own is not None else False,
            "shared": bool(own.shared) if own is not None else False,
        }
        out["peers"] = len(core.peers) if core is not None else len(cfg.peers)
        if core is not None:
            dp = svc.dataplane
            out["handshakes"] = handshake_state(core, dp.handshakes, dp.initiation_gate)
    return out


def handshake_state(core: Any, queue: Any, gate: Any = None) -> dict[str, Any]:
    """Whether cookies are required now and why (the figures of the load trigger,
    docs/security.md), the handshake queue and the initiation gate: what the metrics'
    jumping_handshake_*, jumping_cookies_required and jumping_initiation_gate_* show, for an
    operator without a Prometheus server."""
    now = core._now
    out = {
        "cookie_mode": core.cookie_mode,
        "cookies_required": core.under_load_now(now),
        "load": round(core.handshake_work.load(now), 4),
        "wasted_load": round(core.wasted_work.load(now), 4),
        "load_fraction_trigger": core.policy.handshake_load_fraction,
        "cost_s": round(core.handshake_work.cost, 6),
        "queue": {
            "depth": len(queue),
            "limit": queue.limit,
            "queued": queue.queued,
            "served": queue.served,
            "dropped": queue.dropped,
        },
    }
    if gate is not None:
        out["gate"] = {
            "available": gate.available,
            "passes": gate.passes,
            "refused": gate.refused,
            "errors": gate.errors,
        }
    return out


def sessions(svc: Any) -> list[dict[str, Any]]:
    core = svc.core
    if core is None:
        return []
    now = svc.reactor.seconds()
    stats = getattr(core, "stats", None)  # a client's candidate paths (ClientCore.stats)
    rows = []
    for s in list(core.sessions.values()):
        kp = s.current
        row: dict[str, Any] = {
            "session_id": s.sid_hex,
            "peer": s.peer.name,
            "peer_public_key": s.peer.public_key.hex(),
            "state": s.fsm.state.value,
            "state_version": s.fsm.state_version,
            "receiver_index": kp.local_index if kp is not None else None,
            "path": _path(s.path),
            "rx_bytes": s.rx_bytes,
            "tx_bytes": s.tx_bytes,
            "rx_packets": s.rx_packets,
            "tx_packets": s.tx_packets,
            "age_s": round(now - s.created, 3),
            "last_handshake_s_ago": round(now - kp.created, 3) if kp is not None else None,
            "last_rx_s_ago": round(now - s.last_rx, 3),
            "owner_token": s.owner_token,
            "owned": bool(s.owned),
        }
        if stats is not None:
            window = core.policy.loss_window_ms / 1000.0
            row["candidates"] = [
                {
                    "transport_id": st.transport_id,
                    "kind": path.kind,
                    "remote": _address(path.remote_address),
                    "active": path is s.path,
                    "srtt_ms": None if st.srtt is None else round(st.srtt * 1000, 3),
                    "min_rtt_ms": None if st.min_rtt is None else round(st.min_rtt * 1000, 3),
                    "loss": round(st.loss(now, window), 4),
                    "score": round(st.score(now, core.policy), 3),
                    "validated": bool(st.validated),
                }
                for path, st in list(stats.items())
            ]
        rows.append(row)
    rows.sort(key=lambda r: (r["peer"], r["session_id"]))
    return rows


def terminate(svc: Any, session_id: Any, reason: Any = None) -> dict[str, Any]:
    from jumping.core.fsm import Reason

    core = svc.core
    if core is None:
        raise ControlError("the node is not serving sessions yet")
    if not isinstance(session_id, str):
        raise ControlError("terminate needs a session_id (hex)")
    try:
        sid = bytes.fromhex(session_id)
    except ValueError:
        raise ControlError(f"{session_id!r} is not a session ID (hex)") from None
    if sid not in core.sessions:
        raise ControlError(f"unknown session {session_id}")
    text = "" if reason is None else str(reason)[:MAX_REASON]
    svc.run_outputs(core.terminate(svc.reactor.seconds(), sid, Reason.OPERATOR_TERMINATED, text))
    svc.control_actions["terminate", "done"] += 1
    return {"session_id": session_id, "reason": Reason.OPERATOR_TERMINATED.value, "detail": text}


def handle(svc: Any, request: dict[str, Any]) -> Any:
    """Answer one control request (raises ControlError for a refusal)."""
    command = request["command"]
    if command == "status":
        svc.control_actions["status", "done"] += 1
        return status(svc)
    if command == "sessions":
        svc.control_actions["sessions", "done"] += 1
        return sessions(svc)
    if command == "terminate":
        try:
            return terminate(svc, request.get("session_id"), request.get("reason"))
        except ControlError:
            svc.control_actions["terminate", "refused"] += 1
            raise
    if command == "reload":
        result = svc.reload()
        if not result["applied"]:
            raise ControlError(result["error"])
        return result
    raise ControlError(f"unknown command {command!r} (status, sessions, terminate, reload)")
