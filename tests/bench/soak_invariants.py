"""
Long invariant soak: random fault schedules over many seeds, every invariant of docs/protocol.md
invariant checked after every simulation step.

    python3 tests/bench/soak_invariants.py --seeds 1000 --transitions 1000000

Each seed runs a fresh client/gateway pair over two simulated links; every 0.2-3 s (virtual)
one random fault is applied (blackhole/restore a link, loss 0-60 %, NAT rebinding, a burst
of traffic, an idle gap of 5-60 s in which the session goes quiet; odd seeds use keys that
expire after 20 s, so quiet sessions lose their keys and rekey on their next packet). Seeds run until the total number of state transitions reaches the target.
Prints progress every 100 seeds and a JSON summary; exit status 1 on any violation.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from jumping.core.policy import Policy
from jumping.testing.invariants import InvariantChecker
from jumping.testing.sim import SimNet

SHORT_KEYS = Policy(rekey_after_s=15, key_expiry_grace_s=5, nat_keepalive_s=5)


def run_seed(seed: int, transitions: int) -> tuple[int, int, list[str], float]:
    r = random.Random(seed)
    # every other seed with short-lived keys, so that quiet sessions' keys expire and
    # their first packet after idle rekeys within the run
    policy = SHORT_KEYS if seed % 2 else None
    net = SimNet(seed=seed, links=2, policy=policy)
    net.checker = checker = InvariantChecker(net.policy)
    net.echo = True
    net.start()
    while checker.transitions < transitions and not checker.violations:
        net.run_for(r.uniform(0.2, 3.0))
        f = r.randrange(7)
        i = r.randrange(2)
        if f == 0:
            net.links[i].up = False
        elif f == 1:
            net.links[i].up = True
        elif f == 2:
            net.links[i].loss = r.choice([0.0, 0.05, 0.2, 0.4, 0.6])
        elif f == 3:
            net.rebind(i)
        elif f == 4:
            net.traffic(until=net.now + r.uniform(0.2, 2.0), interval=0.05)
        elif f == 5:
            for link in net.links:
                link.up, link.loss = True, 0.0
        else:
            net.run_for(r.uniform(5.0, 60.0))  # an idle gap: the session goes quiet
    return checker.transitions, checker.switches, checker.violations, net.now


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=1000)
    ap.add_argument("--transitions", type=int, default=1_000_000)
    ap.add_argument("--first-seed", type=int, default=0)
    a = ap.parse_args()
    per_seed = -(-a.transitions // a.seeds)
    t0 = time.monotonic()
    total = switches = 0
    virtual = 0.0
    bad: list[str] = []
    for k in range(a.seeds):
        seed = a.first_seed + k
        n, sw, violations, end = run_seed(seed, per_seed)
        total += n
        switches += sw
        virtual += end - 1_800_000_000.0
        bad += [f"seed {seed}: {v}" for v in violations]
        if (k + 1) % 100 == 0:
            print(
                f"[soak] {k + 1} seeds, {total} transitions, {switches} switches, "
                f"{len(bad)} violations, {time.monotonic() - t0:.0f}s",
                file=sys.stderr,
            )
    summary = {
        "bench": "soak_invariants",
        "seeds": a.seeds,
        "transitions": total,
        "switches": switches,
        "virtual_hours": round(virtual / 3600, 1),
        "violations": len(bad),
        "runtime_s": round(time.monotonic() - t0, 1),
        "first_violations": bad[:10],
    }
    print(json.dumps(summary))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
