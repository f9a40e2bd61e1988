"""
The reactor glue of a Jumping node: TUN, transports, timers, ownership and events around
one sans-IO :class:`~jumping.core.node.NodeCore`.

Everything that can fail on bad configuration or a busy host (key file, plugins, TUN
device, sockets) happens in :meth:`NodeService.prepare`, before the reactor runs: a failure
there closes what was opened and raises :class:`StartupError` with one clear line, so
nothing is ever half-started. :meth:`startService` only starts reading and timers.

The data plane moves runs: what one socket read delivered goes to ``core.receive_batch``
(the core reads the wire types) and its inner packets to the TUN device in one
``write_many``; what one TUN wake-up read goes to ``core.seal_batch`` and each path's
datagrams to the transport in one ``send_batch``. Any other output of those calls, and
everything from ``core.receive``/``core.tick``, goes through :meth:`_run` (the output
executor).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from jumping import plugin
from jumping.core.client import ClientCore
from jumping.core.gateway import GatewayCore
from jumping.core.node import NodeCore, Peer
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
from jumping.core.segments import FEATURE_SEGMENTS, tcp4_header_length
from jumping.interfaces import (
    IBatchDatagramReceiver,
    IBatchTransport,
    IEventSink,
    IOwnershipBackend,
    IRateLimitPolicy,
    ITransportFactory,
)
from jumping.keys import event_keys, load_private_key, load_psk
from jumping.service import mtu
from jumping.service.events import EventPipeline
from jumping.service.granularity import TimerLateness
from jumping.service.gro import _GSO_NONE, _GSO_TCPV4, _NEEDS_CSUM, VNET_HDR_LEN
from jumping.service.gro import _VNET_UNPACK as _VNET
from jumping.service.ownership import OwnershipDriver
from jumping.service.tun import TunDevice

log = Logger()

RECONNECT_DELAY = 1.0


class StartupError(Exception):
    """The node cannot start; the message is one line for the operator."""


@implementer(IBatchDatagramReceiver)
class NodeService(service.Service):
    name = "jumping-node"

    def __init__(self, config: Any, reactor: Any = None, rng: Callable[[int], bytes] = os.urandom):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.rng = rng
        self.core: NodeCore | None = None
        self.tun: TunDevice | None = None
        self.listeners: list[Any] = []
        self.paths: list[Any] = []
        self.sinks: list[Any] = []
        self.ownership: Any = None
        self.events: EventPipeline | None = None
        self._timer: Any = None
        self._timer_at = float("inf")
        self.timer_lateness = TimerLateness()
        self.tun_drops = 0
        self.tun_write_errors = 0
        self.metrics: Any = None
        self.metrics_port: Any = None
        self._endpoint_of: dict[Any, tuple[Any, Any]] = {}
        self.policy_rejections = 0
        #: runs the core's claims, renewals, takeovers and releases; watches fence us out
        self.owners = OwnershipDriver(None, lambda: self.core, self._run, self.reactor.seconds)
        #: the tunnel MTU (set in prepare from [tun] and the transports; 0: not prepared)
        self.mtu = config.tun.mtu if config is not None else 0
        #: client paths refused as candidates: they carry less than the tunnel MTU needs
        self.paths_refused_mtu = 0
        #: TUN packets read in the current wake-up, sealed together at its end
        self._tx: list[Any] = []
        self._answered = 0

    # ------------------------------------------------------------------ startup
    def prepare(self) -> None:
        """Do every fallible step; on failure undo them all and raise StartupError."""
        try:
            self._prepare()
        except StartupError:
            self._close_all()
            raise
        except (OSError, ValueError, plugin.PluginError, Exception) as e:
            self._close_all()
            raise StartupError(str(e) or type(e).__name__) from e

    def _prepare(self) -> None:
        cfg = self.config
        key = load_private_key(cfg.private_key)
        now = self.reactor.seconds()
        common = dict(
            node_id=cfg.node_id, private_key=key, policy=cfg.policy, rng=self.rng, now=now
        )
        self.sinks = [
            plugin.load(IEventSink, sink.name, **dict(sink.options)) for sink in cfg.events
        ]
        # the chain key and the address key, both derived from the node secret (the chain
        # key alone goes to the auditor: `jumpctl chain-key`); without one, a zero chain key
        chain_key, address_key = event_keys(cfg.secret)
        self.events = EventPipeline(
            cfg.node_id, self.sinks, chain_key, lambda: str(self.core.policy.version if self.core else cfg.policy.version),
            self.reactor.seconds, cfg.address_privacy, address_key,
        )  # fmt: skip
        rl = cfg.rate_limit
        rl_options = dict(rl.options)
        if rl.name == "token-bucket":
            # the built-in takes its caps from the policy unless the table sets them
            rl_options.setdefault("max_per_min", cfg.policy.max_switches_per_min)
            rl_options.setdefault("cooldown_ms", cfg.policy.switch_cooldown_ms)
        common["switch_limiter"] = plugin.load(IRateLimitPolicy, rl.name, **rl_options)
        if cfg.role == "gateway":
            peers = [
                Peer(p.public_key, p.allowed_ips, p.name, load_psk(p.psk) if p.psk else None)
                for p in cfg.peers
            ]
            self.core = GatewayCore(peers=peers, **common)  # type: ignore[arg-type]
            own = cfg.ownership
            self.ownership = plugin.load(
                IOwnershipBackend, own.name, node_id=cfg.node_id, **dict(own.options)
            )
            self.owners.backend = self.ownership
            # a backend shared by several nodes (etcd, a shared memory store): a client may
            # resume here a session another gateway owned (takeover)
            self.core.adopt_sessions = bool(getattr(self.ownership, "shared", True))
        else:
            gpsk = load_psk(cfg.gateway.psk) if cfg.gateway.psk else None
            self.core = ClientCore(
                gateway_public_key=cfg.gateway.public_key, gateway_psk=gpsk, **common
            )  # type: ignore[arg-type]
        tun = cfg.tun
        # transport plugins are built (no socket yet) before the TUN device, whose MTU must
        # fit the smallest of them (jumping/service/mtu.py)
        places = cfg.listen if cfg.role == "gateway" else cfg.gateway.endpoints
        factories = [
            (pl, plugin.load(ITransportFactory, pl.transport, **dict(pl.options))) for pl in places
        ]
        self.mtu = mtu.fit(
            tun.mtu, tun.mtu_auto, tun.address,
            [(f"transport {pl.transport!r} ({pl.host}:{pl.port})", mtu.limit_of(f))
             for pl, f in factories],
        )  # fmt: skip
        if self.mtu != tun.mtu:
            log.info("tun mtu {m}: the largest inner packet every transport carries", m=self.mtu)
        self.tun = TunDevice(
            self.reactor, tun.name, tun.address, self.mtu, tuple(tun.routes),
            self._tx.append, self._flush, tun.offload, self._tun_offloaded,
        )  # fmt: skip
        if not getattr(self.tun, "vnet_hdr", False):
            self.core.features &= ~FEATURE_SEGMENTS  # no GSO writes: take complete packets
        if cfg.metrics_listen is not None:
            from jumping.service.metrics import Metrics

            self.metrics = Metrics(self)
            try:
                self.metrics_port = self.metrics.listen(self.reactor, *cfg.metrics_listen)
            except Exception as e:
                raise StartupError(f"cannot serve metrics on {cfg.metrics_listen}: {e}") from None
        if cfg.role == "gateway":
            for lc, factory in factories:
                self.listeners.append(factory.listen(self.reactor, lc.host, lc.port, self))
        else:
            for ep, factory in factories:
                failures: list[Any] = []
                d = self._connect(ep, factory)
                d.addErrback(failures.append)
                if failures:  # failed at once (bad bind address...): a configuration error
                    failures[0].raiseException()

    def startService(self) -> None:  # noqa: N802
        super().startService()
        if self.core is None:
            self.prepare()
        assert self.core is not None and self.tun is not None
        self._now = self.reactor.seconds
        self._write = self.tun.write
        self._write_many = self.tun.write_many
        self.tun.start()
        log.info(
            "jumping {role} {node} up: tun {tun}, {n} transport(s)",
            role=self.config.role,
            node=self.config.node_id,
            tun=self.tun.name,
            n=len(self.listeners) + len(self.paths),
        )
        if isinstance(self.core, ClientCore):
            now = self._now()
            for p in self.paths:
                self.core.add_path(now, p)
            self._run(self.core.start(now))
        self._run(self.core.tick(self._now()))
        try:
            signal.signal(signal.SIGHUP, self._on_sighup)
        except ValueError:  # not the main thread (tests)
            pass

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload_policy)

    def reload_policy(self) -> bool:
        """Re-read the policy from the config file: applied whole, or rejected whole."""
        from jumping.config import load_policy
        from jumping.errors import ConfigError

        if self.core is None:
            return False
        try:
            policy = load_policy(self.config.path)
        except (ConfigError, OSError) as e:
            log.error("policy reload rejected, keeping version {v}: {e}",
                      v=self.core.policy.version, e=str(e))  # fmt: skip
            self.policy_rejections += 1
            return False
        self._run(self.core.set_policy(self.reactor.seconds(), policy))
        log.info("policy version {v} applied", v=policy.version)
        return True

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802
        super().stopService()
        core = self.core
        if core is not None:
            from jumping.core.fsm import Reason

            now = self.reactor.seconds()
            for sid in list(core.sessions):
                self._run(core.terminate(now, sid, Reason.OPERATOR_TERMINATED))
        return self._close_all()

    def _close_all(self) -> defer.Deferred[None]:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waits: list[defer.Deferred[Any]] = []
        for lst in (self.listeners, self.paths):
            for t in lst:
                try:
                    r = t.close()
                    if isinstance(r, defer.Deferred):
                        waits.append(r)
                except Exception:
                    log.failure("closing transport")
            lst.clear()
        if self.tun is not None:
            self.tun.close()
            self.tun = None
        self._tx.clear()
        if self.metrics_port is not None:
            waits.append(defer.maybeDeferred(self.metrics_port.stopListening))
            self.metrics_port = None
        for w in self.owners.watches.values():
            w.cancel()
        self.owners.watches.clear()
        for closable in [*self.sinks, self.ownership]:
            if closable is not None:
                try:
                    r = closable.close()
                    if isinstance(r, defer.Deferred):
                        waits.append(r)
                except Exception:
                    log.failure("closing plugin")
        self.sinks = []
        self.ownership = None
        d: defer.Deferred[None] = defer.DeferredList(waits, consumeErrors=True).addCallback(
            lambda _: None
        )
        return d

    # ------------------------------------------------------------------ hot paths
    def datagramReceived(self, transport: Any, data: bytes) -> None:  # noqa: N802
        self.datagramsReceived(transport, (data,))

    def datagramsReceived(self, transport: Any, datagrams: Any) -> None:  # noqa: N802
        """A run of datagrams from one path read at once: the inner packets are written to
        the TUN device together (coalesced where they are one TCP flow)."""
        core = self.core
        if core is None:
            return
        t0 = perf_counter()
        packets, outputs = core.receive_batch(self._now(), transport, datagrams)
        if packets:
            self._write_many(packets)
        if outputs:
            if (
                isinstance(core, GatewayCore)
                and core.counters["handshakes_answered"] != self._answered
            ):
                # what answering an initiation costs on this host, measured, so the core's
                # load trigger (cookies) counts real work, not a guess
                self._answered = core.counters["handshakes_answered"]
                meter = core.handshake_work
                meter.cost += (perf_counter() - t0 - meter.cost) * 0.1  # EWMA over ~10
            self._run(outputs)

    def _tun_offloaded(self, frame: bytes) -> bool:
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
        self._tx.append((packet, hl, gso_size))  # type: ignore[arg-type]
        return True

    def _flush(self) -> None:
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
            self._run(outputs)

    def transportLost(self, transport: Any, reason: str) -> None:  # noqa: N802
        core = self.core
        if core is not None:
            self._run(core.path_lost(self.reactor.seconds(), transport))
        if transport in self.paths:
            self.paths.remove(transport)
            if isinstance(core, ClientCore):
                self._run(core.remove_path(self.reactor.seconds(), transport))
            ep = self._endpoint_of.pop(transport, None)
            if ep is not None and self.running:
                self.reactor.callLater(RECONNECT_DELAY, self._reconnect, *ep)

    # ------------------------------------------------------------------ client paths
    def _connect(self, ep: Any, factory: Any) -> defer.Deferred[Any]:
        local = (ep.bind, 0) if getattr(ep, "bind", None) else None
        d = factory.connect(self.reactor, (ep.host, ep.port), self, local=local)
        d.addCallback(self._path_up, ep, factory)
        return d

    def _path_up(self, path: Any, ep: Any, factory: Any) -> Any:
        limit = mtu.limit_of(path)
        if limit is not None and limit < self.mtu + mtu.OVERHEAD:
            # fewer bytes than its factory announced (the far end's limit): using it would
            # black-hole full-size packets after a jump, so it is never a candidate
            self.paths_refused_mtu += 1
            log.error(
                "path {t} refused: it carries datagrams of {n} bytes, the tunnel needs {need}",
                t=getattr(path, "transport_id", path), n=limit, need=self.mtu + mtu.OVERHEAD,
            )  # fmt: skip
            path.close()
            return path
        self.paths.append(path)
        self._endpoint_of[path] = (ep, factory)
        if self.core is not None and self.running and isinstance(self.core, ClientCore):
            self._run(self.core.add_path(self.reactor.seconds(), path))
        return path

    def _reconnect(self, ep: Any, factory: Any) -> None:
        if not self.running:
            return

        def failed(f: Any) -> None:
            log.warn("path to {h}:{p} ({t}): {e}", h=ep.host, p=ep.port, t=ep.transport,
                     e=f.getErrorMessage())  # fmt: skip
            if self.running:
                self.reactor.callLater(RECONNECT_DELAY, self._reconnect, ep, factory)

        self._connect(ep, factory).addErrback(failed)

    # ------------------------------------------------------------------ outputs
    def _run(self, outputs: Iterable[Output]) -> None:
        for out in outputs:
            t = type(out)
            if t is Send:
                out.path.send(out.data)  # type: ignore[union-attr]
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
                self.owners.execute(out)
            elif t is ConfirmPath:
                out.path.confirm()  # type: ignore[union-attr]
            elif t is Drop:
                pass

    def _arm(self, at: float) -> None:
        if self._timer is not None and self._timer.active():
            if at >= self._timer_at:
                return
            self._timer.cancel()
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
            self._run(self.core.tick(now))

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        core = self.core
        if core is None:
            return {}
        return {
            "role": self.config.role,
            "node_id": self.config.node_id,
            "sessions": dict(core.state_counts()),
            "drops": dict(core.drops),
            "counters": dict(core.counters),
            "tun_mtu": self.mtu,
            "paths_refused_mtu": self.paths_refused_mtu,
            "tun_write_errors": self.tun_write_errors + (self.tun.write_errors if self.tun else 0),
            "events": self.events.seq if self.events else 0,
            "ownership_healthy": bool(getattr(self.ownership, "healthy", True)),
        }
