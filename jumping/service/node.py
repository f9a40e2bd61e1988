"""
The lifecycle of a Jumping node: TUN, transports, plugins, control and reload around one
sans-IO :class:`~jumping.core.node.NodeCore`.

The node follows twistd's service phases (the plugin lifecycle in :mod:`jumping.interfaces`):

- :meth:`NodeService.build` (``makeService``, before twistd forks): key files, plugins
  (constructed, nothing started), the core. Opens nothing.
- :meth:`NodeService.privilegedStartService` (after the fork, as root): the TUN device,
  the listeners (gateway) or first paths (client), the metrics port; then, if twistd is
  about to drop to another user, keep the capabilities to retain across its ``setuid``.
- :meth:`NodeService.startService` (after the drop): confine the capabilities, start the
  event sinks and the ownership backend; once all are ready, read the TUN device, serve
  sessions, handle SIGHUP, and tell systemd ``READY=1``.
- :meth:`NodeService.stopService`: terminate every session (the peer is told), close the
  transports, the TUN device, the sinks and the backend.

A failure in the first two phases closes what was opened and raises :class:`StartupError`
(one line; twistd exits 1, also when daemonized). A plugin that cannot start in the third
logs one line and the node exits with status 1.

Around the phases, the node's parts live in their own modules: building them from the
configuration in :mod:`jumping.service.assemble`, the hot path (datagrams and TUN packets
through the core) and the output executor in :mod:`jumping.service.dataplane`, whose
:class:`~jumping.service.dataplane.DataPlane` is the receiver the transports get, the
ownership executor in :mod:`jumping.service.ownership`.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from jumping.config import STATE_DIR
from jumping.core.client import ClientCore
from jumping.core.gateway import GatewayCore
from jumping.core.node import NodeCore
from jumping.core.outputs import Emit, Output
from jumping.core.segments import FEATURE_SEGMENTS
from jumping.interfaces import IBatchDatagramReceiver, IDurableEventSink
from jumping.keys import event_keys
from jumping.service import commands, control, dispatch, mtu, privileges, reload, sdnotify
from jumping.service.assemble import build_core, build_parts
from jumping.service.dataplane import DataPlane
from jumping.service.events import EventPipeline
from jumping.service.handshakes import HandshakeQueue
from jumping.service.heap import TRIM_INTERVAL_S, HeapTrimmer
from jumping.service.ownership import OwnershipDriver
from jumping.service.tun import TunDevice, ip_command

log = Logger()

RECONNECT_DELAY = 1.0
#: how often sinks are asked for dropped events to announce (EVENTS_LOST)
LOSS_CHECK_S = 1.0


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
        #: the hot path and the output executor; the receiver the transports get. The
        #: service's datagram methods are its bound methods (no extra call per datagram)
        self.dataplane = DataPlane(reactor, self._path_lost)
        self.datagramReceived = self.dataplane.datagramReceived
        self.datagramsReceived = self.dataplane.datagramsReceived
        self.transportLost = self.dataplane.transportLost
        #: the core as built by :meth:`build`
        self.built: NodeCore | None = None
        #: (uid, gid) twistd switches to between the privileged start and the start
        #: (``--uid/--gid`` or ``[node] user``); set by :mod:`jumping.tap`
        self.run_as: tuple[int, int] | None = None
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.not_ready_drops = 0
        self.listeners: list[Any] = []
        self.paths: list[Any] = []
        self.sinks: list[Any] = []
        #: sinks that keep state in the node's state directory (``[node] state_dir``)
        self.state_users: list[Any] = []
        #: the periodic check for dropped events to announce (EVENTS_LOST)
        self._losses: Any = None
        self._heap: HeapTrimmer | None = None
        self._heap_loop: Any = None
        #: the reactor polls through jumping/service/dispatch.py while this node serves
        self.lean_dispatch = False
        self.ownership: Any = None
        self.tun_drops = 0
        #: operator actions by (action, result): ("reload", "applied"), ("reload", "rejected")...
        self.control_actions: Counter[tuple[str, str]] = Counter()
        #: the control socket's listening port (jumping/service/control.py), once bound
        self.control_port: Any = None
        #: reactor time the node started serving (uptime in ``jumpctl status``)
        self.started_at: float | None = None
        self.metrics_port: Any = None
        self._endpoint_of: dict[Any, tuple[Any, Any]] = {}
        self.policy_rejections = 0
        #: runs the core's claims, renewals, takeovers and releases; watches fence us out
        self.owners = OwnershipDriver(
            None, lambda: self.dataplane.core, self.dataplane.run, self.reactor.seconds
        )
        self.dataplane.owners = self.owners
        #: the tunnel MTU (set in prepare from [tun] and the transports; 0: not prepared)
        self.mtu = config.tun.mtu if config is not None else 0
        #: (listen or endpoint config, ITransportFactory), built by :meth:`build`
        self.factories: list[tuple[Any, Any]] = []
        #: client paths refused as candidates: they carry less than the tunnel MTU needs
        self.paths_refused_mtu = 0

    # ------------------------------------------------------------------ the data plane's
    # what the data plane reads on every datagram lives there; the service sets it

    @property
    def core(self) -> NodeCore | None:
        """The core, once the node serves (after every plugin started); None before."""
        return self.dataplane.core

    @core.setter
    def core(self, core: NodeCore | None) -> None:
        self.dataplane.core = core

    @property
    def tun(self) -> TunDevice | None:
        return self.dataplane.tun

    @tun.setter
    def tun(self, tun: TunDevice | None) -> None:
        self.dataplane.tun = tun

    @property
    def events(self) -> EventPipeline | None:
        return self.dataplane.events

    @events.setter
    def events(self, events: EventPipeline | None) -> None:
        self.dataplane.events = events

    @property
    def metrics(self) -> Any:
        return self.dataplane.metrics

    @metrics.setter
    def metrics(self, metrics: Any) -> None:
        self.dataplane.metrics = metrics

    @property
    def mtu(self) -> int:
        """The tunnel MTU (set in prepare from [tun] and the transports; 0: not prepared)."""
        return self.dataplane.mtu

    @mtu.setter
    def mtu(self, mtu: int) -> None:
        self.dataplane.mtu = mtu

    @property
    def handshakes(self) -> HandshakeQueue:
        """A gateway's queue of handshake messages (jumping/service/handshakes.py)."""
        return self.dataplane.handshakes

    @property
    def queue_handshakes(self) -> bool:
        """True on a gateway (set by :meth:`build`): handshakes go through the queue."""
        return self.dataplane.queue_handshakes

    @queue_handshakes.setter
    def queue_handshakes(self, on: bool) -> None:
        self.dataplane.queue_handshakes = on

    @property
    def tun_write_errors(self) -> int:
        """Packets the TUN device failed to write (counted by the device)."""
        return self.tun.write_errors if self.tun is not None else 0

    # ------------------------------------------------------------------ lifecycle
    def prepare(self) -> None:
        """:meth:`build` then :meth:`open_privileged` (callers without twistd's phases)."""
        if self.built is None:
            self.build()
        if self.tun is None:
            self.open_privileged()

    def build(self) -> None:
        """Every fallible step that opens nothing (``makeService``, before the fork); on
        failure undo what was done and raise StartupError."""
        self._guard(self._build)

    def open_privileged(self) -> None:
        """Open the TUN device, the listeners or first paths, the metrics port (as root,
        after the fork); on failure close everything and raise StartupError."""
        self._guard(self._open_privileged)

    def _guard(self, step: Callable[[], None]) -> None:
        try:
            step()
        except StartupError:
            self._close_all()
            raise
        except Exception as e:
            self._close_all()
            raise StartupError(str(e) or type(e).__name__) from e

    def _build(self) -> None:
        cfg = self.config
        ip_command()  # iproute2 at a trusted absolute path, or a clear error now
        # keys and plugins: the same code as `jumpctl check` (jumping/service/assemble.py)
        parts = build_parts(cfg)
        self.sinks = parts.sinks
        # sinks that keep state across restarts (the Kafka sink's spool) get the node's
        # state directory, which the privileged start creates for the node's user
        self.state_users = [
            s for s in self.sinks
            if IDurableEventSink.providedBy(s)
            and s.bind_state_dir(str(cfg.state_dir or STATE_DIR / cfg.node_id))
        ]  # fmt: skip
        self.ownership = parts.ownership
        # the chain key and the address key, both derived from the node secret (the chain
        # key alone goes to the auditor: `jumpctl chain-key`); without one, a zero chain key
        chain_key, address_key = event_keys(cfg.secret)
        self.events = EventPipeline(
            cfg.node_id, self.sinks, chain_key, lambda: str(self.built.policy.version if self.built else cfg.policy.version),
            self.reactor.seconds, cfg.address_privacy, address_key,
        )  # fmt: skip
        self.built = build_core(cfg, parts, self.rng, self.reactor.seconds())
        if cfg.role == "gateway":
            self.owners.backend = self.ownership
            self.queue_handshakes = True
        self.factories = parts.factories
        self.mtu = parts.mtu
        if cfg.metrics_listen is not None:
            from jumping.service.metrics import Metrics

            self.metrics = Metrics(self)

    def _make_state_dir(self) -> None:
        """The node's state directory (as root, before the drop): created 0750 and given to
        the node's user; an existing one is used as it is (its owner decides)."""
        cfg = self.config
        d = cfg.state_dir or STATE_DIR / cfg.node_id
        if d.is_dir():
            return
        try:
            d.mkdir(mode=0o750, parents=True)
            if self.run_as is not None and os.geteuid() == 0:
                os.chown(d, *self.run_as)
        except OSError as e:
            raise StartupError(
                f"state directory {d}: cannot create it: {e.strerror or e}"
            ) from None

    def _open_privileged(self) -> None:
        cfg = self.config
        if self.state_users:
            self._make_state_dir()
        tun = cfg.tun
        factories = self.factories
        if self.mtu != tun.mtu:
            log.info("tun mtu {m}: the largest inner packet every transport carries", m=self.mtu)
        self.tun = TunDevice(
            self.reactor, tun.name, tun.address, self.mtu, tuple(tun.routes),
            self.dataplane.tun_packet, self.dataplane.flush, tun.offload,
            self.dataplane.tun_offloaded,
        )  # fmt: skip
        if not getattr(self.tun, "vnet_hdr", False) and self.built is not None:
            self.built.features &= ~FEATURE_SEGMENTS  # no GSO writes: take complete packets
        if self.metrics is not None:
            try:
                self.metrics_port = self.metrics.listen(self.reactor, *cfg.metrics_listen)
            except Exception as e:
                raise StartupError(f"cannot serve metrics on {cfg.metrics_listen}: {e}") from None
        if cfg.role == "gateway":
            for lc, factory in factories:
                self.listeners.append(
                    factory.listen(self.reactor, lc.host, lc.port, self.dataplane)
                )
        else:
            for ep, factory in factories:
                self._first_path(ep, factory)

    def _first_path(self, ep: Any, factory: Any) -> None:
        """Connect one configured endpoint. Failing at once (a bad bind address...) is a
        configuration error, raised; failing later (a TCP endpoint refusing) is retried,
        from a socket opened after the privilege drop."""
        at_once: list[Any] = []
        connecting = True

        def failed(f: Any) -> None:
            if connecting:
                at_once.append(f)
            else:
                self._path_failed(ep, factory, f)

        self._connect(ep, factory).addErrback(failed)
        connecting = False
        if at_once:
            at_once[0].raiseException()

    def privilegedStartService(self) -> None:  # noqa: N802
        super().privilegedStartService()
        self.prepare()
        self._guard(self.open_control)
        if self.run_as is not None and os.geteuid() == 0 and self.config.capabilities:
            # twistd's setuid comes next: without this it would clear every capability
            privileges.keep_capabilities_across_setuid()

    def startService(self) -> None:  # noqa: N802
        super().startService()
        try:
            if self.tun is None:  # started without twistd's privileged phase (tests)
                self.prepare()
            self._confine()
        except (StartupError, privileges.PrivilegeError) as e:
            self._cannot_start(str(e))
            return
        d = self._start_plugins()
        d.addCallback(lambda _: self._serve())
        d.addErrback(lambda f: self._cannot_start(_reason(f)))

    def _confine(self) -> None:
        """After twistd's uid/gid switch: keep only the configured capabilities, check
        that nothing of root is left, say what the node runs as."""
        keep = self.config.capabilities
        if self.run_as is None and os.geteuid() == 0:
            log.warn("jumping {node} runs as root: set [node] user (or twistd --uid/--gid) to "
                     "drop privileges after start-up", node=self.config.node_id)  # fmt: skip
            return
        ident = privileges.confine(keep, self.run_as)
        log.info(
            "privileges: uid {uid} gid {gid} groups {groups}; capabilities kept: {caps}",
            uid=ident.uid, gid=ident.gid, groups=list(ident.groups),
            caps=", ".join(ident.effective) or "none",
        )  # fmt: skip
        missing = sorted(set(keep) - set(ident.effective))
        if missing:
            log.warn("capabilities {caps} were not available to keep: sockets opened from now "
                     "on get socket buffers only up to net.core.rmem_max/wmem_max",
                     caps=", ".join(missing))  # fmt: skip

    def _start_plugins(self) -> defer.Deferred[Any]:
        """``start()`` every sink, then the ownership backend (after the sinks, so that a
        backend failing at start can still be reported); fires when all are ready."""

        def start(thing: Any, what: str) -> defer.Deferred[Any]:
            d = defer.maybeDeferred(thing.start)
            return d.addErrback(lambda f: defer.fail(StartupError(f"{what}: {_reason(f)}")))

        sinks = [start(s, f"event sink {getattr(s, 'name', '?')}") for s in self.sinks]
        d = defer.gatherResults(sinks, consumeErrors=True)
        if self.ownership is not None:
            name = self.config.ownership.name
            d.addCallback(lambda _: start(self.ownership, f"ownership backend {name}"))
        return d

    def _serve(self) -> None:
        """Every plugin is ready: serve sessions and tell systemd."""
        if not self.running or self.tun is None or self.built is None:
            return
        core = self.built
        self.dataplane.start(core, self.tun)
        self.limits_changed()
        run = self.dataplane.run
        if os.environ.get("JUMPING_LEAN_DISPATCH", "1") != "0":
            self.lean_dispatch = dispatch.install(self.reactor)
        self.tun.start()
        n = len(self.listeners) + len(self.paths)
        self.started_at = self.reactor.seconds()
        log.info(
            "jumping {role} {node} up: tun {tun}, {n} transport(s)",
            role=self.config.role, node=self.config.node_id, tun=self.tun.name, n=n,
        )  # fmt: skip
        if isinstance(core, ClientCore):
            now = self.reactor.seconds()
            for p in self.paths:
                core.add_path(now, p)
            run(core.start(now))
        run(core.tick(self.reactor.seconds()))
        if any(IDurableEventSink.providedBy(s) for s in self.sinks):
            from twisted.internet import task

            self._losses = task.LoopingCall(self.announce_losses)
            self._losses.clock = self.reactor
            self._losses.start(LOSS_CHECK_S, now=False)
        self._heap = HeapTrimmer(core.counters)
        if self._heap.available:
            from twisted.internet import task

            self._heap_loop = task.LoopingCall(self._heap.check)
            self._heap_loop.clock = self.reactor
            self._heap_loop.start(TRIM_INTERVAL_S, now=False)
        try:
            signal.signal(signal.SIGHUP, self._on_sighup)
        except ValueError:  # not the main thread (tests)
            pass
        what = "listener(s)" if isinstance(core, GatewayCore) else "path(s)"
        sdnotify.ready(f"{self.config.role} {self.config.node_id}: {n} {what}, tun {self.tun.name}")
        self.ready.callback(None)

    def announce_losses(self) -> None:
        """Events a sink dropped (its spool was full, or the queue in front of it), once it
        has room again: one EVENTS_LOST per range, to every sink (docs/events.md)."""
        for i, sink in enumerate(self.sinks):
            label = f"{sink.name}{i}"
            if not IDurableEventSink.providedBy(sink):
                continue
            for boot, first, last, count in sink.take_losses():
                fields: dict[str, Any] = {
                    "sink": label, "first_seq": max(first, 0),
                    "last_seq": max(last, first, 0), "count": count,
                }  # fmt: skip
                if boot is not None:
                    fields["lost_boot_id"] = boot
                log.warn("event sink {sink}: {n} event(s) dropped (seq {a}..{b}), announced",
                         sink=fields["sink"], n=count, a=first, b=last)  # fmt: skip
                self.dataplane.run([Emit("EVENTS_LOST", None, 0, None, fields)])

    def _cannot_start(self, reason: str) -> None:
        log.critical("jumping {node}: cannot start: {reason}", node=self.config.node_id,
                     reason=reason)  # fmt: skip
        sdnotify.status(f"cannot start: {reason}")
        if not self.ready.called:
            self.ready.errback(StartupError(reason))
            self.ready.addErrback(lambda _: None)
        exit_status_after_shutdown(1)
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload_policy)

    def reload_policy(self) -> bool:
        """SIGHUP: the same as ``jumpctl reload`` (:meth:`reload`); True if applied."""
        return bool(self.reload()["applied"])

    def reload(self) -> dict[str, Any]:
        """Re-read the configuration file: ``[policy]`` and ``[[peers]]`` applied whole, or
        nothing at all (jumping/service/reload.py); systemd is told RELOADING, then READY
        with the outcome."""
        if self.core is None:
            return reload.apply(self)
        sdnotify.reloading()
        answer = reload.apply(self)
        if answer["applied"]:
            sdnotify.notify("READY=1", f"STATUS=policy version {answer['policy_version']}")
        else:
            sdnotify.notify("READY=1", f"STATUS=reload rejected: {answer['error']}")
        return answer

    def limits_changed(self) -> None:
        """The policy's limits of the service (the handshake queue), applied (at the start
        and after a reload)."""
        core = self.core or self.built
        if core is not None:
            p = core.policy
            self.handshakes.configure(p.handshake_queue_size, p.handshake_turn_budget_ms / 1e3)

    def run_outputs(self, outputs: Iterable[Output]) -> None:
        """Execute what a core call returned (for the operator commands and the reload):
        the data plane's output executor."""
        self.dataplane.run(outputs)

    _run = run_outputs

    # ------------------------------------------------------------------ control socket
    def open_control(self) -> None:
        """Bind the control socket (as root, before the privilege drop; it is given to the
        node's user, so it keeps working after it)."""
        cc = self.config.control
        if cc is None or self.control_port is not None:
            return
        try:
            self.control_port = control.listen(
                self.reactor, cc.socket, cc.mode, self.run_as,
                lambda request: commands.handle(self, request),
            )  # fmt: skip
        except control.ControlError as e:
            raise StartupError(str(e)) from None

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802
        super().stopService()
        sdnotify.stopping()
        core = self.core
        if core is not None:
            from jumping.core.fsm import Reason

            now = self.reactor.seconds()
            for sid in list(core.sessions):
                self.dataplane.run(core.terminate(now, sid, Reason.OPERATOR_TERMINATED))
        return self._close_all()

    def _close_all(self) -> defer.Deferred[None]:
        self.dataplane.close()
        if self.lean_dispatch:
            dispatch.uninstall(self.reactor)
            self.lean_dispatch = False
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
        if self.metrics_port is not None:
            waits.append(defer.maybeDeferred(self.metrics_port.stopListening))
            self.metrics_port = None
        if self.control_port is not None:
            waits.append(defer.maybeDeferred(self.control_port.stopListening))
            self.control_port = None
        if self._losses is not None and self._losses.running:
            self._losses.stop()
        self._losses = None
        if self._heap_loop is not None and self._heap_loop.running:
            self._heap_loop.stop()
        self._heap_loop = None
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
        self.core = None
        d: defer.Deferred[None] = defer.DeferredList(waits, consumeErrors=True).addCallback(
            lambda _: None
        )
        return d

    # ------------------------------------------------------------------ client paths
    def _path_lost(self, transport: Any) -> None:
        """A transport died (the data plane told the core already): a client forgets the
        path and reconnects its endpoint."""
        if transport in self.paths:
            self.paths.remove(transport)
            core = self.core
            if isinstance(core, ClientCore):
                self.dataplane.run(core.remove_path(self.reactor.seconds(), transport))
            ep = self._endpoint_of.pop(transport, None)
            if ep is not None and self.running:
                self.reactor.callLater(RECONNECT_DELAY, self._reconnect, *ep)

    def _connect(self, ep: Any, factory: Any) -> defer.Deferred[Any]:
        local = (ep.bind, 0) if getattr(ep, "bind", None) else None
        d = factory.connect(self.reactor, (ep.host, ep.port), self.dataplane, local=local)
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
        if isinstance(self.core, ClientCore) and self.running:  # serving: a new candidate
            self.dataplane.run(self.core.add_path(self.reactor.seconds(), path))
        return path

    def _reconnect(self, ep: Any, factory: Any) -> None:
        if not self.running:
            return
        self._connect(ep, factory).addErrback(lambda f: self._path_failed(ep, factory, f))

    def _path_failed(self, ep: Any, factory: Any, f: Any) -> None:
        log.warn("path to {h}:{p} ({t}): {e}", h=ep.host, p=ep.port, t=ep.transport,
                 e=f.getErrorMessage())  # fmt: skip
        if self.running:
            self.reactor.callLater(RECONNECT_DELAY, self._reconnect, ep, factory)

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
            "handshake_queue": {
                "depth": len(self.handshakes),
                "max_depth": self.handshakes.high_water,
                "queued": self.handshakes.queued,
                "dropped": self.handshakes.dropped,
            },
            "counters": dict(core.counters),
            "tun_mtu": self.mtu,
            "paths_refused_mtu": self.paths_refused_mtu,
            "tun_write_errors": self.tun_write_errors,
            "events": self.events.seq if self.events else 0,
            "ownership_healthy": self.ownership is None or bool(self.ownership.healthy),
        }


def _reason(f: Any) -> str:
    """One line from a Failure (or an exception)."""
    e = getattr(f, "value", f)
    return str(e) or type(e).__name__


def exit_status_after_shutdown(code: int) -> None:
    """Make the process exit with ``code`` once twistd has shut down (it would exit 0):
    after twistd removed its pidfile, at interpreter exit."""
    import atexit
    import sys

    def leave() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)

    atexit.register(leave)
