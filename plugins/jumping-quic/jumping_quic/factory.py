"""
The ``quic`` transport plugin (an ``ITransportFactory``): gateway listeners and client
paths over QUIC (aioquic), each Jumping datagram in one DATAGRAM frame.

Options are in :mod:`jumping_quic.options`; the MTU a path carries is ``max_datagram``
(``IPathMTU``): ``max_datagram_size`` (the UDP payload of a QUIC packet, 1472 by default:
a 1500-byte IPv4 link) minus 30 bytes of QUIC (short header with an 8-byte connection ID,
2-byte packet number, AEAD tag, DATAGRAM frame type and length): 1442 bytes, i.e. inner
packets of 1410 bytes with Jumping's 32.
"""

from __future__ import annotations

import ssl
from collections import Counter
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from twisted.internet import defer
from zope.interface import implementer

from jumping import tls
from jumping.interfaces import IPathMTU, ITransportFactory
from jumping_quic.client import QuicClientPath
from jumping_quic.framing import DatagramFraming
from jumping_quic.glue import datagram_capacity
from jumping_quic.options import QuicOptions
from jumping_quic.pump import CID_LENGTH
from jumping_quic.server import QuicListener

#: flow-control credit for streams, which this ALPN does not use (a peer opening one is
#: closed): bounds what a peer can make us buffer before that
STREAM_CREDIT = 4096


@implementer(ITransportFactory, IPathMTU)
class QuicTransportFactory:
    """``quic`` plugin; see :mod:`jumping_quic.options` for the options."""

    kind = "quic"

    def __init__(self, **options: Any) -> None:
        self.opts = QuicOptions.parse(**options)
        self.framing = DatagramFraming()
        self.max_datagram = (
            datagram_capacity(self.opts.max_datagram_size, CID_LENGTH, None) - self.framing.prefix
        )
        #: why client paths failed to open, by cause (pin_mismatch, tls_error, ...)
        self.failures: Counter[str] = Counter()
        self._certs: list[Any] = []
        self._key: Any = None
        if self.opts.certificate_file is not None:
            self._certs = tls.load_certificates(self.opts.certificate_file)
            self._key = tls.load_private_key(self.opts.private_key_file or "")
        if self.opts.ca_file is not None:
            tls.load_certificates(self.opts.ca_file)  # readable, PEM: a clear error now

    def _config(self, is_client: bool) -> QuicConfiguration:
        o = self.opts
        config = QuicConfiguration(
            is_client=is_client,
            max_datagram_size=o.max_datagram_size,
            idle_timeout=float(o.idle_timeout_s),
            congestion_control_algorithm=o.congestion_control,
            connection_id_length=CID_LENGTH,
            max_data=STREAM_CREDIT,
            max_stream_data=STREAM_CREDIT,
        )
        self.framing.configure(config)
        if not is_client:
            config.certificate = self._certs[0]
            config.certificate_chain = self._certs[1:]
            config.private_key = self._key
        return config

    def listen(self, reactor: Any, host: str, port: int, receiver: Any) -> QuicListener:
        if not self._certs:
            raise ValueError(
                "quic: a listener needs certificate_file and private_key_file (make them "
                "with: jumpctl tls-cert --out gateway-tls --name NAME)"
            )
        return QuicListener(reactor, host, port, receiver, self.opts, self._config(False),
                            self.framing)  # fmt: skip

    def connect(
        self, reactor: Any, remote: tuple[str, int], receiver: Any, local: Any = None
    ) -> defer.Deferred[QuicClientPath]:
        config = self._config(True)
        o = self.opts
        if o.pin_sha256:
            # the pin replaces the CA check; aioquic still verifies that the server signs
            # the handshake with the key of the certificate it shows
            config.verify_mode = ssl.CERT_NONE
            config.server_name = o.server_name
        else:
            config.verify_mode = ssl.CERT_REQUIRED
            config.cafile = o.ca_file
            config.server_name = o.server_name or remote[0]
        try:
            path = QuicClientPath(
                reactor, remote, receiver, local, o, config, self.framing, self.failures
            )
        except Exception as e:
            return defer.fail(e)
        return path.ready
