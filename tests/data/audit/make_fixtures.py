"""
Build the audit fixtures of this directory: one clean history and hand-made bad ones.

Each bad history is the clean pattern with exactly one defect, chained correctly after the
defect (except ``chain-altered``), so that the audit reports that defect and nothing else.
Run ``python3 tests/data/audit/make_fixtures.py`` (PYTHONPATH=.) to rewrite the files;
``tests/test_audit.py`` checks that they are up to date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from jumping.chain import chain_hash

HERE = Path(__file__).resolve().parent
KEY = bytes(range(32))
T0 = 1_800_000_000_000
A = "5a" * 16  # the session of every history
B = "b7" * 16


class Node:
    """Numbers and chains events like the service's EventPipeline (independently built)."""

    def __init__(self, node_id: str, key: bytes = KEY) -> None:
        self.node_id, self.key, self.seq, self.prev = node_id, key, 0, "0" * 64

    def ev(
        self, ts: int, event_type: str, sid: str | None, version: int,
        reason: str | None = None, **fields: Any,
    ) -> dict[str, Any]:  # fmt: skip
        e: dict[str, Any] = {
            "schema": "jumping.event/1", "ts_ms": T0 + ts, "event_type": event_type,
            "session_id": sid, "node_id": self.node_id, "policy_version": "7",
            "state_version": version, "reason_code": reason, "seq": self.seq,
            "prev_hash": self.prev,
        }  # fmt: skip
        e.update(fields)
        self.seq += 1
        self.prev = chain_hash(self.key, e)
        return e


def change(n: Node, ts: int, sid: str, v: int, prev: str, new: str, reason: str, **f: Any):
    return n.ev(ts, "SESSION_STATE_CHANGE", sid, v, reason, previous_state=prev, new_state=new, **f)


def udp(i: int) -> dict[str, str]:
    return {"transport_id": f"udp:{i}", "transport_kind": "udp"}


def switch(n: Node, ts: int, sid: str, v: int, old: int, new: int, latency: int = 120):
    return n.ev(
        ts, "TRANSPORT_SWITCH", sid, v, old_transport_id=f"udp:{old}", old_transport_kind="udp",
        new_transport_id=f"udp:{new}", new_transport_kind="udp", switch_latency_ms=latency,
    )  # fmt: skip


def start(n: Node, ts: int, sid: str = A, token: int | None = 1) -> list[dict[str, Any]]:
    out = [
        n.ev(ts, "TRANSPORT_ATTACHED", sid, 0, **udp(0)),
        change(n, ts, sid, 1, "BIRTH", "ATTACHED", "HANDSHAKE_OK"),
    ]
    if token is not None:
        out.append(n.ev(ts, "OWNERSHIP_CHANGE", sid, 1, owner=n.node_id, fencing_token=token))
    return out


def clean() -> list[dict[str, Any]]:
    """Every event type, two gateways and a client, a failover and a handover."""
    gw1, gw2, c1 = Node("gw1"), Node("gw2"), Node("c1")
    ev: list[dict[str, Any]] = []
    ev += [gw1.ev(0, "POLICY_RELOADED", None, 0, previous_policy_version="6")]
    ev += start(gw1, 100)
    ev += [c1.ev(90, "TRANSPORT_ATTACHED", A, 0, **udp(10))]
    ev += [change(c1, 90, A, 1, "BIRTH", "ATTACHED", "HANDSHAKE_OK")]
    ev += [
        c1.ev(2000, "POLICY_EVENT", A, 1, policy_name="loss_volatile_threshold",
              threshold_value=0.2, observed_value=0.35),
        change(c1, 2000, A, 2, "ATTACHED", "VOLATILE", "LOSS_THRESHOLD_EXCEEDED"),
        change(c1, 6000, A, 3, "VOLATILE", "DEGRADED", "VOLATILE_PERSISTED"),
        change(gw1, 6100, A, 2, "ATTACHED", "RECOVERING", "TRANSPORT_DEAD", silence_ms=3000),
        change(c1, 6200, A, 4, "DEGRADED", "RECOVERING", "POLICY_FORCED_RECOVERY"),
        c1.ev(6200, "REATTACH_ATTEMPT", A, 4, transport_id="udp:11"),
        gw1.ev(6250, "REATTACH_ATTEMPT", A, 2, transport_id="udp:1"),
        switch(gw1, 6300, A, 2, 0, 1, latency=200),
        change(gw1, 6300, A, 3, "RECOVERING", "ATTACHED", "REATTACH_OK"),
        gw1.ev(6300, "REATTACH_RESULT", A, 3, "REATTACH_OK", ok=True),
        switch(c1, 6320, A, 4, 10, 11),
        change(c1, 6320, A, 5, "RECOVERING", "ATTACHED", "REATTACH_OK"),
        c1.ev(6320, "REATTACH_RESULT", A, 5, "REATTACH_OK", ok=True),
        c1.ev(6400, "TRANSPORT_SWITCH_DENIED", A, 5, "COOLDOWN_ACTIVE",
              old_transport_id="udp:11", new_transport_id="udp:10"),
        gw1.ev(9000, "TRANSPORT_SWITCH_FAILED", A, 3, "REATTACH_VALIDATION_FAILED",
               old_transport_id="udp:1", new_transport_id="udp:2", error="path_validation_timeout"),
        gw1.ev(10000, "SECURITY_EVENT", None, 0, violation_type="REPLAY_DETECTED", count=1200,
               window_ms=10000),
        gw1.ev(60100, "SESSION_STATS", A, 3, bytes_in=1_048_576, bytes_out=8_388_608,
               packets_in=900, packets_out=6000, transport_id="udp:1", rtt_ms=23.5, loss=0.01,
               interval_ms=60000),
    ]  # fmt: skip
    # gw2 takes the session over with a newer fencing token; gw1 is fenced out, then learns it
    ev += [gw2.ev(70000, "TRANSPORT_ATTACHED", A, 0, **udp(20))]
    ev += [change(gw2, 70000, A, 4, "BIRTH", "ATTACHED", "HANDSHAKE_OK")]
    ev += [gw2.ev(70000, "OWNERSHIP_CHANGE", A, 4, owner="gw2", fencing_token=9)]
    ev += [change(gw1, 70040, A, 4, "ATTACHED", "TERMINATED", "OWNERSHIP_LOST")]
    ev += [
        gw1.ev(70040, "SESSION_TERMINATED", A, 4, "OWNERSHIP_LOST", lifetime_ms=69940,
               bytes_in=1_100_000, bytes_out=8_400_000, packets_in=950, packets_out=6100),
        gw1.ev(70040, "OWNERSHIP_CHANGE", A, 4, "OWNERSHIP_LOST", owner=None, fencing_token=None),
        change(gw2, 80000, A, 5, "ATTACHED", "TERMINATED", "OPERATOR_TERMINATED"),
        gw2.ev(80000, "SESSION_TERMINATED", A, 5, "OPERATOR_TERMINATED", lifetime_ms=10000,
               bytes_in=2000, bytes_out=3000),
        change(c1, 80030, A, 6, "ATTACHED", "TERMINATED", "OPERATOR_TERMINATED",
               detail="peer_terminated"),
        c1.ev(80030, "SESSION_TERMINATED", A, 6, "OPERATOR_TERMINATED", lifetime_ms=79940,
              bytes_in=8_400_000, bytes_out=1_100_000),
        # a loss announced about an earlier run of gw1 (its spool was full before a restart)
        gw1.ev(90000, "EVENTS_LOST", None, 0, sink="kafka0", first_seq=4100, last_seq=4199,
               count=100, lost_boot_id="0f" * 16),
    ]  # fmt: skip
    return ev


def simple(n: Node, defect: str = "") -> list[dict[str, Any]]:
    """A one-node failover history; ``defect`` picks the one thing that goes wrong."""
    ev = start(n, 0)
    ev.append(change(n, 2000, A, 2, "ATTACHED", "VOLATILE", "HEARTBEAT_TIMEOUT"))
    if defect == "illegal":
        ev.append(change(n, 3000, A, 3, "VOLATILE", "TERMINATED", "HEALTH_RECOVERED"))
        return ev
    if defect == "version":
        ev.append(change(n, 3000, A, 2, "VOLATILE", "RECOVERING", "TRANSPORT_DEAD"))
        return ev
    ev.append(change(n, 3000, A, 3, "VOLATILE", "RECOVERING", "TRANSPORT_DEAD"))
    if defect == "binding":
        ev.append(n.ev(3300, "TRANSPORT_ATTACHED", A, 3, **udp(1)))
    recovered = 12000 if defect == "recovering" else 3300
    ev.append(switch(n, recovered, A, 3, 0, 1, latency=recovered - 3000))
    ev.append(change(n, recovered, A, 4, "RECOVERING", "ATTACHED", "REATTACH_OK"))
    if defect == "switch_rate":
        ev.append(switch(n, recovered + 200, A, 4, 1, 2, latency=0))
    ev.append(n.ev(20000, "SESSION_STATS", A, 4, bytes_in=5000, bytes_out=7000,
                   packets_in=40, packets_out=50, transport_id="udp:1"))  # fmt: skip
    ev.append(change(n, 30000, A, 5, "ATTACHED", "TERMINATED", "OPERATOR_TERMINATED"))
    ev.append(n.ev(30000, "SESSION_TERMINATED", A, 5, "OPERATOR_TERMINATED", lifetime_ms=30000,
                   bytes_in=5000, bytes_out=7000))  # fmt: skip
    if defect == "after":
        ev.append(switch(n, 31000, A, 5, 1, 0))
    return ev


def two_owners() -> list[dict[str, Any]]:
    gw1, gw2 = Node("gw1"), Node("gw2")
    ev = start(gw1, 0, token=5) + start(gw2, 1000, token=5)  # same token: split brain
    ev.append(change(gw1, 5000, A, 2, "ATTACHED", "TERMINATED", "OWNERSHIP_CONFLICT"))
    ev.append(gw1.ev(5000, "SESSION_TERMINATED", A, 2, "OWNERSHIP_CONFLICT", lifetime_ms=5000,
                     bytes_in=0, bytes_out=0))  # fmt: skip
    return ev


def rechained(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Renumber and rechain every node's events in list order (after a deletion)."""
    nodes: dict[str, Node] = {}
    out = []
    for e in events:
        n = nodes.setdefault(e["node_id"], Node(e["node_id"]))
        base = {k: v for k, v in e.items() if k not in ("seq", "prev_hash")}
        f = dict(base)
        for k in ("schema", "ts_ms", "event_type", "session_id", "node_id", "policy_version",
                  "state_version", "reason_code"):  # fmt: skip
            f.pop(k)
        out.append(n.ev(e["ts_ms"] - T0, e["event_type"], e["session_id"], e["state_version"],
                        e["reason_code"], **f))  # fmt: skip
    return out


def fixtures() -> dict[str, list[Any]]:
    gap = simple(Node("gw1"))
    del gap[7]  # seq 7 (a SESSION_STATS) lost in transit
    altered = simple(Node("gw1"))
    altered[7] = dict(altered[7], bytes_in=50)  # someone lowered the byte count
    schema_bad = simple(Node("gw1"))
    bad_lines: list[Any] = [json.dumps(e, sort_keys=True) for e in simple(Node("gw1"))]
    bad_lines.insert(3, '{"schema": "jumping.event/1", "ts_ms": ')
    bad_lines.insert(5, "[1, 2, 3]")
    del schema_bad[7]["bytes_out"]
    schema_bad = rechained(schema_bad)
    return {
        "clean": clean(),
        "illegal-transition": simple(Node("gw1"), "illegal"),
        "version-backwards": simple(Node("gw1"), "version"),
        "after-terminated": simple(Node("gw1"), "after"),
        "seq-gap": gap,
        "chain-altered": altered,
        "two-bindings": simple(Node("gw1"), "binding"),
        "two-owners": two_owners(),
        "long-recovering": simple(Node("gw1"), "recovering"),
        "switch-rate": simple(Node("gw1"), "switch_rate"),
        "schema-invalid": schema_bad,
        "bad-lines": bad_lines,
    }


def render(lines: list[Any]) -> str:
    return "".join(
        (x if isinstance(x, str) else json.dumps(x, sort_keys=True)) + "\n" for x in lines
    )


def main() -> int:
    for name, lines in fixtures().items():
        (HERE / f"{name}.jsonl").write_text(render(lines))
    (HERE / "chain.key").write_text(KEY.hex() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
