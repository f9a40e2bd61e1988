"""
What unauthenticated input may cost, and how it is seen (docs/security.md).

- :class:`TokenBucket`: ``rate`` per second, bursts up to ``burst``.
- :class:`SourceLimiter`: one token bucket per source prefix (IPv4 /32, IPv6 /64) in a table
  of bounded size, least recently used forgotten first (counted).
- :class:`WorkMeter`: handshake work per second (seconds of CPU per second), an
  exponentially decayed rate times the measured cost of one handshake.
- :class:`ViolationLedger`: per security violation type, the count over an interval and the
  heaviest source prefixes (Misra-Gries summary: bounded, O(1) amortized per record).

All pure: time comes from the caller. Every table here has a size limit.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from jumping.core.pathhandle import PathHandle


def source_prefix(path: PathHandle | None) -> str | None:
    """The prefix a path's remote address is limited and reported by: ``a.b.c.d/32`` or
    ``[v6 prefix]/64``; None if the path has no IP address."""
    addr = getattr(path, "remote_address", None)
    if not isinstance(addr, tuple) or not addr or not isinstance(addr[0], str):
        return None
    host = addr[0]
    if ":" not in host:
        return host + "/32"
    try:
        net = ipaddress.IPv6Network((host.split("%", 1)[0], 64), strict=False)
    except ValueError:
        return None
    return f"[{net.network_address}]/64"


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "at", "denied")

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.at = now
        self.denied = 0

    def ready(self, now: float, n: float = 1.0) -> bool:
        """Would :meth:`take` succeed now? (Takes nothing.)"""
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
        if self.tokens >= n:
            return True
        self.denied += 1
        return False

    def take(self, now: float, n: float = 1.0) -> bool:
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        self.denied += 1
        return False


#: buckets :meth:`SourceLimiter.allow` checks for pruning per call (amortized O(1))
PRUNE_PER_ALLOW = 2


class SourceLimiter:
    """Token buckets per source prefix. A prefix not seen for ``burst / rate`` seconds is
    back at a full bucket, so forgetting it early (table full) gives it nothing it would
    not have had; the table holds at most ``size`` prefixes.

    A full bucket is the same as no bucket, so full ones are forgotten
    (:meth:`prune`, least recently used first): a gateway whose 100 000 clients all
    handshook once does not keep 100 000 buckets while they idle. ``allow`` prunes a
    couple per call and the node's timer the rest, in bounded steps.

    A bucket is a ``(tokens, at)`` pair, not a :class:`TokenBucket`: a flood from spoofed
    sources brings a new prefix with almost every packet, and an object per prefix cost
    about 1 us of the flood path and 100 bytes more per entry. The arithmetic is
    :meth:`TokenBucket.take`'s, step for step, so the answers are the same
    (tests/core/test_limits.py)."""

    def __init__(self, rate: float, burst: int, size: int) -> None:
        self.rate = rate
        self.burst = burst
        self.size = size
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.evicted = 0
        self.denied = 0
        #: buckets forgotten because they were full again (:meth:`prune`)
        self.pruned = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, now: float, prefix: str | None) -> bool:
        if prefix is None:
            return True
        buckets = self._buckets
        b = buckets.get(prefix)
        if b is None:
            self.prune(now, PRUNE_PER_ALLOW)
            while len(buckets) >= self.size:
                buckets.popitem(last=False)
                self.evicted += 1
            tokens, at = float(self.burst), now
        else:
            buckets.move_to_end(prefix)
            tokens, at = b
            if now > at:
                tokens = min(self.burst, tokens + (now - at) * self.rate)
                at = now
        if tokens >= 1.0:
            buckets[prefix] = (tokens - 1.0, at)
            return True
        buckets[prefix] = (tokens, at)
        self.denied += 1
        return False

    def prune(self, now: float, limit: int) -> int:
        """Forget up to ``limit`` buckets that are full again at ``now``, from the least
        recently used on; stops at the first that is not. Returns how many went."""
        buckets = self._buckets
        rate, burst = self.rate, self.burst
        n = 0
        while n < limit and buckets:
            prefix, (tokens, at) = next(iter(buckets.items()))
            if tokens + (now - at) * rate < burst:
                break
            del buckets[prefix]
            n += 1
        self.pruned += n
        return n

    def configure(self, rate: float, burst: int, size: int) -> None:
        """New limits, for the buckets held too (as each would be if made under them)."""
        self.rate, self.burst, self.size = rate, burst, size
        while len(self._buckets) > size:
            self._buckets.popitem(last=False)
            self.evicted += 1


class WorkMeter:
    """Handshake work in seconds of CPU per second, decayed with time constant ``tau``.

    ``cost`` is what one handshake costs; the service measures it (the core has no clock
    of its own) and the default is a conservative figure for one Noise IK response."""

    def __init__(self, cost: float = 1 / 1500, tau: float = 1.0) -> None:
        self.cost = cost
        self.tau = tau
        self._rate = 0.0
        self._at = 0.0

    def _decay(self, now: float) -> None:
        if now > self._at:
            self._rate *= math.exp((self._at - now) / self.tau)
            self._at = now

    def add(self, now: float, n: float = 1.0) -> None:
        """``n`` units of work now (a negative ``n`` takes back work counted before; the
        rate never goes below zero)."""
        self._decay(now)
        self._rate = max(0.0, self._rate + n / self.tau)

    def load(self, now: float) -> float:
        """Fraction of a core spent on handshakes, recently."""
        self._decay(now)
        return self._rate * self.cost


class ViolationLedger:
    """Counts drop reasons by security violation type, with the heaviest source prefixes.

    An occurrence that concerns a known session (``record(..., session=sid)``: a replay or
    a forged packet aimed at its receiver index, an invalid reattach proof) is counted for
    that session, up to ``sessions`` sessions per interval (the rest count node-wide).
    ``flush`` returns, per (violation type, session or None) seen since the last flush: the
    exact count, up to ``top`` prefixes with their (lower-bound) counts, and the count not
    attributed to them. Every occurrence is in exactly one entry.
    """

    def __init__(
        self, violations: Mapping[str, Iterable[str]], tracked: int = 64, sessions: int = 64
    ) -> None:
        self.type_of = {r: v for v, reasons in violations.items() for r in reasons}
        self.tracked = tracked
        self.sessions = sessions
        self._counts: dict[tuple[str, str | None], int] = {}
        self._sources: dict[tuple[str, str | None], dict[str, int]] = {}
        self._attributed: set[str] = set()

    def _attribute(self, session: str | None) -> str | None:
        """The session an occurrence is counted for: ``session`` while fewer than
        ``sessions`` sessions were named this interval (or it was one of them), else None."""
        if session is not None and session not in self._attributed:
            if len(self._attributed) < self.sessions:
                self._attributed.add(session)
            else:
                return None
        return session

    def record(self, reason: str, source: str | None, session: str | None = None) -> None:
        v = self.type_of.get(reason)
        if v is None:
            return
        key = (v, self._attribute(session))
        self._counts[key] = self._counts.get(key, 0) + 1
        if source is None:
            return
        mg = self._sources.get(key)
        if mg is None:
            mg = self._sources[key] = {}
        c = mg.get(source)
        if c is not None:
            mg[source] = c + 1
        elif len(mg) < self.tracked:
            mg[source] = 1
        else:  # Misra-Gries: a new key when full takes one from everybody
            for k in [k for k, n in mg.items() if n == 1]:
                del mg[k]
            for k in mg:
                mg[k] -= 1

    def merge(
        self, reason: str, count: int, heavy: Iterable[tuple[str, int]],
        session: str | None = None,
    ) -> None:  # fmt: skip
        """``count`` occurrences of ``reason`` (concerning ``session``, as in
        :meth:`record`), summarised elsewhere by the same Misra-Gries rule as ``heavy``
        (prefix, count) pairs, each a lower bound: the summaries add, and one over
        ``tracked`` prefixes is cut back by its (tracked + 1)-th largest count, so every
        count stays a lower bound (a mergeable summary)."""
        v = self.type_of.get(reason)
        if v is None or count <= 0:
            return
        key = (v, self._attribute(session))
        self._counts[key] = self._counts.get(key, 0) + count
        mg = self._sources.get(key)
        if mg is None:
            mg = self._sources[key] = {}
        for source, n in heavy:
            mg[source] = mg.get(source, 0) + n
        if len(mg) > self.tracked:
            cut = sorted(mg.values(), reverse=True)[self.tracked]
            for k in [k for k, n in mg.items() if n <= cut]:
                del mg[k]
            for k in mg:
                mg[k] -= cut

    def flush(self, top: int) -> list[tuple[str, str | None, int, list[dict[str, Any]], int]]:
        out = []
        for (v, sid), count in self._counts.items():
            mg = self._sources.get((v, sid), {})
            heavy = sorted(mg.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
            named = [{"address": k, "count": n} for k, n in heavy]
            out.append((v, sid, count, named, count - sum(n for _k, n in heavy)))
        self._counts = {}
        self._sources = {}
        self._attributed = set()
        return out
