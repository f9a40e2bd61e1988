"""
The contracts between Jumping's sans-IO core, its Twisted service and its plugins.

Every plugin Jumping loads (built in or third party) provides one of these
interfaces; :func:`jumping.plugin.load` finds it by name through
``twisted.plugin.getPlugins`` and checks it with ``verifyObject`` before use.
``jumping.testing.conformance`` holds one test mixin per interface that every
implementation runs.

Nothing here imports the reactor: these are descriptions, not code.

Lifecycle
---------
A node runs under ``twistd``, which builds the service, may fork into the background, opens
privileged resources, drops privileges, then runs the reactor. Anything started before the
fork does not survive it (threads vanish, the daemon silently does nothing), and anything
opened after the drop is opened without root. So every plugin follows these phases:

1. **Construction** (``IJumpingPlugin.build(**options)``, inside ``makeService``, before the
   fork, as root): validate the options and build objects, nothing else. A constructor
   starts no thread, opens no file, socket or connection, grants no lease, schedules no
   ``callLater``/``LoopingCall``. Bad options raise ``ValueError`` naming the option (the
   node prints it and exits 1 before anything started).
2. **Privileged start** (the node's ``privilegedStartService``, after the fork, still
   root): the node opens the TUN device, calls :meth:`ITransportFactory.listen` (gateway)
   and :meth:`ITransportFactory.connect` (a client's first paths), binds the metrics port.
   No other plugin is called in this phase.
3. **Start** (the node's ``startService``, on the reactor thread, after the privilege
   drop: the process may run as an unprivileged user, with ``CAP_NET_ADMIN`` at most):
   the node calls ``start()`` on every :class:`IEventSink`, then on the
   :class:`IOwnershipBackend`. ``start()`` starts threads, opens files and connections,
   grants leases, arms watches and looping calls. It returns ``None`` when the plugin is
   ready at once, or a ``Deferred`` that fires when it is ready or fails with the reason
   the node cannot run (the node logs that one line and exits with status 1). It never
   blocks the reactor (blocking work belongs in the plugin's own threads) and is called at
   most once. The node handles no session (reads neither the TUN device nor handshakes)
   and reports no readiness (systemd ``READY=1``) before every ``start()`` has fired.
4. **Stop** (the node's ``stopService``, after its sessions were terminated): ``close()``
   on every sink and the backend. ``close()`` stops what ``start()`` started within a
   short bound and returns a ``Deferred``; it also works when ``start()`` was never called
   or failed, and a second call is harmless.

Transports are opened in phase 2 *and* later (a client reopens paths after the drop), so
a transport must work without root; a failure to get what it was configured with (e.g.
socket buffers beyond ``net.core.rmem_max``) is logged, never silent. Rate-limit policies
are pure objects without a lifecycle. ``jumping.testing.conformance`` checks the rules:
constructing a plugin starts no thread, opens no descriptor and schedules no call.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IJumpingPlugin(Interface):
    """
    What ``twisted/plugins/jumping_*.py`` drop-ins provide: a named factory.

    Drop-ins stay tiny (no heavy imports); the factory imports the real code.
    """

    name = Attribute("Plugin name as used in configuration files, e.g. ``'udp'``. [a-z0-9_-]+")
    provides = Attribute(
        "The interface the object returned by :meth:`build` provides, e.g. ``ITransportFactory``."
    )
    description = Attribute("One line shown by ``jumpctl plugins``.")

    def build(**options):  # type: ignore[no-untyped-def]
        """
        Create the plugin object from its configuration section.

        :param options: the keys of the plugin's configuration section, already parsed
            (strings, numbers, booleans, lists). Unknown keys must raise ``ValueError``
            naming the key, so a typo is never silently ignored.
        :return: an object providing :attr:`provides`.
        """


class IDatagramReceiver(Interface):
    """
    Whoever consumes what a transport receives: the node service.
    """

    def datagramReceived(transport, data):  # type: ignore[no-untyped-def]
        """
        One datagram (or one de-framed frame for stream transports) arrived.

        Called on the reactor thread. Must not raise.

        :param transport: the :class:`ITransport` the data arrived on. Stream and
            connected transports pass themselves; a listening datagram transport passes the
            per-remote-address path object it keeps for that address.
        :param bytes data: the payload, never larger than 65535 bytes.
        """

    def transportLost(transport, reason):  # type: ignore[no-untyped-def]
        """
        The transport can no longer send or receive (socket closed, connection reset).

        :param transport: the :class:`ITransport` that died.
        :param str reason: a short machine-readable cause, e.g. ``'closed'``, ``'reset'``.
        """


class IBatchDatagramReceiver(IDatagramReceiver):
    """
    A receiver that also takes a run of datagrams read at once (optional for transports).

    Transports that read several datagrams of one path in one system call (UDP GRO) hand
    them over in one call, so the receiver can process them together (e.g. write the inner
    packets to the TUN device coalesced). Equivalent to one :meth:`datagramReceived` per
    datagram, in order.
    """

    def datagramsReceived(transport, datagrams):  # type: ignore[no-untyped-def]
        """
        Several datagrams arrived on ``transport``, in this order.

        Called on the reactor thread. Must not raise.

        :param list datagrams: ``bytes`` objects; the list is the caller's.
        """


class IInitiationGate(Interface):
    """
    Offered by a gateway's receiver as its ``initiation_gate`` attribute (optional for
    transports): while the gateway requires cookies, a listening datagram transport may
    let the gate refuse the initiations without a valid mac2 inside its read loop, before
    they become Python objects (jumping/service/gate.py, jumping/service/_fastio.c).
    Equivalent to handing each of them to :meth:`IDatagramReceiver.datagramReceived`.
    """

    def arm():  # type: ignore[misc]
        """
        Called at the start of a read pass: the armed ``jumping.service._fastio.Gate`` to
        pass to ``recv_burst``, or None (cookies are not required; no C gate here).
        """

    def done(gate):  # type: ignore[no-untyped-def]
        """
        Called at the end of the read pass that armed ``gate``, even if it failed: what the
        gate did is folded into the gateway's core.
        """


class ITransport(Interface):
    """
    One path a session can be bound to: a UDP 4-tuple, a TCP connection, a QUIC path.

    A transport carries opaque datagrams; framing (for stream transports) is its business.
    """

    transport_id = Attribute(
        "``str`` unique among this node's live transports and never reused while the node "
        "runs, e.g. ``'udp:10.0.0.1:51820>10.0.0.2:40000'``. Selection breaks ties on it."
    )
    kind = Attribute("``'udp'``, ``'tcp'`` or ``'quic'``.")
    local_address = Attribute("``(host, port)`` this end sends from, as strings/ints.")
    remote_address = Attribute("``(host, port)`` of the far end.")
    connected = Attribute("``bool``: False once the transport is closed or lost.")

    def send(data):  # type: ignore[no-untyped-def]
        """
        Send one datagram to the remote address.

        Never raises for network conditions (unreachable, buffer full): those are counted
        in :attr:`send_errors` and the datagram is dropped, as the network would.

        :param bytes data: at most 65535 bytes.
        """

    send_errors = Attribute("``int``: datagrams dropped by :meth:`send` so far.")

    def close():  # type: ignore[no-untyped-def]
        """
        Stop using this path. Idempotent. :attr:`connected` becomes False.
        """


class IProvisionalPath(ITransport):
    """
    A listener's path for a source it has not seen authenticate yet (optional).

    A listening transport must not let unauthenticated input into any table a live session
    depends on: the path for a new remote address (a datagram from an unknown address, a
    new TCP connection) is *provisional* until the node has authenticated a packet on it.
    The node then calls :meth:`confirm` (the core's ``ConfirmPath`` output), and only from
    then on may the transport keep it (in its per-address table, outside its bound on
    unauthenticated connections). Transports without it are treated as confirmed.
    """

    provisional = Attribute("``bool``: True until :meth:`confirm` was called.")

    def confirm():  # type: ignore[no-untyped-def]
        """
        An authenticated packet arrived on this path: keep it. Idempotent; a no-op for a
        closed path.
        """


class IBatchTransport(ITransport):
    """
    A transport that can hand several datagrams to the kernel at once (optional).

    The node collects what one reactor wake-up produced for a path and calls
    :meth:`send_batch` once instead of :meth:`ITransport.send` per datagram; transports
    without it get one ``send`` per datagram. What reaches the far end is exactly what the
    same ``send`` calls would have delivered, in the same order.
    """

    def send_batch(datagrams):  # type: ignore[no-untyped-def]
        """
        Send every datagram of the list, in order, as :meth:`ITransport.send` would.

        Never raises for network conditions; each datagram that could not be sent adds one
        to :attr:`ITransport.send_errors`.

        :param list datagrams: ``bytes`` objects of at most 65535 bytes each; the list is
            the caller's and must not be kept.
        """


class IPathMTU(Interface):
    """
    A transport whose paths carry datagrams smaller than 65535 bytes whole (optional).

    Provided by an :class:`ITransportFactory` (what every path it opens will carry, known
    before any is opened) and by its :class:`ITransport` objects (what this path carries
    now, which may be less once the far end's limits are known). The node makes its tunnel
    MTU fit the smallest factory figure and refuses a path below it as a candidate, so that
    a jump never black-holes full-size packets (docs/plugins.md#mtu). A datagram larger than
    the limit given to :meth:`ITransport.send` is dropped and counted in ``send_errors``.
    """

    max_datagram = Attribute(
        "``int``: the largest datagram (a whole Jumping message) carried in one piece."
    )


class ITransportFactory(Interface):
    """
    Creates transports of one kind: listeners on a gateway, outgoing paths on a client.

    The constructor only validates options (lifecycle phase 1). :meth:`listen` and the
    client's first :meth:`connect` are called in the node's ``privilegedStartService``
    (phase 2, as root); later ``connect`` calls (reconnects, new paths) come after the
    privilege drop, so they must work without root and log what they could not configure.
    """

    kind = Attribute("``'udp'``, ``'tcp'`` or ``'quic'``.")

    def listen(reactor, host, port, receiver):  # type: ignore[no-untyped-def]
        """
        Listen for datagrams/connections on ``host:port``.

        :param reactor: the reactor to use.
        :param str host: local address to bind (``'0.0.0.0'`` for all).
        :param int port: local port; 0 for any.
        :param receiver: an :class:`IDatagramReceiver`; every remote address gets its own
            :class:`ITransport` (a per-address path object for datagram transports).
        :return: an :class:`IListener`.
        :raise OSError: the address cannot be bound (e.g. port in use); raised at once,
            nothing is left half-open.
        """

    def connect(reactor, remote, receiver, local=None):  # type: ignore[no-untyped-def]
        """
        Open an outgoing path to ``remote``.

        :param remote: ``(host, port)`` of the gateway endpoint.
        :param receiver: the :class:`IDatagramReceiver` for what arrives on this path.
        :param local: optional ``(host, port)`` to bind (choose the source address).
        :return: a ``Deferred`` firing with the :class:`ITransport` once it can send.
        """


class IListener(Interface):
    """
    A listening endpoint returned by :meth:`ITransportFactory.listen`.

    Optional, read by the node's metrics and ``jumpctl status`` when present: ``int``
    counters of unauthenticated input named ``provisional_paths``, ``evicted``,
    ``refused``, ``refused_unauthenticated``, ``handshake_timeouts``, ``idle_timeouts``,
    and ``paths``, a sized collection of the authenticated paths it keeps.
    """

    local_address = Attribute("``(host, port)`` actually bound (port resolved if 0 was asked).")

    def close():  # type: ignore[no-untyped-def]
        """Stop listening and close every path created by this listener. Returns a Deferred."""


class IOwnershipBackend(Interface):
    """
    Who owns which session, cluster-wide (docs/protocol.md#cluster-ownership).

    Every method returns a ``Deferred`` and never blocks the reactor thread. A fencing
    token is a positive ``int`` that strictly increases each time ownership of a session
    changes hands; every mutation carries the caller's token and is refused if it is stale.
    """

    node_id = Attribute("``str``: this node's identity in the cluster.")
    shared = Attribute(
        "``bool``: other nodes use the same store (a cluster backend such as etcd). Read "
        "once when the node is built: only then does a gateway answer a client resuming a "
        "session it does not know by taking it over (:meth:`get` + :meth:`claim` with the "
        "record's token); a backend only this node uses says False, and such a resume gets "
        "a new session."
    )
    healthy = Attribute(
        "``bool``: the backend can serve claims now (connected, lease held). Read by "
        "``jumpctl status`` and the metrics; never blocks, never raises."
    )

    def claim(session_id, record, expected_token):  # type: ignore[no-untyped-def]
        """
        Take ownership of ``session_id`` by compare-and-swap.

        :param str session_id: hex session id.
        :param dict record: the ownership record to store (client public key, state_version,
            owner node id...); JSON-serialisable.
        :param expected_token: ``None`` to create (fails if the session exists), or the
            fencing token of the record the caller read (fails if it changed since).
        :return: Deferred firing with the new fencing token (int).
        :raise OwnershipConflict: (errback) the CAS failed: someone else holds it or the
            token is stale.
        :raise OwnershipUnavailable: (errback) the backend cannot be reached.

        Failures are told apart by type (``jumping.errors.OwnershipConflict``,
        ``jumping.errors.OwnershipUnavailable`` or subclasses): a conflict ends the session
        with ``OWNERSHIP_CONFLICT``, anything else (including an exception of another type,
        a bug) is treated as unavailable and ends it with ``OWNERSHIP_LOST``.
        """

    def renew(session_id, token, record):  # type: ignore[no-untyped-def]
        """
        Update the owned record (e.g. a new state_version) under fencing.

        :return: Deferred firing with the (possibly new) token; errback
            ``OwnershipConflict`` if ``token`` is no longer current (the caller lost it).

        The node calls it when a session's state_version moves on (``Renew``, the core's
        output), so that a takeover elsewhere sees the current version; a conflict ends
        the session as a failed claim does.
        """

    def release(session_id, token):  # type: ignore[no-untyped-def]
        """
        Give ownership up. Stale tokens are ignored (the session is someone else's).

        :return: Deferred firing with ``None``.
        """

    def get(session_id):  # type: ignore[no-untyped-def]
        """
        Read the current record.

        :return: Deferred firing with ``(record, token)`` or ``None`` if nobody owns it.
        """

    def watch(session_id, callback):  # type: ignore[no-untyped-def]
        """
        Call ``callback(session_id, new_token_or_None)`` on the reactor thread whenever the
        record changes or disappears, until the returned object's ``cancel()`` is called.

        A backend that detects a split brain (two owners) may call
        ``callback(session_id, None, 'conflict')``: the node then ends the session with
        ``OWNERSHIP_CONFLICT`` instead of ``OWNERSHIP_LOST``. The node treats every token
        other than the ones its own claims and renewals returned as another node's: it
        fails closed.

        :return: an object with a ``cancel()`` method (idempotent).
        """

    def start():  # type: ignore[no-untyped-def]
        """
        Connect, grant the node's lease, start threads and watches (lifecycle phase 3, see
        the module docstring): called once, from the node's ``startService``, after the
        fork and the privilege drop, before any other method.

        :return: ``None`` if ready at once, or a Deferred firing when the backend can serve
            claims; its errback (e.g. ``OwnershipUnavailable``: no quorum reachable) stops
            the node with that reason.
        """

    def close():  # type: ignore[no-untyped-def]
        """Release the node's lease and stop what :meth:`start` started. Returns a
        Deferred. Works without a prior :meth:`start`; a second call is harmless."""


class IRateLimitPolicy(Interface):
    """
    Decides whether a control-plane action (a transport switch, a reattach, a handshake)
    may happen now. Pure: no I/O, time is passed in, so the core can call it.
    """

    def check(key, now_ms):  # type: ignore[no-untyped-def]
        """
        May the action keyed ``key`` happen at ``now_ms``? Does not consume anything.

        :param str key: what is limited, e.g. a session id or ``'*'`` for global limits.
        :param int now_ms: the caller's clock, milliseconds.
        :return: ``None`` if allowed, else a reason code string (``'SWITCH_RATE_LIMITED'`` or
            ``'COOLDOWN_ACTIVE'``).
        """

    def record(key, now_ms):  # type: ignore[no-untyped-def]
        """The action keyed ``key`` happened at ``now_ms``: consume one allowance."""

    def forget(key):  # type: ignore[no-untyped-def]
        """Drop all state for ``key`` (the session ended). Keeps memory bounded."""

    def reconfigure(policy):  # type: ignore[no-untyped-def]
        """
        The node's session policy, when the node is built and after every reload: take
        from it the limits the plugin's own options (the ``[rate_limit]`` table) left open.

        :param policy: a :class:`jumping.core.policy.Policy`; the switch limits are
            ``policy.max_switches_per_min`` and ``policy.switch_cooldown_ms``.
        Keeps the state of every key (a reload does not reset anyone's allowance). Must not
        raise for a valid policy; the node never sets attributes on the plugin.
        """

    tracked = Attribute("``int``: keys currently holding state (bounded by the policy).")


class IEventSink(Interface):
    """
    Where SIEM events (docs/events.md) go: a JSON-lines file, Kafka, syslog.

    :meth:`emit` is called on the reactor thread and must never block nor raise: a slow,
    full or dead sink drops events and counts them (invariant 9 in docs/protocol.md).
    """

    name = Attribute("``str``: the sink plugin's name.")
    dropped = Attribute("``int``: events dropped so far (queue full, write failed).")
    delivered = Attribute("``int``: events handed to the destination so far.")
    queue_depth = Attribute(
        "``int``: events accepted but not yet delivered, in memory (a sink with a disk "
        "spool reports what the spool holds in ``health()``)."
    )

    def emit(event):  # type: ignore[no-untyped-def]
        """
        Queue one event for delivery.

        :param dict event: a complete event (schema, ts_ms, event_type, seq, ...), JSON-ready.
            The sink must not mutate it.
        """

    def start():  # type: ignore[no-untyped-def]
        """
        Begin delivering (lifecycle phase 3, see the module docstring): start the writer
        thread, open the file or the connection. Called once, from the node's
        ``startService``, after the fork and the privilege drop. Events emitted before it
        are kept within the queue bound and delivered once started.

        :return: ``None`` if ready at once, or a Deferred firing when it is; a failure
            (e.g. the events file cannot be created by the node's user) raises or errbacks
            with a one-line reason, and the node does not start.
        """

    def close():  # type: ignore[no-untyped-def]
        """Flush what can be flushed within a short bound and stop what :meth:`start`
        started. Returns a Deferred. Works without a prior :meth:`start`; events emitted
        afterwards are dropped and counted.

        A sink may also provide :class:`ISinkHealth` and :class:`IDurableEventSink`."""


class IEncodedEventSink(Interface):
    """
    An event sink that takes each event with its canonical JSON encoding: the bytes the
    event chain hashed (:func:`jumping.chain.canonical`: keys sorted, separators ``,`` and
    ``:``, non-ASCII escaped, no newline). Optional: a sink that writes that encoding need
    not make it again (the node encodes every event once, not once per sink).
    """

    def emit_encoded(event, encoded):  # type: ignore[no-untyped-def]
        """
        As :meth:`IEventSink.emit`, with ``encoded`` (``bytes``) the event's canonical
        encoding. Called instead of ``emit``, on the reactor thread; must not block nor
        raise, nor mutate ``event``.
        """


class ISinkHealth(Interface):
    """
    An event sink that reports its health (``jumpctl status``, docs/operations.md, "Event
    sinks"; the ``jumping_event_sink_state`` metric). Optional: a sink without it shows
    ``unknown``.
    """

    def health():  # type: ignore[no-untyped-def]
        """
        Called on the reactor thread; must not block nor raise.

        :return: a dict with ``state`` (``"ok"``, ``"degraded"`` or ``"failing"``),
            ``last_error`` (str or None), ``last_error_at`` (Unix seconds or None), and any
            details (a spool's ``spool_bytes``, ``spool_backlog``, ``spool_oldest_age_s``).
        """


class IDurableEventSink(Interface):
    """
    An event sink that keeps events on disk across restarts (the Kafka sink's spool) and
    drops only when full, announcing the gap (``EVENTS_LOST``, docs/events.md).
    """

    def bind_state_dir(path):  # type: ignore[no-untyped-def]
        """
        Called in ``makeService`` (before the fork) with the node's state directory
        (``[node] state_dir``).

        :return: the directory the sink will keep its state in, inside ``path``, or None
            when it needs none there; if any sink returns one, the node creates ``path``
            for its user in the privileged start.
        """

    def take_losses():  # type: ignore[no-untyped-def]
        """
        Called on the reactor thread every second; must not block.

        :return: the events dropped since the last call, once the sink has room for an
            announcement: a list of (boot_id or None, first_seq, last_seq, count). The node
            emits one ``EVENTS_LOST`` per entry.
        """
