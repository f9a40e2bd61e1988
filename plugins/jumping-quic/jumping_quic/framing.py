"""
How a Jumping datagram rides in a QUIC connection: the one seam to swap for another look.

:class:`DatagramFraming` puts each Jumping datagram in one QUIC DATAGRAM frame (RFC 9221)
under an ALPN of its own. A framing that looks like HTTP/3 to an active prober (ALPN
``h3``, SETTINGS and an extended CONNECT on a request stream, HTTP Datagrams with their
quarter-stream-id prefix, RFC 9297) would be another class with the same four members:
it configures the connection, says how many bytes it adds, sends, and recognises what it
receives. Nothing else in the plugin knows how datagrams are framed.
"""

from __future__ import annotations

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

#: what we advertise: any DATAGRAM frame a UDP datagram can hold (RFC 9221 section 3)
MAX_DATAGRAM_FRAME_SIZE = 65536


class DatagramFraming:
    """One Jumping datagram = the payload of one DATAGRAM frame; streams are not used."""

    alpn = "jumping-datagram/1"
    #: bytes the framing adds inside the DATAGRAM frame's payload
    prefix = 0

    def configure(self, config: QuicConfiguration) -> None:
        config.alpn_protocols = [self.alpn]
        config.max_datagram_frame_size = MAX_DATAGRAM_FRAME_SIZE

    def send(self, conn: QuicConnection, data: bytes) -> None:
        conn.send_datagram_frame(data)

    def received(self, event: events.QuicEvent) -> bytes | None:
        """The Jumping datagram an event carries, else None."""
        if type(event) is events.DatagramFrameReceived:
            return event.data
        return None
