"""
twistd under tracemalloc, for ``loadgen.py --trace-memory``: where a gateway's memory goes.

    python3 tests/bench/scale/traced.py OUT.txt twistd-args...

Starts tracing (``JUMPING_TRACE_FRAMES`` frames per allocation, default 1), then runs twistd
with the rest of the arguments. Each SIGUSR2 takes a snapshot: the first is the baseline (the
gateway with its peers and no session), each later one writes to OUT.txt the allocation sites
that grew since the baseline, largest first, with bytes and objects. Tracing costs time and
memory of its own: a traced run's RSS and CPU figures are not measurements.

``JUMPING_TRACE_OFF=1`` does not trace (RSS and CPU are then real) and each SIGUSR2 appends
instead the allocator's own figures (``sys._debugmallocstats()``: arenas, pools, blocks in
use and free) to OUT.txt: how much of the RSS is objects and how much is allocator slack.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import tracemalloc
from typing import Any


def main() -> None:
    out, sys.argv = sys.argv[1], ["twistd", *sys.argv[2:]]
    off = os.environ.get("JUMPING_TRACE_OFF") == "1"
    if not off:
        tracemalloc.start(int(os.environ.get("JUMPING_TRACE_FRAMES", "1")))
    snaps: list[tracemalloc.Snapshot] = []

    def mallocstats(_sig: int, _frame: Any) -> None:
        gc.collect()
        sys.stderr.flush()
        saved = os.dup(2)
        with open(out, "a") as f:
            f.write(f"--- malloc stats, {len(snaps)}\n")
            f.flush()
            os.dup2(f.fileno(), 2)
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
        snaps.append(None)  # type: ignore[arg-type]

    def snapshot(_sig: int, _frame: Any) -> None:
        gc.collect()
        snap = tracemalloc.take_snapshot()
        if not snaps:
            snaps.append(snap)
            with open(out, "w") as f:
                f.write(f"baseline: {tracemalloc.get_traced_memory()[0]} bytes traced\n")
            return
        grown = snap.compare_to(snaps[0], "traceback")
        total = sum(s.size_diff for s in grown)
        with open(out, "a") as f:
            f.write(f"grown since the baseline: {total} bytes\n")
            for s in grown[:60]:
                where = " <- ".join(f"{fr.filename}:{fr.lineno}" for fr in s.traceback)
                f.write(f"{s.size_diff:>12} B {s.count_diff:>9} objects  {where}\n")

    signal.signal(signal.SIGUSR2, mallocstats if off else snapshot)
    from twisted.scripts.twistd import run

    run()


if __name__ == "__main__":
    main()
