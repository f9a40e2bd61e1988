"""
``syslog`` event sink: RFC 5424 messages (or ArcSight CEF inside them) over UDP or a Unix
datagram socket, for classic SIEMs.

Like every sink, ``emit`` never blocks: events go to a bounded queue and a thread sends
them (:class:`jumping.sinkwriter.BoundedWriter`); overflow and send failures are dropped and counted. The socket and the thread are
created by :meth:`start` (after twistd's fork and privilege drop), not by the constructor.

Options: ``address`` ("127.0.0.1:514" or "/dev/log"), ``format`` ("rfc5424" | "cef"),
``facility`` (0-23, default 13 = log audit), ``app_name``, ``max_queue``.
"""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from jumping.interfaces import IEventSink, ISinkHealth
from jumping.sinkwriter import BoundedWriter

# severity by event type: terminations and security events stand out
_SEVERITY = {"SECURITY_EVENT": 4, "SESSION_TERMINATED": 5, "TRANSPORT_SWITCH_DENIED": 5}
_CEF_ESCAPE = str.maketrans({"\\": "\\\\", "=": "\\=", "\n": " ", "\r": " "})


def rfc5424(event: dict[str, Any], facility: int, app: str, host: str) -> bytes:
    sev = _SEVERITY.get(event.get("event_type", ""), 6)
    ts = (
        datetime.fromtimestamp(event.get("ts_ms", 0) / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
    msgid = str(event.get("event_type", "-"))[:32]
    body = json.dumps(event, sort_keys=True, separators=(",", ":"))
    return f"<{facility * 8 + sev}>1 {ts} {host} {app} - {msgid} - {body}".encode()


def cef(event: dict[str, Any], facility: int, app: str, host: str) -> bytes:
    sev = {4: 7, 5: 5}.get(_SEVERITY.get(event.get("event_type", ""), 6), 3)
    ext = " ".join(
        f"cs{i}Label={k} cs{i}={str(event[k]).translate(_CEF_ESCAPE)}"
        for i, k in enumerate(("session_id", "reason_code", "node_id", "state_version"), 1)
        if event.get(k) is not None
    )
    head = f"CEF:0|Jumping|jumping|1|{event.get('event_type')}|{event.get('event_type')}|{sev}|"
    line = head + f"rt={event.get('ts_ms')} {ext}"
    return (
        rfc5424({**event, "_cef": line}, facility, app, host).split(b" - {", 1)[0]
        + b" - "
        + line.encode()
    )


@implementer(IEventSink, ISinkHealth)
class SyslogSink:
    name = "syslog"

    def __init__(
        self,
        address: str = "127.0.0.1:514",
        format: str = "rfc5424",  # noqa: A002 - the config key operators write
        facility: int = 13,
        app_name: str = "jumping",
        max_queue: int = 10_000,
    ) -> None:
        if format not in ("rfc5424", "cef"):
            raise ValueError(f"syslog: format must be rfc5424 or cef, got {format!r}")
        if isinstance(facility, bool) or not isinstance(facility, int) or not 0 <= facility <= 23:
            raise ValueError(f"syslog: facility must be an integer in 0..23, got {facility!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"syslog: max_queue must be a positive integer, got {max_queue!r}")
        self._addr: Any
        if address.startswith("/"):
            self._family, self._addr = socket.AF_UNIX, address
        else:
            host, _, port = address.rpartition(":")
            try:
                self._addr = (host.strip("[]"), int(port))
            except ValueError:
                raise ValueError(
                    f"syslog: address must be HOST:PORT or a socket path, got {address!r}"
                ) from None
            self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._fmt = cef if format == "cef" else rfc5424
        self.facility = facility
        self.app = app_name
        self.host = socket.gethostname()
        self.max_queue = max_queue
        self.send_dropped = 0  # dropped on the sender thread (send failed, bad event)
        self.delivered = 0
        self._sock: socket.socket | None = None
        self._writer = BoundedWriter("syslog-sink", max_queue, self._send, finish=self._finish)

    def start(self) -> None:
        """Open the datagram socket and start the sender thread."""
        if self._writer.started or self._writer.closing:
            return
        self._sock = socket.socket(self._family, socket.SOCK_DGRAM)
        self._writer.start()

    @property
    def queue_depth(self) -> int:
        return self._writer.queued

    @property
    def overflow(self) -> int:
        """Dropped on the reactor thread: the queue was full, or the sink closed."""
        return self._writer.overflow

    @property
    def dropped(self) -> int:
        # counters each written by one thread only: no update is ever lost
        return self._writer.overflow + self._writer.failed + self.send_dropped

    def emit(self, event: dict[str, Any]) -> None:
        self._writer.put(event)

    def health(self) -> dict[str, Any]:
        """For ``jumpctl status`` (docs/operations.md, "Event sinks")."""
        return self._writer.health()

    def _send(self, batch: list[dict[str, Any]]) -> int:
        """Sender thread: one datagram per event; a failure drops that event alone."""
        before = self.delivered
        for event in batch:
            try:
                self._sock.sendto(  # type: ignore[union-attr]  # set before the thread
                    self._fmt(event, self.facility, self.app, self.host), self._addr
                )
                self.delivered += 1
            except Exception as e:  # never kill the thread
                self.send_dropped += 1
                self._writer.note_error(e)
        return self.delivered - before

    def _finish(self, leftover: list[dict[str, Any]]) -> None:
        self.send_dropped += len(leftover)
        if self._sock is not None:
            self._sock.close()

    def close(self) -> defer.Deferred[None]:
        """Send what is queued (for at most 2 s, on the sender thread), then stop."""
        d = self._writer.close(2.0)
        if not self._writer.started and self._sock is not None:
            self._sock.close()
        return d
