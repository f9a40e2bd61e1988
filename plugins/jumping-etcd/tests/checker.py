"""
An independent checker of invariant 2 in docs/protocol.md across a cluster: no interval in which two
gateways forwarded data for the same session.

It reads two kinds of evidence that do not come from the same place:

- the gateways' recorded events (JSON lines): per gateway and session, the ownership
  intervals, from ``OWNERSHIP_CHANGE`` naming that gateway as owner (with its fencing token)
  to the session's end on that gateway (``SESSION_TERMINATED``, an ``OWNERSHIP_CHANGE``
  naming another owner, or the gateway's death: ``ends``);
- per-gateway forwarding counters sampled from outside the process: ``(ts_ms, value)``
  samples of the gateway's TUN ``rx_packets`` (inner packets the gateway decrypted and
  injected), ``None`` while the device does not exist (the process is dead).

Forwarding happened in the sample window ``(t[i-1], t[i]]`` when the counter increased.
Violations (each a string):

- ``TWO_OWNERS``: two gateways' ownership intervals of one session overlap and the later
  one does not carry a strictly higher fencing token;
- ``FORWARD_WITHOUT_OWNERSHIP``: a gateway forwarded in a window lying entirely outside
  every ownership interval it had (after it was fenced, before it claimed) — ``slack_ms``
  allows for the time between a packet and the event recording it;
- ``TWO_FORWARDERS``: two gateways owning one session forwarded in an interleaved way:
  one certainly forwarded after the other certainly had (a window of the earlier owner
  starts at or after the end of a window of the later owner). The resolution is one
  sample period: an overlap shorter than that cannot be proven either way.

``python3 checker.py --events gw1.jsonl gw2.jsonl --counters gw1=c1.txt gw2=c2.txt``
exits 1 on violations. Counter files are lines ``ts_ms value`` (``-`` for no device).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INF = float("inf")


@dataclass
class Ownership:
    gateway: str
    session: str
    token: int
    start: float
    end: float = INF


def ownerships(
    events: Iterable[Mapping[str, Any]], ends: Mapping[str, float] | None = None
) -> list[Ownership]:
    """Ownership intervals from the gateways' events (``ends``: gateway -> death time)."""
    out: list[Ownership] = []
    open_: dict[tuple[str, str], Ownership] = {}
    for e in sorted(events, key=lambda e: (e.get("ts_ms", 0), e.get("seq", 0))):
        node, sid, et, ts = (
            e.get("node_id"),
            e.get("session_id"),
            e.get("event_type"),
            e.get("ts_ms"),
        )
        if not isinstance(node, str) or not isinstance(sid, str) or not isinstance(ts, int):
            continue
        key = (node, sid)
        if et == "OWNERSHIP_CHANGE":
            held = open_.pop(key, None)
            if held is not None:
                held.end = min(held.end, ts)
            if e.get("owner") == node and e.get("reason_code") != "OWNERSHIP_LOST":
                own = Ownership(node, sid, int(e.get("fencing_token") or 0), ts)
                open_[key] = own
                out.append(own)
        elif et == "SESSION_TERMINATED" or (
            et == "SESSION_STATE_CHANGE" and e.get("new_state") == "TERMINATED"
        ):
            held = open_.pop(key, None)
            if held is not None:
                held.end = min(held.end, ts)
    for own in out:
        if ends and own.gateway in ends:
            own.end = min(own.end, ends[own.gateway])
    return out


def windows(samples: Sequence[tuple[float, int | None]]) -> list[tuple[float, float]]:
    """The sample windows ``(t0, t1]`` in which the counter went up."""
    out = []
    for (t0, v0), (t1, v1) in zip(samples, samples[1:], strict=False):
        if v0 is not None and v1 is not None and v1 > v0:
            out.append((t0, t1))
    return out


def check(
    events: Iterable[Mapping[str, Any]],
    counters: Mapping[str, Sequence[tuple[float, int | None]]],
    ends: Mapping[str, float] | None = None,
    slack_ms: float = 300.0,
) -> list[str]:
    owns = ownerships(events, ends)
    problems: list[str] = []
    by_session: dict[str, list[Ownership]] = {}
    for o in owns:
        by_session.setdefault(o.session, []).append(o)
    for sid, items in by_session.items():
        items.sort(key=lambda o: (o.start, o.token))
        for j, new in enumerate(items):
            for old in items[:j]:
                if old.gateway != new.gateway and old.end > new.start and new.token <= old.token:
                    problems.append(
                        f"TWO_OWNERS: {new.gateway} owns {sid} from {new.start} with token "
                        f"{new.token} while {old.gateway} holds token {old.token} "
                        f"({old.start}..{old.end})"
                    )
    act = {g: windows(s) for g, s in counters.items()}
    for g, ws in act.items():
        mine = [o for o in owns if o.gateway == g]
        for a, b in ws:
            if not any(o.start - slack_ms <= b and a <= o.end + slack_ms for o in mine):
                problems.append(
                    f"FORWARD_WITHOUT_OWNERSHIP: {g} forwarded in ({a}, {b}] owning nothing"
                )
    for sid, items in by_session.items():
        for i, early in enumerate(items):
            for late in items[i + 1 :]:
                if early.gateway == late.gateway:
                    continue
                ea = [w for w in act.get(early.gateway, ()) if _inside(w, early, slack_ms)]
                la = [w for w in act.get(late.gateway, ()) if _inside(w, late, slack_ms)]
                if not ea or not la:
                    continue
                first_late_end = min(b for _a, b in la)
                last_early_start = max(a for a, _b in ea)
                if last_early_start >= first_late_end:
                    problems.append(
                        f"TWO_FORWARDERS: {sid}: {early.gateway} still forwarded in "
                        f"({last_early_start}, ...] after {late.gateway} had forwarded "
                        f"(by {first_late_end})"
                    )
    return problems


def _inside(w: tuple[float, float], o: Ownership, slack: float) -> bool:
    return o.start - slack <= w[1] and w[0] <= o.end + slack


def read_events(paths: Iterable[Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        for line in Path(p).read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def read_counters(path: Path) -> list[tuple[float, int | None]]:
    out: list[tuple[float, int | None]] = []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        try:
            out.append((float(parts[0]), None if parts[1] == "-" else int(parts[1])))
        except ValueError:
            pass
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", nargs="+", required=True)
    ap.add_argument("--counters", nargs="*", default=[], help="GATEWAY=FILE")
    ap.add_argument("--slack-ms", type=float, default=300.0)
    args = ap.parse_args(argv)
    counters = {}
    for item in args.counters:
        g, _, f = item.partition("=")
        counters[g] = read_counters(Path(f))
    problems = check(read_events(args.events), counters, slack_ms=args.slack_ms)
    for p in problems:
        print(p)
    print("ok" if not problems else f"{len(problems)} violation(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
