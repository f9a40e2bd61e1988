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
use and free) to OUT.txt: how much of the RSS is objects and how much is allocator slack,
followed by a census of the live objects by type (count and bytes, untracked ones such as
floats, ints and bytes found as the referents of tracked ones) and its growth since the
first snapshot.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import tracemalloc
from collections import Counter
from typing import Any


def census() -> tuple[Counter[str], Counter[str]]:
    """Live objects by type name: (counts, bytes). Tracked objects come from the collector,
    untracked ones (floats, ints, strings, bytes, untracked tuples) as their referents, named
    with the type of the first tracked object found holding them."""
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    tracked = gc.get_objects()
    seen = {id(o) for o in tracked}  # made after the list: not counted as one of them
    for o in tracked:
        name = type(o).__name__
        counts[name] += 1
        sizes[name] += sys.getsizeof(o)
        for r in gc.get_referents(o):
            i = id(r)
            if i in seen:
                continue
            seen.add(i)
            name = f"{type(r).__name__} in {type(o).__name__}"  # by its first holder
            counts[name] += 1
            sizes[name] += sys.getsizeof(r)
    return counts, sizes


def main() -> None:
    out, sys.argv = sys.argv[1], ["twistd", *sys.argv[2:]]
    off = os.environ.get("JUMPING_TRACE_OFF") == "1"
    if not off:
        tracemalloc.start(int(os.environ.get("JUMPING_TRACE_FRAMES", "1")))
    snaps: list[tracemalloc.Snapshot] = []
    censuses: list[tuple[Counter[str], Counter[str]]] = []

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
            counts, sizes = census()
            censuses.append((counts, sizes))
            c0, s0 = censuses[0]
            f.write("--- objects by type: count, bytes, growth since the first snapshot\n")
            for name, size in sorted(sizes.items(), key=lambda kv: s0[kv[0]] - kv[1])[:60]:
                f.write(
                    f"{name:>28} {counts[name]:>10} {size:>12} B"
                    f"  {counts[name] - c0[name]:>+10} {size - s0[name]:>+12} B\n"
                )
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
