"""
A bounded on-disk spool of events: a segment log in one directory, appended by a sink's
writer thread and read by its shipper thread, which commits what the destination has
acknowledged (docs/events.md, "The spool").

Layout: ``<directory>/<first record number, 20 digits>.seg`` files, each a run of frames
``length (4 bytes) | crc32 (4) | ts_ms (8) | payload`` (big-endian; the payload is the
event's canonical JSON), and ``committed``, the number of the first record not yet
acknowledged (written atomically, by rename). Records have one number each, counted from
the first record the directory ever held, so a position survives restarts. At
:meth:`SegmentLog.open` a torn frame at the end (a crash in the middle of a write) is cut
off, and segments wholly below ``committed`` are deleted; the rest is delivered again, so
delivery is at least once (consumers deduplicate on the event identity).

Bounds: the segments' total size stays within ``max_bytes``. When a record does not fit,
``full = "drop_newest"`` (the default) refuses it, so what was accepted is kept until it is
delivered; ``"drop_oldest"`` deletes the oldest segment instead, delivered or not. Either
way the dropped events are counted and their seq ranges kept (:class:`LossLog`) so the node
can announce the gap (``EVENTS_LOST``) once there is room.

fsync (``fsync``): ``"interval"`` (default) syncs the active segment at most every
``fsync_interval_ms`` (1000) and at close: a crash of the node process loses nothing (the
data is in the kernel's page cache as soon as ``write`` returns); a crash of the machine or
a power cut loses at most that interval. ``"always"`` syncs after every batch (a batch is
what the writer thread drains at once: bounded loss of zero, the cost of one fsync per
batch); ``"never"`` leaves it to the kernel (about 30 s of dirty pages on Linux).

Thread safety: one writer thread calls :meth:`append`; one reader thread calls
:meth:`read`, :meth:`commit` and :meth:`rewind`; counters and sizes are read from anywhere.
A lock guards the segment table.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["FSYNC", "FULL", "LossLog", "SegmentLog", "SpoolError"]

FSYNC = ("interval", "always", "never")
FULL = ("drop_newest", "drop_oldest")
_HEAD = struct.Struct(">IIQ")
_MAX_RECORD = 1 << 20  # a frame longer than this is corruption, not an event


class SpoolError(Exception):
    """The spool cannot be used (one line for the operator)."""


@dataclass(slots=True)
class _Segment:
    base: int  # number of its first record
    path: str
    size: int = 0  # bytes written (and published to the reader)
    count: int = 0  # records


class LossLog:
    """Seq ranges of dropped events, per run (``boot_id``), merged while contiguous and
    bounded: past ``limit`` ranges the two newest merge (the count stays exact, the range
    becomes the envelope). Any thread may record; :meth:`take` empties it."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._ranges: list[list[Any]] = []  # [boot_id, first_seq, last_seq, count]
        self._lock = threading.Lock()
        self.total = 0

    def record(self, boot: str | None, seq: int | None) -> None:
        with self._lock:
            self.total += 1
            if not isinstance(seq, int):
                seq = -1
            r = self._ranges[-1] if self._ranges else None
            if r is not None and r[0] == boot and seq >= 0 and r[2] + 1 == seq:
                r[2] = seq
                r[3] += 1
                return
            self._ranges.append([boot, seq, seq, 1])
            if len(self._ranges) > self.limit:
                b = self._ranges.pop()
                a = self._ranges[-1]
                a[1], a[2], a[3] = min(a[1], b[1]), max(a[2], b[2]), a[3] + b[3]

    def take(self) -> list[tuple[str | None, int, int, int]]:
        """What was lost since the last call: (boot_id, first_seq, last_seq, count)."""
        with self._lock:
            out = [tuple(r) for r in self._ranges]
            self._ranges.clear()
        return out  # type: ignore[return-value]

    def __bool__(self) -> bool:
        return bool(self._ranges)


def parse_size(name: str, value: Any, low: int) -> int:
    """An integer number of bytes >= ``low``, or a string like ``"256MiB"``/``"64k"``."""
    units = {"": 1, "k": 1024, "kib": 1024, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30,
             "gib": 1 << 30}  # fmt: skip
    n: Any = value
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(digits) :]
        n = int(digits) * units[unit] if digits.isdigit() and unit in units else None
    if isinstance(n, bool) or not isinstance(n, int) or n < low:
        raise ValueError(f"{name} must be a size >= {low} bytes (e.g. 268435456 or '256MiB'), "
                         f"got {value!r}")  # fmt: skip
    return n


class SegmentLog:
    def __init__(
        self,
        directory: str,
        max_bytes: int = 256 << 20,
        segment_bytes: int = 8 << 20,
        fsync: str = "interval",
        fsync_interval_ms: int = 1000,
        full: str = "drop_newest",
    ) -> None:
        if not isinstance(directory, str):
            raise ValueError(f"spool directory must be a path, got {directory!r}")
        if fsync not in FSYNC:
            raise ValueError(f"spool fsync must be one of {', '.join(FSYNC)}, got {fsync!r}")
        if full not in FULL:
            raise ValueError(f"spool full must be one of {', '.join(FULL)}, got {full!r}")
        if segment_bytes > max_bytes // 2:
            raise ValueError(
                f"spool segment size ({segment_bytes}) must be at most half its bound "
                f"({max_bytes}): a full spool must be able to free a segment"
            )
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.fsync_interval = fsync_interval_ms / 1000
        self.full = full
        self.losses = LossLog()
        # counters (each written by one thread)
        self.appended = 0  # writer: records accepted
        self.dropped_full = 0  # writer: refused (drop_newest) or deleted (drop_oldest)
        self.committed_total = 0  # reader: records acknowledged since open
        self.syncs = 0
        self._segs: list[_Segment] = []
        self._lock = threading.Lock()
        self._fd = -1  # the active (last) segment, append-only
        self._lock_fd = -1
        self._next = 0  # number of the next record to append
        self._commit = 0  # first record not yet acknowledged
        self._commit_written = -1
        self._synced_at = 0.0
        self._dirty = False
        # reader cursor
        self._rseg: _Segment | None = None
        self._rfd = -1
        self._roff = 0
        self._rskip = 0
        self._rnum = 0
        self._commit_at = 0.0
        self.oldest_ts_ms: int | None = None  # ts of the first unacknowledged record, if read

    # ------------------------------------------------------------------ state
    @property
    def used_bytes(self) -> int:
        return sum(s.size for s in list(self._segs))

    @property
    def backlog(self) -> int:
        """Records accepted and not yet acknowledged."""
        return max(0, self._next - self._commit)

    @property
    def unread(self) -> int:
        """Records after the read cursor (reader thread)."""
        return max(0, self._next - self._rnum)

    @property
    def has_room(self) -> bool:
        """Room for a loss announcement and what follows it (a quarter of the bound, at
        most 64 KiB, is free)."""
        return self.used_bytes + min(64 * 1024, self.max_bytes // 4) <= self.max_bytes

    # ------------------------------------------------------------------ open / close
    def open(self) -> None:
        """Create the directory (0700) if needed, lock it, recover what it holds. Raises
        :class:`SpoolError` with one line if it cannot."""
        d = self.directory
        if not d:
            raise SpoolError("spool: no directory")
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise SpoolError(f"spool {d}: cannot use it: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolError(f"spool {d} is in use by another process") from None
        self._lock_fd = fd
        try:
            self._recover()
            self._roll()
        except OSError as e:
            self.close()
            raise SpoolError(f"spool {d}: {e.strerror or e}") from None

    def _recover(self) -> None:
        d = self.directory
        try:
            with open(os.path.join(d, "committed")) as f:
                self._commit = int(f.read().strip() or 0)
        except FileNotFoundError:
            self._commit = 0
        except ValueError:
            self._commit = 0  # unreadable: deliver everything again (at least once)
        names = sorted(n for n in os.listdir(d) if n.endswith(".seg") and n[:-4].isdigit())
        segs = []
        for name in names:
            seg = _Segment(int(name[:-4]), os.path.join(d, name))
            seg.size, seg.count = self._scan(seg.path)
            segs.append(seg)
        # a segment whose records are all below the commit is delivered: delete it
        kept = []
        for i, seg in enumerate(segs):
            end = segs[i + 1].base if i + 1 < len(segs) else seg.base + seg.count
            if end <= self._commit or seg.count == 0:
                os.unlink(seg.path)
            else:
                kept.append(seg)
        self._segs = kept
        last = kept[-1] if kept else None
        self._next = max(self._commit, last.base + last.count if last else 0)
        if kept and kept[0].base > self._commit:
            self._commit = kept[0].base
        self._rnum = self._commit

    @staticmethod
    def _scan(path: str) -> tuple[int, int]:
        """(valid bytes, records) of a segment; a torn or corrupt tail is cut off."""
        size = count = 0
        with open(path, "r+b") as f:
            data = f.read()
            while size + _HEAD.size <= len(data):
                n, crc, _ts = _HEAD.unpack_from(data, size)
                end = size + _HEAD.size + n
                if n > _MAX_RECORD or end > len(data):
                    break
                if zlib.crc32(data[size + _HEAD.size : end]) != crc:
                    break
                size, count = end, count + 1
            if size != len(data):
                f.truncate(size)
        return size, count

    def close(self) -> None:
        """Sync and close (writer side first, then the reader's descriptor)."""
        if self._fd >= 0:
            try:
                if self.fsync != "never" and self._dirty:
                    os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = -1
        if self._rfd >= 0:
            os.close(self._rfd)
            self._rfd = -1
        self.write_commit(force=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # ------------------------------------------------------------------ writer thread
    def _roll(self) -> None:
        """Start a new active segment (at open, and when the active one is full)."""
        if self._fd >= 0:
            if self.fsync != "never" and self._dirty:
                os.fsync(self._fd)
                self.syncs += 1
            os.close(self._fd)
            self._fd = -1
        path = os.path.join(self.directory, f"{self._next:020d}.seg")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        seg = _Segment(self._next, path, os.fstat(fd).st_size, 0)
        with self._lock:
            if self._segs and self._segs[-1].count == 0:  # an empty one (reopened)
                old = self._segs.pop()
                if old.path != path:
                    os.unlink(old.path)
            self._segs.append(seg)
        self._fd = fd

    def append(self, records: Iterable[tuple[bytes, int, str | None, int | None]]) -> int:
        """Append (payload, ts_ms, boot_id, seq) records in order; returns how many were
        accepted. What does not fit is dropped per ``full`` and recorded in
        :attr:`losses`. Raises OSError if the disk fails (the caller counts the batch)."""
        frames: list[bytes] = []
        accepted = 0
        seg = self._segs[-1]
        pending = 0  # bytes in frames not yet written
        for payload, ts, boot, seq in records:
            need = _HEAD.size + len(payload)
            if self.used_bytes + pending + need > self.max_bytes and not self._make_room(
                need + pending
            ):
                self.dropped_full += 1
                self.losses.record(boot, seq)
                continue
            if seg.size + pending >= self.segment_bytes and (seg.count or frames):
                self._write(seg, frames, pending)
                frames, pending = [], 0
                self._roll()
                seg = self._segs[-1]
            frames.append(_HEAD.pack(len(payload), zlib.crc32(payload), ts) + payload)
            pending += need
            accepted += 1
        if frames:
            self._write(seg, frames, pending)
        if accepted:
            self._maybe_sync()
        return accepted

    def _write(self, seg: _Segment, frames: list[bytes], size: int) -> None:
        data = b"".join(frames)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._dirty = True
        with self._lock:  # publish to the reader only once it is all written
            seg.size += size
            seg.count += len(frames)
            self._next += len(frames)
            self.appended += len(frames)

    def _maybe_sync(self) -> None:
        if self.fsync == "always" or (
            self.fsync == "interval" and time.monotonic() - self._synced_at >= self.fsync_interval
        ):
            os.fsync(self._fd)
            self.syncs += 1
            self._synced_at = time.monotonic()
            self._dirty = False

    def _make_room(self, need: int) -> bool:
        """drop_oldest: delete the oldest segments (never the active one) until ``need``
        bytes fit; their unacknowledged records are counted and their seqs recorded."""
        if self.full != "drop_oldest":
            return False
        while self.used_bytes + need > self.max_bytes and len(self._segs) > 1:
            with self._lock:
                seg = self._segs.pop(0)
                first_kept = self._segs[0].base
                undelivered_from = max(self._commit, seg.base)
                # the reader finds its segment gone and moves on to the next one
                self._commit = max(self._commit, first_kept)
            lost = first_kept - undelivered_from
            if lost > 0:
                self._record_lost(seg, undelivered_from - seg.base)
                self.dropped_full += lost
            try:
                os.unlink(seg.path)
            except OSError:
                pass
        return self.used_bytes + need <= self.max_bytes

    def _record_lost(self, seg: _Segment, skip: int) -> None:
        """The seqs of a segment's records from index ``skip`` on, into :attr:`losses`."""
        try:
            for i, (payload, _ts) in enumerate(_frames(seg.path, seg.size)):
                if i >= skip:
                    boot, seq = _identity(payload)
                    self.losses.record(boot, seq)
        except OSError:
            pass

    # ------------------------------------------------------------------ reader thread
    def _close_reader(self) -> None:
        if self._rfd >= 0:
            os.close(self._rfd)
        self._rfd, self._rseg, self._roff, self._rskip = -1, None, 0, 0

    def read(self, limit: int) -> list[tuple[int, bytes, int]]:
        """Up to ``limit`` records after the read cursor: (number, payload, ts_ms)."""
        out: list[tuple[int, bytes, int]] = []
        while len(out) < limit:
            with self._lock:
                if self._rnum >= self._next:
                    break
                seg = self._rseg
                moved = seg is None or seg not in self._segs
                if moved or self._rnum >= seg.base + seg.count:  # type: ignore[union-attr]
                    here = [s for s in self._segs if s.base + s.count > self._rnum and s.count]
                    if not here:
                        break
                    seg = here[0]
                    self._rnum = max(self._rnum, seg.base)  # past a segment dropped meanwhile
                    opened = True
                else:
                    opened = False
                end = seg.size  # type: ignore[union-attr]
            if opened:
                self._close_reader()
                self._rfd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)  # type: ignore[union-attr]
                self._rseg = seg
                self._rskip = self._rnum - seg.base  # type: ignore[union-attr]
            before = self._roff
            out.extend(self._read_frames(end, limit - len(out)))
            if self._roff == before:
                break
        return out

    def _read_frames(self, end: int, limit: int) -> list[tuple[int, bytes, int]]:
        out: list[tuple[int, bytes, int]] = []
        data = os.pread(self._rfd, min(end - self._roff, 4 << 20), self._roff)
        pos = 0
        while pos + _HEAD.size <= len(data) and len(out) < limit:
            n, _crc, ts = _HEAD.unpack_from(data, pos)
            stop = pos + _HEAD.size + n
            if stop > len(data):
                break
            if self._rskip:  # before the cursor (a segment opened in its middle)
                self._rskip -= 1
            else:
                out.append((self._rnum, data[pos + _HEAD.size : stop], ts))
                self._rnum += 1
            pos = stop
        self._roff += pos
        return out

    def rewind(self) -> None:
        """Read again from the first unacknowledged record (after a failed delivery)."""
        with self._lock:
            self._rnum = self._commit
        self._close_reader()

    def commit(self, upto: int, oldest_ts_ms: int | None = None) -> None:
        """Every record below ``upto`` is acknowledged: delete the segments it covers."""
        gone = []
        with self._lock:
            if upto <= self._commit:
                if oldest_ts_ms is not None or not self.backlog:
                    self.oldest_ts_ms = oldest_ts_ms
                return
            self.committed_total += upto - self._commit
            self._commit = upto
            while len(self._segs) > 1 and self._segs[1].base <= upto:
                gone.append(self._segs.pop(0))
            if oldest_ts_ms is not None or self._next <= upto:
                self.oldest_ts_ms = oldest_ts_ms
        for seg in gone:
            if self._rseg is seg:
                self._close_reader()
            try:
                os.unlink(seg.path)
            except OSError:
                pass
        self.write_commit(force=bool(gone))

    @property
    def commit_position(self) -> int:
        return self._commit

    @property
    def read_position(self) -> int:
        return self._rnum

    def write_commit(self, force: bool = False) -> None:
        """Persist the commit position (atomically; at most every 0.2 s unless forced)."""
        if self._commit == self._commit_written or self._lock_fd < 0:
            return
        now = time.monotonic()
        if not force and now - self._commit_at < 0.2:
            return
        self._commit_at = now
        tmp = os.path.join(self.directory, "committed.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, f"{self._commit}\n".encode())
            finally:
                os.close(fd)
            os.replace(tmp, os.path.join(self.directory, "committed"))
            self._commit_written = self._commit
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise


def _frames(path: str, size: int) -> Iterable[tuple[bytes, int]]:
    with open(path, "rb") as f:
        data = f.read(size)
    pos = 0
    while pos + _HEAD.size <= len(data):
        n, _crc, ts = _HEAD.unpack_from(data, pos)
        stop = pos + _HEAD.size + n
        if stop > len(data):
            return
        yield data[pos + _HEAD.size : stop], ts
        pos = stop


def _identity(payload: bytes) -> tuple[str | None, int | None]:
    try:
        e = json.loads(payload)
        return e.get("boot_id"), e.get("seq")
    except (ValueError, AttributeError):
        return None, None
