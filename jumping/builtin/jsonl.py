"""
``jsonl`` event sink: one JSON object per line, written by a thread behind a bounded queue
(:class:`jumping.sinkwriter.BoundedWriter`).

``emit`` never blocks and never raises: a full queue or a failing disk drops the event and
counts it (docs/protocol.md, invariant 9). Files rotate by size (``events.jsonl`` →
``events.jsonl.1``…).

Lifecycle (``jumping.interfaces``): the constructor only validates; :meth:`start` (after
twistd's fork and the privilege drop) creates or opens the file, so a file the node's user
cannot write is a start-up error, not silent loss, and starts the writer thread. The file
is opened with ``O_NOFOLLOW`` (a symlink planted at the path is refused, never followed)
and created with ``mode`` (default 0640; never world-writable); an existing path that is
not a regular file is refused.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from jumping.interfaces import IEncodedEventSink, IEventSink, ISinkHealth
from jumping.sinkwriter import BoundedWriter


@implementer(IEventSink, IEncodedEventSink, ISinkHealth)
class JSONLinesSink:
    name = "jsonl"

    def __init__(
        self,
        path: str,
        max_queue: int = 10_000,
        rotate_bytes: int = 64 * 1024 * 1024,
        keep: int = 5,
        mode: int = 0o640,
    ) -> None:
        if not isinstance(path, str) or not path:
            raise ValueError("jsonl: path must be a non-empty string")
        for k, v, lo in (
            ("max_queue", max_queue, 1),
            ("rotate_bytes", rotate_bytes, 4096),
            ("keep", keep, 0),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"jsonl: {k} must be an integer >= {lo}, got {v!r}")
        if isinstance(mode, bool) or not isinstance(mode, int) or mode & ~0o666 or mode & 0o002:
            raise ValueError(
                f"jsonl: mode must be file permissions without o+w, e.g. 0o640, got {mode!r}"
            )
        self.path = path
        self.mode = mode
        self.max_queue = max_queue
        self.rotate_bytes = rotate_bytes
        self.keep = keep
        self.write_dropped = 0  # dropped on the writer thread (write failed, not JSON)
        self.delivered = 0
        self._written = 0
        self._writer = BoundedWriter(f"jsonl:{path}", max_queue, self._write_batch)

    def start(self) -> None:
        """Create or open the file (a clear error if the node's user cannot), start the
        writer thread."""
        if self._writer.started or self._writer.closing:
            return
        try:
            os.close(self._open())
        except OSError as e:
            raise OSError(f"jsonl: cannot write events to {self.path}: {e.strerror or e}") from None
        self._writer.start()

    def _open(self) -> int:
        """An append descriptor on the file: never through a symlink, only a regular file,
        created with ``mode``."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_NONBLOCK, self.mode)
        except OSError as e:
            if e.errno == errno.ELOOP:  # the last component is a symlink
                raise OSError(e.errno, "is a symlink (refused, not followed)") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(fd, True)
        return fd

    @property
    def queue_depth(self) -> int:
        return self._writer.queued

    @property
    def overflow(self) -> int:
        """Dropped on the reactor thread: the queue was full, or the sink closed."""
        return self._writer.overflow

    @property
    def write_errors(self) -> int:
        return self._writer.errors

    @property
    def dropped(self) -> int:
        # counters each written by one thread only: no update is ever lost
        return self._writer.overflow + self._writer.failed + self.write_dropped

    def emit(self, event: dict[str, Any]) -> None:
        self._writer.put(event)

    def emit_encoded(self, event: dict[str, Any], encoded: bytes) -> None:
        """The line is the chain's canonical encoding, the one :meth:`emit`'s would be: it is
        queued as it is, not encoded again on the writer thread."""
        self._writer.put(encoded)

    def _rotate(self) -> None:
        for i in range(self.keep - 1, 0, -1):
            src = f"{self.path}.{i}"
            if os.path.lexists(src):
                os.replace(src, f"{self.path}.{i + 1}")
        if self.keep:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)

    def _write_batch(self, batch: list[dict[str, Any] | bytes]) -> int:
        """Writer thread: append the batch; what a failure left unwritten is counted."""
        before = self.delivered
        try:
            self._write(batch)
        except Exception as e:  # a full or read-only disk, anything: never kill the thread
            self._writer.note_error(e)
            self.write_dropped += len(batch) - self._written
        self._written = 0
        return self.delivered - before

    def health(self) -> dict[str, Any]:
        """For ``jumpctl status`` (docs/operations.md, "Event sinks")."""
        return self._writer.health()

    def _write(self, batch: list[dict[str, Any] | bytes]) -> None:
        """Append, rotating whenever the file would exceed ``rotate_bytes``."""
        self._written = 0
        lines: list[bytes] = []
        for e in batch:
            if isinstance(e, bytes):  # emit_encoded: the canonical encoding already
                lines.append(e + b"\n")
                continue
            try:
                lines.append(json.dumps(e, sort_keys=True, separators=(",", ":")).encode() + b"\n")
            except (TypeError, ValueError):
                self.write_dropped += 1  # not JSON-serialisable: this event only
                self._written += 1
        i = 0
        while i < len(lines):
            fd = self._open()
            try:
                size = os.fstat(fd).st_size
                if size >= self.rotate_bytes:
                    os.close(fd)
                    fd = -1
                    self._rotate()
                    fd = self._open()
                    size = 0
                chunk: list[bytes] = []
                while i < len(lines) and (size < self.rotate_bytes or not chunk):
                    chunk.append(lines[i])
                    size += len(lines[i])
                    i += 1
                    if size >= self.rotate_bytes:
                        break
                data = b"".join(chunk)
                while data:
                    data = data[os.write(fd, data) :]
            finally:
                if fd >= 0:
                    os.close(fd)
            self.delivered += len(chunk)
            self._written += len(chunk)

    def close(self) -> defer.Deferred[None]:
        """Write what is queued (for at most 2 s, on the writer thread), then stop."""
        return self._writer.close(2.0)
