"""
The hot path of a Jumping node: what the transports and the TUN device hand over, fed to
the sans-IO core, and the output executor that carries out what the core returns.

:class:`DataPlane` is the receiver the transports get (:class:`IBatchDatagramReceiver`)
and the TUN device's reader; :class:`~jumping.service.node.NodeService` builds it, gives
it the core once every plugin started, and keeps the lifecycle (opening, serving,
reloading, stopping).

The data plane moves runs: what one socket read delivered goes to ``core.receive_batch``
(the core reads the wire types) and its inner packets to the TUN device in one
``write_many``; what one TUN wake-up read goes to ``core.seal_batch`` and each path's
datagrams to the transport in one ``send_batch``. Any other output of those calls, and
everything from ``core.receive``/``core.tick``, goes through :meth:`DataPlane.run` (the
output executor), which also keeps the one reactor timer at the core's next deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from jumping.core import wire
from jumping.core.gateway import GatewayCore
from jumping.core.node import NodeCore
from jumping.core.outputs import (
    Adopt,
    ArmTimer,
    Claim,
    ConfirmPath,
    Drop,
    Emit,
    Output,
    Release,
    Renew,
    Send,
    WriteTun,
)
from jumping.core.segments import tcp4_header_length
from jumping.interfaces import IBatchDatagramReceiver, IBatchTransport
from jumping.service.gate import InitiationGate
from jumping.service.granularity import TimerLateness
from jumping.service.gro import _GSO_NONE, _GSO_TCPV4, _NEEDS_CSUM, VNET_HDR_LEN
from jumping.service.gro import _VNET_UNPACK as _VNET
from jumping.service.handshakes import HandshakeQueue

if TYPE_CHECKING:
    from jumping.service.events import EventPipeline
    from jumping.service.ownership import OwnershipDriver
    from jumping.service.tun import TunDevice

#: first bytes of DATA and DATA_SEGMENT: what goes through the core's batch path
_TUNNEL_TYPES = (bytes((wire.MessageType.DATA,)), bytes((wire.MessageType.DATA_SEGMENT,)))
#: first bytes of the handshake messages: what a gateway puts in its handshake queue
_HANDSHAKE_TYPES = frozenset(
    bytes((t,))
    for t in (
        wire.MessageType.HANDSHAKE_INIT,
        wire.MessageType.HANDSHAKE_RESP,
        wire.MessageType.COOKIE_REPLY,
    )
)
#: lengths of the handshake messages: a coalesced run of datagrams (UDP GRO: one size, the
#: last one may be shorter) can hold one only where its first or last datagram has one
_HANDSHAKE_LENGTHS = frozenset((wire.INIT_LEN, wire.RESP_LEN, wire.COOKIE_LEN))


@implementer(IBatchDatagramReceiver)
class DataPlane:
    """Datagrams in, TUN packets in, the core's outputs out; one timer at its deadline.

    ``path_lost`` is called after the core was told a transport died (the service's part:
    a client's path list and its reconnection)."""

    def __init__(self, reactor: Any, path_lost: Callable[[Any], None]) -> None:
        self.reactor = reactor
        self._now: Callable[[], float] = reactor.seconds
        self._path_lost = path_lost
        #: the core, once the node serves (after every plugin started); None before
        self.core: NodeCore | None = None
        self.tun: TunDevice | None = None
        self.events: EventPipeline | None = None
        self.metrics: Any = None
        #: runs the claims, renewals, takeovers and releases (set by the service)
        self.owners: OwnershipDriver | None = None
        #: the tunnel MTU (the largest inner packet queued whole from the TUN device)
        self.mtu = 0
        #: TUN packets read in the current wake-up, sealed together at its end
        self._tx: list[Any] = []
        #: the TUN device's reader: one packet of the current wake-up, sealed at its end
        self.tun_packet = self._tx.append
        self._answered = 0
        self._timer: Any = None
        self._timer_at = float("inf")
        self.timer_lateness = TimerLateness()
        #: a gateway's handshake messages wait here and are served in time-bounded turns,
        #: so that data never waits behind a flood of them (jumping/service/handshakes.py)
        self.handshakes = HandshakeQueue(reactor, self._handshake)
        #: refuses, in a UDP listener's read loop, the initiations without a cookie that
        #: the core would refuse while it requires cookies (jumping/service/gate.py)
        self.initiation_gate = InitiationGate(self)
        #: True on a gateway: handshakes go through the queue
        self.queue_handshakes = False

    def start(self, core: NodeCore, tun: TunDevice) -> None:
        """Serve: datagrams reach ``core`` from now on, inner packets go to ``tun``."""
        self.core = core
        self.tun = tun
        self._write_many = tun.write_many

    def close(self) -> None:
        """Stop the timer, forget queued handshakes and unsealed TUN packets."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_at = float("inf")
        self.handshakes.clear()
        self._tx.clear()

    # ------------------------------------------------------------------ from the transports
    def datagramReceived(self, transport: Any, data: bytes) -> None:  # noqa: N802
        core = self.core
        if core is None:
            return
        kind = data[:1]
        if kind in _TUNNEL_TYPES:
            # straight to the core's batch path (an idle tunnel's every packet comes here):
            # data never answers a handshake, so there is no handshake cost to measure
            packets, outputs = core.receive_batch(self._now(), transport, (data,))
            if packets:
                self._write_many(packets)
            if outputs:
                self.run(outputs)
            return
        if kind in _HANDSHAKE_TYPES and self.queue_handshakes:
            # a flood of initiations (from spoofed sources, one datagram at a time) costs
            # the read pass one append each; the work waits for the queue's turn
            self.handshakes.put(transport, data)
            return
        self._handshake(transport, data)

    def _handshake(self, transport: Any, data: bytes) -> None:
        """One handshake or control message: the core's plain path."""
        core = self.core
        if core is None:
            return
        t0 = perf_counter()
        outputs = core.receive(self._now(), transport, data)
        if outputs:
            self._measure(core, t0)
            self.run(outputs)

    def datagramsReceived(self, transport: Any, datagrams: Any) -> None:  # noqa: N802
        """A run of datagrams from one path read at once: the inner packets are written to
        the TUN device together (coalesced where they are one TCP flow). On a gateway, the
        handshake messages of the run go to the handshake queue."""
        core = self.core
        if core is None:
            return
        if (
            self.queue_handshakes
            and datagrams
            and (
                len(datagrams[0]) in _HANDSHAKE_LENGTHS or len(datagrams[-1]) in _HANDSHAKE_LENGTHS
            )
        ):
            put = self.handshakes.put
            rest: list[bytes] = []
            for d in datagrams:
                if d[:1] in _HANDSHAKE_TYPES:
                    put(transport, d)
                else:
                    rest.append(d)
            if not rest:
                return
            datagrams = rest
        t0 = perf_counter()
        packets, outputs = core.receive_batch(self._now(), transport, datagrams)
        if packets:
            self._write_many(packets)
        if outputs:
            self._measure(core, t0)
            self.run(outputs)

    def _measure(self, core: NodeCore, t0: float) -> None:
        """What answering an initiation costs on this host, measured, so the core's load
        trigger (cookies) counts real work, not a guess."""
        if isinstance(core, GatewayCore) and core.counters["handshakes_answered"] != self._answered:
            self._answered = core.counters["handshakes_answered"]
            meter = core.handshake_work
            meter.cost += (perf_counter() - t0 - meter.cost) * 0.1  # EWMA over ~10

    def transportLost(self, transport: Any, reason: str) -> None:  # noqa: N802
        core = self.core
        if core is not None:
            self.run(core.path_lost(self.reactor.seconds(), transport))
        self._path_lost(transport)

    # ------------------------------------------------------------------ from the TUN device
    def tun_offloaded(self, frame: bytes) -> bool:
        """A TUN frame with a TCP super-packet or a pending checksum: queue it whole for
        ``seal_batch`` when the peer finishes such packets (DATA_SEGMENT), else False (the
        device cuts it into complete packets)."""
        flags, gso_type, _hl, gso_size, _cs, _co = _VNET(frame)
        if gso_type not in (_GSO_NONE, _GSO_TCPV4) or not flags & _NEEDS_CSUM:
            return False
        packet = frame[VNET_HDR_LEN:]
        hl = tcp4_header_length(packet)
        payload = len(packet) - hl
        if not hl or payload <= 0:
            return False  # not TCP/IPv4, or a bare ACK: cheap to finish here
        if gso_type == _GSO_NONE or gso_size > payload:
            gso_size = payload
        if gso_size <= 0 or hl + gso_size > self.mtu:
            return False
        core = self.core
        if core is None or not core.accepts_segments(packet):
            return False
        self._tx.append((packet, hl, gso_size))
        return True

    def flush(self) -> None:
        """End of a TUN wake-up: seal what it read and send each path's run in one call."""
        tx = self._tx
        core = self.core
        if not tx or core is None:
            return
        sends, outputs = core.seal_batch(self._now(), tx)
        tx.clear()
        for path, datagrams in sends:
            if len(datagrams) > 1 and IBatchTransport.providedBy(path):
                path.send_batch(datagrams)
            else:
                for d in datagrams:
                    path.send(d)
        if outputs:
            self.run(outputs)

    # ------------------------------------------------------------------ outputs
    def run(self, outputs: Iterable[Output]) -> None:
        """The output executor: carry out what a core call returned, in order."""
        for out in outputs:
            t = type(out)
            if t is Drop:  # counted by the core already; the commonest output of a flood
                continue
            if t is Send:
                out.path.send(out.data)  # type: ignore[union-attr, arg-type]
            elif t is WriteTun:
                if self.tun is not None:
                    self.tun.write_many([out.data])  # type: ignore[union-attr]
            elif t is Emit:
                if self.events is not None:
                    self.events.emit(out)  # type: ignore[arg-type]
                if self.metrics is not None and out.event_type == "TRANSPORT_SWITCH":  # type: ignore[union-attr]
                    fields = out.fields  # type: ignore[union-attr]
                    self.metrics.switch_latency.observe(
                        (fields.get("switch_latency_ms") or 0) / 1e3
                    )
                    if fields.get("outage_ms") is not None:
                        self.metrics.switch_outage.observe(fields["outage_ms"] / 1000.0)
            elif t is ArmTimer:
                self._arm(out.at)  # type: ignore[union-attr]
            elif t is Claim or t is Renew or t is Adopt or t is Release:
                self.owners.execute(out)  # type: ignore[union-attr]
            elif t is ConfirmPath:
                out.path.confirm()  # type: ignore[union-attr]

    # ------------------------------------------------------------------ the timer
    def _arm(self, at: float) -> None:
        """The one timer at ``at`` if that is sooner than where it stands. An armed timer is
        moved (``reset``: a field and a short heap walk), not cancelled and made again: an
        idle client arms it on the first packet after idle, on the round trip's path."""
        timer = self._timer
        if timer is not None and timer.active():
            if at >= self._timer_at:
                return
            self._timer_at = at
            timer.reset(max(0.0, at - self.reactor.seconds()))
            return
        self._timer_at = at
        self._timer = self.reactor.callLater(max(0.0, at - self.reactor.seconds()), self._fire)

    def _fire(self) -> None:
        now = self.reactor.seconds()
        late = now - self._timer_at
        self._timer = None
        self._timer_at = float("inf")
        if self.core is not None:
            # the probe timeout's floor follows how late this host's timers really fire
            self.core.timer_granularity = self.timer_lateness.observe(late)
            self.run(self.core.tick(now))
