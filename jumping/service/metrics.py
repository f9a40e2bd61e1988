"""
Prometheus metrics, served by twisted.web (``[metrics] listen = "127.0.0.1:9477"``).

Nothing is counted per packet for metrics: a custom collector reads the core's counters
and state when Prometheus scrapes. The only observation made as things happen is the
switch-latency and switch-outage histograms, fed from TRANSPORT_SWITCH events (rare by
construction).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from jumping.sinkwriter import sink_health

STATES = ("BIRTH", "ATTACHED", "VOLATILE", "DEGRADED", "RECOVERING")


class NodeCollector:
    def __init__(self, service: Any) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        svc = self.service
        core = svc.core
        if core is None:
            return
        node = svc.config.node_id
        g = GaugeMetricFamily("jumping_sessions", "Sessions by state", labels=["node", "state"])
        counts = core.state_counts()
        for st in STATES:
            g.add_metric([node, st], counts.get(st, 0))
        yield g
        t = CounterMetricFamily(
            "jumping_transitions", "State transitions by reason code", labels=["node", "reason"]
        )
        d = CounterMetricFamily(
            "jumping_drops", "Dropped packets by reason", labels=["node", "reason"]
        )
        h = CounterMetricFamily("jumping_handshakes", "Handshake messages", labels=["node", "kind"])
        for key, value in sorted(core.counters.items()):
            if key.startswith("transition:"):
                t.add_metric([node, key.split(":", 1)[1]], value)
            elif key.startswith("handshakes_"):
                h.add_metric([node, key[len("handshakes_") :]], value)
        for reason, value in sorted(core.drops.items()):
            d.add_metric([node, reason], value)
        yield t
        yield d
        yield h
        r = CounterMetricFamily("jumping_replay_rejections", "Packets rejected by the replay window",
                                labels=["node"])  # fmt: skip
        r.add_metric([node], core.drops.get("REPLAY", 0))
        yield r
        q = GaugeMetricFamily("jumping_event_sink_queue_depth", "Events queued per sink",
                              labels=["node", "sink"])  # fmt: skip
        sd = CounterMetricFamily("jumping_event_sink_dropped", "Events dropped per sink",
                                 labels=["node", "sink"])  # fmt: skip
        sv = CounterMetricFamily("jumping_event_sink_delivered", "Events delivered per sink",
                                 labels=["node", "sink"])  # fmt: skip
        hs = GaugeMetricFamily("jumping_event_sink_state",
                               "1 for the sink's health state (ok, degraded, failing)",
                               labels=["node", "sink", "state"])  # fmt: skip
        sb = GaugeMetricFamily("jumping_event_spool_bytes", "Bytes in the sink's disk spool",
                               labels=["node", "sink"])  # fmt: skip
        sn = GaugeMetricFamily("jumping_event_spool_backlog",
                               "Events in the sink's disk spool not yet acknowledged",
                               labels=["node", "sink"])  # fmt: skip
        sa = GaugeMetricFamily("jumping_event_spool_oldest_age_seconds",
                               "Age of the oldest event in the spool not yet acknowledged",
                               labels=["node", "sink"])  # fmt: skip
        for i, sink in enumerate(svc.sinks):  # IEventSink declares these
            name = f"{sink.name}{i}"
            q.add_metric([node, name], sink.queue_depth)
            sd.add_metric([node, name], sink.dropped)
            sv.add_metric([node, name], sink.delivered)
            health = sink_health(sink)
            for state in ("ok", "degraded", "failing"):
                hs.add_metric([node, name, state], 1.0 if health.get("state") == state else 0.0)
            if "spool_bytes" in health:
                sb.add_metric([node, name], health["spool_bytes"])
                sn.add_metric([node, name], health["spool_backlog"])
                sa.add_metric([node, name], health["spool_oldest_age_s"])
        yield q
        yield sd
        yield sv
        yield hs
        yield sb
        yield sn
        yield sa
        e = CounterMetricFamily("jumping_events", "Events emitted", labels=["node"])
        e.add_metric([node], svc.events.seq if svc.events else 0)
        yield e
        w = CounterMetricFamily("jumping_tun_write_errors", "Failed TUN writes", labels=["node"])
        w.add_metric([node], svc.tun_write_errors)
        yield w
        tk = CounterMetricFamily(
            "jumping_takeovers",
            "Sessions another gateway owned that a resume asked this one to take over, by "
            "outcome (taken_over, or the reason it was refused)",
            labels=["node", "outcome"],
        )
        tk.add_metric([node, "taken_over"], core.counters.get("sessions_adopted", 0))
        for key, value in sorted(core.counters.items()):
            if key.startswith("adopt_refused:"):
                tk.add_metric([node, key.split(":", 1)[1]], value)
        yield tk
        ca = CounterMetricFamily(
            "jumping_control_actions",
            "Operator actions (reload, terminate, status...) by action and result",
            labels=["node", "action", "result"],
        )
        for (action, result), value in sorted(svc.control_actions.items()):
            ca.add_metric([node, action, result], value)
        yield ca
        yield from control_plane_metrics(node, core, svc.listeners)
        if getattr(svc, "queue_handshakes", False):
            yield from handshake_queue_metrics(node, svc.handshakes)
            yield from gate_metrics(node, svc.dataplane.initiation_gate)


#: the control-plane limits of the policy, exported as gauges (docs/security.md)
LIMITS = (
    "handshake_load_fraction", "handshake_per_source_per_s", "handshake_per_source_burst",
    "handshake_source_table_size", "control_plane_per_s", "control_plane_burst",
    "path_validations_per_s", "path_validation_burst", "key_expiry_grace_s",
    "cookie_replies_per_s", "cookie_replies_burst", "cookie_replies_per_source_per_s",
    "cookie_replies_per_source_burst", "cookie_source_table_size", "handshake_queue_size",
    "handshake_turn_budget_ms",
)  # fmt: skip
#: listener counters of unauthenticated input (UDP and TCP transports), if they have them
LISTENER_COUNTERS = (
    "provisional_paths", "evicted", "refused", "refused_unauthenticated",
    "handshake_timeouts", "idle_timeouts", "yielded_reads", "kernel_drops",
)  # fmt: skip


def control_plane_metrics(node: str, core: Any, listeners: list[Any]) -> Iterator[Metric]:
    lim = GaugeMetricFamily("jumping_control_plane_limit", "Control-plane limits (policy)",
                            labels=["node", "name"])  # fmt: skip
    for name in LIMITS:
        lim.add_metric([node, name], float(getattr(core.policy, name)))
    yield lim
    load = getattr(core, "handshake_work", None)
    if load is not None:
        now = getattr(core, "_now", 0.0)
        g = GaugeMetricFamily("jumping_handshake_load", "Handshake work demanded, fraction of a core",
                              labels=["node"])  # fmt: skip
        g.add_metric([node], load.load(now))
        yield g
        w = GaugeMetricFamily("jumping_handshake_wasted_load",
                              "Handshake work that served no session, fraction of a core "
                              "(cookies are required above handshake_load_fraction)",
                              labels=["node"])  # fmt: skip
        wasted = getattr(core, "wasted_work", None)
        w.add_metric([node], wasted.load(now) if wasted is not None else 0.0)
        yield w
        u = GaugeMetricFamily("jumping_cookies_required", "1 while initiations must carry a cookie",
                              labels=["node"])  # fmt: skip
        u.add_metric([node], 1.0 if core.under_load_now(now) else 0.0)
        yield u
        c = GaugeMetricFamily("jumping_handshake_cost_seconds", "Measured cost of one handshake",
                              labels=["node"])  # fmt: skip
        c.add_metric([node], load.cost)
        yield c
        lim_t = GaugeMetricFamily("jumping_handshake_sources_tracked",
                                  "Source prefixes in the per-source handshake limiter",
                                  labels=["node"])  # fmt: skip
        lim_t.add_metric([node], len(core.source_limiter))
        yield lim_t
        ev = CounterMetricFamily("jumping_handshake_sources_evicted",
                                 "Source prefixes forgotten because the limiter table was full",
                                 labels=["node"])  # fmt: skip
        ev.add_metric([node], core.source_limiter.evicted)
        yield ev
        cr = CounterMetricFamily("jumping_cookie_replies",
                                 "Initiations without a valid mac2 under load: answered with a "
                                 "cookie reply, or dropped unanswered over a budget",
                                 labels=["node", "result"])  # fmt: skip
        cr.add_metric([node, "sent"], core.drops["COOKIE_REQUIRED"])
        cr.add_metric([node, "limited"], core.drops["COOKIE_REPLY_LIMITED"])
        yield cr
        ct = GaugeMetricFamily("jumping_cookie_sources_tracked",
                               "Source prefixes in the per-source cookie reply budget",
                               labels=["node"])  # fmt: skip
        ct.add_metric([node], len(core.cookie_source_limiter))
        yield ct
    lc = CounterMetricFamily(
        "jumping_listener_unauthenticated",
        "Listener counters of unauthenticated input",
        labels=["node", "listener", "counter"],
    )
    paths = GaugeMetricFamily("jumping_listener_paths", "Authenticated paths a listener keeps",
                              labels=["node", "listener"])  # fmt: skip
    for i, lst in enumerate(listeners):
        for name in LISTENER_COUNTERS:
            if isinstance(getattr(lst, name, None), int):
                lc.add_metric([node, f"{type(lst).__name__}{i}", name], getattr(lst, name))
        table = getattr(lst, "paths", None)
        if table is not None:
            paths.add_metric([node, f"{type(lst).__name__}{i}"], len(table))
    yield lc
    yield paths


def handshake_queue_metrics(node: str, queue: Any) -> Iterator[Metric]:
    """The gateway's handshake queue (jumping/service/handshakes.py)."""
    g = GaugeMetricFamily("jumping_handshake_queue_depth",
                          "Handshake messages waiting for their turn, now and at most",
                          labels=["node", "which"])  # fmt: skip
    g.add_metric([node, "now"], len(queue))
    g.add_metric([node, "max"], queue.high_water)
    yield g
    c = CounterMetricFamily("jumping_handshake_queue",
                            "Handshake messages queued, served, and dropped unread because "
                            "the queue was full (the oldest first)",
                            labels=["node", "result"])  # fmt: skip
    c.add_metric([node, "queued"], queue.queued)
    c.add_metric([node, "served"], queue.served)
    c.add_metric([node, "dropped"], queue.dropped)
    yield c
    t = CounterMetricFamily("jumping_handshake_queue_turns",
                            "Reactor turns that served the handshake queue; yielded: ended "
                            "on the time budget with messages still waiting",
                            labels=["node", "result"])  # fmt: skip
    t.add_metric([node, "all"], queue.turns)
    t.add_metric([node, "yielded"], queue.yielded)
    yield t


def gate_metrics(node: str, gate: Any) -> Iterator[Metric]:
    """The read-loop gate (jumping/service/gate.py): whether it is built, how often its
    cookie part was armed and what it refused (the core counts the same datagrams by drop
    reason)."""
    a = GaugeMetricFamily("jumping_initiation_gate_available",
                          "1 if the UDP read loop refuses what needs no session's keys "
                          "itself (malformed headers, wrong mac1, unknown receiver indexes, "
                          "replays, and cookie-less initiations while cookies are required): "
                          "the C gate is built",
                          labels=["node"])  # fmt: skip
    a.add_metric([node], 1 if gate.available else 0)
    yield a
    c = CounterMetricFamily("jumping_initiation_gate",
                            "UDP read passes the gate's cookie part was armed for, datagrams "
                            "the gate refused, and arming or folding that failed",
                            labels=["node", "what"])  # fmt: skip
    c.add_metric([node, "passes"], gate.passes)
    c.add_metric([node, "refused"], gate.refused)
    c.add_metric([node, "errors"], gate.errors)
    yield c


class Metrics:
    def __init__(self, service: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(service))  # type: ignore[arg-type]
        self.switch_latency = Histogram(
            "jumping_switch_latency_seconds",
            "Time from the decision to move to another transport until it carries the session",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0),
            registry=self.registry,
        )
        self.switch_outage = Histogram(
            "jumping_switch_outage_seconds",
            "Traffic outage a switch ended, as the user felt it: from the last authenticated "
            "packet on the old transport (or the first unanswered one after idle) until the "
            "new transport carries the session",
            buckets=(0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
            registry=self.registry,
        )

    def listen(self, reactor: Any, host: str, port: int) -> Any:
        from prometheus_client.twisted import MetricsResource
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        root = Resource()
        root.putChild(b"metrics", MetricsResource(registry=self.registry))
        return reactor.listenTCP(port, Site(root), interface=host)
