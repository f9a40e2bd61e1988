"""Jumping's built-in plugins: declarations only (the code is imported when used)."""

from jumping.interfaces import IEventSink, IOwnershipBackend, IRateLimitPolicy, ITransportFactory
from jumping.plugin import PluginSpec

udp = PluginSpec(
    "udp",
    ITransportFactory,
    "jumping.builtin.udp:UDPTransportFactory",
    "UDP datagrams, one socket per gateway listener, one per client path",
)
tcp = PluginSpec(
    "tcp",
    ITransportFactory,
    "jumping.builtin.tcp:TCPTransportFactory",
    "TCP with 2-byte length framing, one connection per path",
)
memory = PluginSpec(
    "memory",
    IOwnershipBackend,
    "jumping.builtin.memory:MemoryOwnership",
    "single-node session ownership in memory (the default)",
)
jsonl = PluginSpec(
    "jsonl",
    IEventSink,
    "jumping.builtin.jsonl:JSONLinesSink",
    "events as JSON lines in a size-rotated file",
)
token_bucket = PluginSpec(
    "token-bucket",
    IRateLimitPolicy,
    "jumping.core.ratelimit:SwitchLimiter",
    "per-key switch cap per minute plus cooldown",
)
syslog = PluginSpec(
    "syslog",
    IEventSink,
    "jumping.builtin.syslog:SyslogSink",
    "RFC 5424 syslog (or CEF) over UDP or a Unix socket, for classic SIEMs",
)
