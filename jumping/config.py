"""
The node configuration file (TOML; see docs/DESIGN.md), parsed into frozen dataclasses.

Every problem is a :class:`~jumping.errors.ConfigError` naming the file, the table and the
key: ``gw.toml: [tun] mtu: must be an integer in 576..9000, got 'abc'``. Paths are resolved
relative to the config file's directory.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jumping.core.policy import Policy, PolicyError
from jumping.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_PLUGIN = re.compile(r"^[a-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class TunConfig:
    name: str
    address: str
    mtu: int = 1420
    routes: tuple[str, ...] = ()
    #: TUN offloads (IFF_VNET_HDR): TSO super-packets in, coalesced TCP runs out
    offload: bool = True
    #: ``mtu`` was not set in the file: the node lowers it to what its smallest transport
    #: carries (docs/plugins.md#mtu); a value set in the file is kept, or refused if too big
    mtu_auto: bool = False


@dataclass(frozen=True)
class ListenConfig:
    transport: str
    host: str
    port: int
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointConfig:
    transport: str
    host: str
    port: int
    options: Mapping[str, Any] = field(default_factory=dict)
    bind: str | None = None


@dataclass(frozen=True)
class PeerConfig:
    public_key: bytes
    allowed_ips: tuple[str, ...]
    name: str = ""
    #: file holding the pre-shared key shared with this peer (both ends), or None
    psk: Path | None = None


@dataclass(frozen=True)
class GatewayConfig:
    public_key: bytes
    endpoints: tuple[EndpointConfig, ...]
    #: file holding the pre-shared key shared with the gateway, or None
    psk: Path | None = None


@dataclass(frozen=True)
class PluginConfig:
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


#: where a node's control socket is when ``[control] socket`` is not set
CONTROL_DIR = Path("/run/jumping")
#: the parent of a node's state directory when ``[node] state_dir`` is not set
STATE_DIR = Path("/var/lib/jumping")


@dataclass(frozen=True)
class ControlConfig:
    """``[control]``: the control socket ``jumpctl status/sessions/terminate/reload`` use."""

    #: a UNIX socket path; default ``/run/jumping/NODE_ID.sock``
    socket: Path
    #: 0o600 (the node's user and root) or 0o660 (also the node's group)
    mode: int = 0o600


@dataclass(frozen=True)
class NodeConfig:
    path: Path
    role: str
    node_id: str
    private_key: Path
    tun: TunConfig
    listen: tuple[ListenConfig, ...] = ()
    peers: tuple[PeerConfig, ...] = ()
    gateway: GatewayConfig | None = None
    ownership: PluginConfig = PluginConfig("memory")
    events: tuple[PluginConfig, ...] = ()
    policy: Policy = Policy()
    #: the node secret file: the event chain key and the address key are derived from it
    #: (:func:`jumping.keys.derive_key`); without it the chain is keyed with zeros
    secret: Path | None = None
    #: ``[events] address_privacy``: full, truncated or hash (needs ``secret``)
    address_privacy: str = "full"
    #: ``[node] user``/``group``, resolved: drop to this (uid, gid) after the privileged
    #: start (twistd's ``--uid/--gid`` do the same); None = keep the identity started with
    run_as: tuple[int, int] | None = None
    #: ``[node] user``/``group`` as written (for messages)
    run_as_names: tuple[str, str] | None = None
    #: capabilities kept after the drop (``[node] capabilities``)
    capabilities: tuple[str, ...] = ("CAP_NET_ADMIN",)
    metrics_listen: tuple[str, int] | None = None
    #: the IRateLimitPolicy plugin that limits transport switches per session
    rate_limit: PluginConfig = PluginConfig("token-bucket")
    #: the control socket (None only for configs built in code without one)
    control: ControlConfig | None = None
    #: ``[node] state_dir``: what the node keeps across restarts (the Kafka sink's spool);
    #: default ``/var/lib/jumping/NODE_ID``, created (0750, the node's user) when needed
    state_dir: Path | None = None


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent

    def fail(self, where: str, msg: str) -> ConfigError:
        sep = " " if where.startswith("[") else ": "
        return ConfigError(f"{self.path}: {where}{sep}{msg}")

    def table(
        self, data: Mapping[str, Any], key: str, where: str, required: bool = True
    ) -> dict[str, Any]:
        v = data.get(key)
        if v is None:
            if required:
                raise self.fail(where, f"missing table [{key}]")
            return {}
        if not isinstance(v, dict):
            raise self.fail(where, f"[{key}] must be a table")
        return dict(v)

    def tables(
        self, data: Mapping[str, Any], key: str, where: str | None = None
    ) -> list[dict[str, Any]]:
        v = data.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
            raise self.fail(where or f"[[{key}]]", "must be an array of tables")
        return [dict(x) for x in v]

    def unknown(self, d: Mapping[str, Any], allowed: set[str], where: str) -> None:
        extra = sorted(set(d) - allowed)
        if extra:
            raise self.fail(
                where, f"unknown key(s) {', '.join(extra)} (allowed: {', '.join(sorted(allowed))})"
            )

    def string(self, d: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
        v = d.get(key, default)
        if v is None:
            raise self.fail(where, f"{key}: required")
        if not isinstance(v, str) or not v:
            raise self.fail(where, f"{key}: must be a non-empty string, got {v!r}")
        return v

    def boolean(self, d: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        v = d.get(key, default)
        if not isinstance(v, bool):
            raise self.fail(where, f"{key}: must be true or false, got {v!r}")
        return v

    def integer(
        self,
        d: Mapping[str, Any],
        key: str,
        where: str,
        lo: int,
        hi: int,
        default: int | None = None,
    ) -> int:
        v = d.get(key, default)
        if v is None:
            raise self.fail(where, f"{key}: required")
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(where, f"{key}: must be an integer in {lo}..{hi}, got {v!r}")
        return v

    def key(self, d: Mapping[str, Any], k: str, where: str) -> bytes:
        text = self.string(d, k, where)
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise self.fail(where, f"{k}: not valid base64") from None
        if len(raw) != 32:
            raise self.fail(where, f"{k}: must decode to 32 bytes, got {len(raw)}")
        return raw

    def host(self, d: Mapping[str, Any], where: str) -> str:
        h = self.string(d, "host", where)
        try:
            ipaddress.ip_address(h)
        except ValueError:
            raise self.fail(where, f"host: must be an IP address, got {h!r}") from None
        return h

    def plugin_name(
        self, d: Mapping[str, Any], key: str, where: str, default: str | None = None
    ) -> str:
        n = self.string(d, key, where, default)
        if not _PLUGIN.match(n):
            raise self.fail(where, f"{key}: plugin names are [a-z0-9_-]+, got {n!r}")
        return n

    def path_of(self, d: Mapping[str, Any], key: str, where: str) -> Path:
        p = Path(self.string(d, key, where))
        return p if p.is_absolute() else (self.base / p)


_MOVED_NODE_KEYS = {
    "event_chain_key": "replaced by [node] secret (the chain key is derived from it; give "
    "the auditor `jumpctl chain-key --config FILE`)",
    "address_privacy": "moved to the [events] table: [events] address_privacy = ...",
}


def _events_table(r: _Reader, data: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]], str]:
    """``[events]`` (address_privacy + ``[[events.sinks]]``) or the older ``[[events]]``
    array of sink tables (TOML allows one of the two): (privacy, sink tables, where)."""
    ev = data.get("events")
    if ev is None or isinstance(ev, list):
        return "full", r.tables(data, "events"), "[[events]]"
    if not isinstance(ev, dict):
        raise r.fail("[events]", "must be a table (or [[events]] an array of sink tables)")
    r.unknown(ev, {"address_privacy", "sinks"}, "[events]")
    privacy = r.string(ev, "address_privacy", "[events]", "full")
    if privacy not in ("full", "truncated", "hash"):
        raise r.fail(
            "[events]", f"address_privacy: must be full, truncated or hash, got {privacy!r}"
        )
    return privacy, r.tables(ev, "sinks", "[[events.sinks]]"), "[[events.sinks]]"


def _network(r: _Reader, value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise r.fail(where, f"{key}: {value!r} is not a string")
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise r.fail(where, f"{key}: {value!r} is not an IP prefix") from None


def _plugin_options(r: _Reader, d: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A transport's ``options`` table; a string under a key ending in ``_file`` is a path
    and resolved relative to the config file, like every other path of the file."""
    opts = d.get("options", {})
    if not isinstance(opts, dict):
        raise r.fail(where, "options: must be a table")
    out = dict(opts)
    for k, v in opts.items():
        if k.endswith("_file") and isinstance(v, str) and v and not Path(v).is_absolute():
            out[k] = str(r.base / v)
    return out


def _first_overlap(
    nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> tuple[int, int] | None:
    """The first prefix (in file order) that overlaps an earlier one, and the first earlier one
    it overlaps, as indexes into ``nets``; None if no two overlap. Prefixes overlap only by
    containment, so one sweep in address order, with a stack of the prefixes that contain the
    current one, finds every overlapping pair: O(n log n), where testing each prefix against
    every earlier one took minutes for 10 000 peers."""
    order = sorted(
        range(len(nets)),
        key=lambda k: (nets[k].version, int(nets[k].network_address), nets[k].prefixlen),
    )
    best: tuple[int, int] | None = None
    stack: list[int] = []
    for k in order:
        net = nets[k]
        start = int(net.network_address)
        while stack and (
            nets[stack[-1]].version != net.version or int(nets[stack[-1]].broadcast_address) < start
        ):
            stack.pop()
        for c in stack:  # each contains ``net``: a pair (earlier, later) in file order
            pair = (max(c, k), min(c, k))
            if best is None or pair < best:
                best = pair
        stack.append(k)
    return best


def load_policy(config_path: str | Path) -> Policy:
    """Only the policy of a config file (SIGHUP reload): ConfigError if anything is wrong."""
    return load_config(config_path).policy


def load_config(path: str | Path) -> NodeConfig:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    return parse_config(data, p)


def parse_config(data: Mapping[str, Any], path: Path) -> NodeConfig:
    r = _Reader(path)
    r.unknown(
        data,
        {
            "node",
            "tun",
            "listen",
            "peers",
            "gateway",
            "ownership",
            "events",
            "policy",
            "metrics",
            "rate_limit",
            "control",
        },
        "top level",
    )
    node = r.table(data, "node", "top level")
    for moved, hint in _MOVED_NODE_KEYS.items():
        if moved in node:
            raise r.fail("[node]", f"{moved}: {hint}")
    r.unknown(
        node,
        {"role", "node_id", "private_key", "secret", "user", "group", "capabilities", "state_dir"},
        "[node]",
    )  # fmt: skip
    role = r.string(node, "role", "[node]")
    if role not in ("gateway", "client"):
        raise r.fail("[node]", f"role: must be 'gateway' or 'client', got {role!r}")
    node_id = r.string(node, "node_id", "[node]")
    if not _NAME.match(node_id):
        raise r.fail("[node]", f"node_id: must match [A-Za-z0-9_.-]{{1,64}}, got {node_id!r}")
    private_key = r.path_of(node, "private_key", "[node]")
    secret = r.path_of(node, "secret", "[node]") if "secret" in node else None
    run_as, run_as_names = _run_as(r, node)
    caps = node.get("capabilities", ["CAP_NET_ADMIN"])
    from jumping.service.privileges import KNOWN

    if not isinstance(caps, list) or not all(isinstance(c, str) and c in KNOWN for c in caps):
        raise r.fail(
            "[node]", f"capabilities: must be a list of {', '.join(sorted(KNOWN))}, got {caps!r}"
        )

    t = r.table(data, "tun", "top level")
    r.unknown(t, {"name", "address", "mtu", "routes", "offload"}, "[tun]")
    name = r.string(t, "name", "[tun]")
    if len(name) > 15 or not re.match(r"^[A-Za-z0-9_.-]+$", name):
        raise r.fail("[tun]", f"name: at most 15 characters [A-Za-z0-9_.-], got {name!r}")
    address = r.string(t, "address", "[tun]")
    try:
        ipaddress.ip_interface(address)
        if "/" not in address:
            raise ValueError
    except ValueError:
        raise r.fail("[tun]", f"address: must be ADDRESS/PREFIX, got {address!r}") from None
    routes = t.get("routes", [])
    if not isinstance(routes, list):
        raise r.fail("[tun]", "routes: must be a list of prefixes")
    tun = TunConfig(
        name, address, r.integer(t, "mtu", "[tun]", 576, 9000, 1420),
        tuple(_network(r, x, "[tun]", "routes") for x in routes),
        r.boolean(t, "offload", "[tun]", True), "mtu" not in t,
    )  # fmt: skip

    listen: list[ListenConfig] = []
    for i, lt in enumerate(r.tables(data, "listen")):
        where = f"[[listen]] #{i + 1}"
        r.unknown(lt, {"transport", "host", "port", "options"}, where)
        opts = _plugin_options(r, lt, where)
        listen.append(ListenConfig(
            r.plugin_name(lt, "transport", where, "udp"), r.host(lt, where),
            r.integer(lt, "port", where, 0, 65535), opts,
        ))  # fmt: skip
    peers: list[PeerConfig] = []
    seen: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]] = []
    for i, pt in enumerate(r.tables(data, "peers")):
        where = f"[[peers]] #{i + 1}"
        r.unknown(pt, {"public_key", "allowed_ips", "name", "psk"}, where)
        ips = pt.get("allowed_ips")
        if not isinstance(ips, list) or not ips:
            raise r.fail(where, "allowed_ips: must be a non-empty list of prefixes")
        nets = tuple(_network(r, x, where, "allowed_ips") for x in ips)
        seen.extend((ipaddress.ip_network(n), i) for n in nets)
        psk = r.path_of(pt, "psk", where) if "psk" in pt else None
        peers.append(PeerConfig(r.key(pt, "public_key", where), nets, str(pt.get("name", "")), psk))
    clash = _first_overlap([net for net, _i in seen])
    if clash is not None:
        (net, i), (other, j) = seen[clash[0]], seen[clash[1]]
        raise r.fail(
            f"[[peers]] #{i + 1}", f"allowed_ips: {net} overlaps {other} of [[peers]] #{j + 1}"
        )
    gateway = None
    if "gateway" in data:
        g = r.table(data, "gateway", "top level")
        r.unknown(g, {"public_key", "endpoints", "psk"}, "[gateway]")
        eps: list[EndpointConfig] = []
        for i, et in enumerate(r.tables(g, "endpoints")):
            where = f"[[gateway.endpoints]] #{i + 1}"
            r.unknown(et, {"transport", "host", "port", "options", "bind"}, where)
            bind = None
            if "bind" in et:
                bind = r.string(et, "bind", where)
                try:
                    ipaddress.ip_address(bind)
                except ValueError:
                    raise r.fail(where, f"bind: must be a local IP address, got {bind!r}") from None
            opts = _plugin_options(r, et, where)
            eps.append(EndpointConfig(
                r.plugin_name(et, "transport", where, "udp"), r.host(et, where),
                r.integer(et, "port", where, 1, 65535), opts, bind,
            ))  # fmt: skip
        gpsk = r.path_of(g, "psk", "[gateway]") if "psk" in g else None
        gateway = GatewayConfig(r.key(g, "public_key", "[gateway]"), tuple(eps), gpsk)
    if role == "gateway":
        if not listen:
            raise r.fail("top level", "a gateway needs at least one [[listen]]")
        if not peers:
            raise r.fail("top level", "a gateway needs at least one [[peers]]")
    else:
        if gateway is None or not gateway.endpoints:
            raise r.fail(
                "top level", "a client needs [gateway] with at least one [[gateway.endpoints]]"
            )
    own = r.table(data, "ownership", "top level", required=False)
    own_name = r.plugin_name(own, "backend", "[ownership]", "memory")
    ownership = PluginConfig(own_name, {k: v for k, v in own.items() if k != "backend"})
    rl = r.table(data, "rate_limit", "top level", required=False)
    rl_name = r.plugin_name(rl, "policy", "[rate_limit]", "token-bucket")
    rate_limit = PluginConfig(rl_name, {k: v for k, v in rl.items() if k != "policy"})
    events: list[PluginConfig] = []
    privacy, sink_tables, sinks_where = _events_table(r, data)
    if privacy == "hash" and secret is None:
        raise r.fail(
            "[events]",
            'address_privacy = "hash" needs [node] secret: the address key is derived from '
            "it (create one: jumpctl secret --out node.secret)",
        )
    for i, et in enumerate(sink_tables):
        where = f"{sinks_where} #{i + 1}"
        sink = r.plugin_name(et, "sink", where)
        opts = {k: v for k, v in et.items() if k != "sink"}
        for key in ("path", "spool_dir"):  # a file or directory, relative to this file
            if key in opts and isinstance(opts[key], str) and not Path(opts[key]).is_absolute():
                opts[key] = str(r.base / opts[key])
        events.append(PluginConfig(sink, opts))
    met = r.table(data, "metrics", "top level", required=False)
    r.unknown(met, {"listen"}, "[metrics]")
    metrics_listen = None
    if "listen" in met:
        text = r.string(met, "listen", "[metrics]")
        host, _, port = text.rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))
            metrics_listen = (host.strip("[]"), int(port))
            if not 0 < metrics_listen[1] < 65536:
                raise ValueError
        except ValueError:
            raise r.fail("[metrics]", f"listen: must be HOST:PORT, got {text!r}") from None
    pol = r.table(data, "policy", "top level", required=False)
    if "file" in pol:
        if len(pol) != 1:
            raise r.fail("[policy]", "use either file = ... or inline settings, not both")
        ppath = r.path_of(pol, "file", "[policy]")
        try:
            pol = tomllib.loads(ppath.read_text())
        except OSError as e:
            raise r.fail("[policy]", f"file: cannot read {ppath}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise r.fail("[policy]", f"file: {ppath} is not valid TOML: {e}") from None
    try:
        policy = Policy.from_mapping(pol)
    except PolicyError as e:
        raise r.fail("[policy]", str(e)) from None
    ct = r.table(data, "control", "top level", required=False)
    r.unknown(ct, {"socket", "mode"}, "[control]")
    csock = (
        r.path_of(ct, "socket", "[control]") if "socket" in ct else CONTROL_DIR / f"{node_id}.sock"
    )
    cmode = r.string(ct, "mode", "[control]", "0600")
    if cmode not in ("0600", "0660"):
        raise r.fail(
            "[control]", f'mode: must be "0600" (owner only) or "0660" (and group), got {cmode!r}'
        )
    if len(bytes(csock)) > 107:
        raise r.fail(
            "[control]", f"socket: a UNIX socket path is at most 107 bytes, got {len(bytes(csock))}"
        )
    control = ControlConfig(csock, int(cmode, 8))
    state_dir = (
        r.path_of(node, "state_dir", "[node]") if "state_dir" in node else STATE_DIR / node_id
    )
    return NodeConfig(
        path, role, node_id, private_key, tun, tuple(listen), tuple(peers), gateway,
        ownership, tuple(events), policy, secret, privacy, run_as, run_as_names,
        tuple(dict.fromkeys(caps)), metrics_listen, rate_limit, control, state_dir,
    )  # fmt: skip


def _run_as(r: _Reader, node: Mapping[str, Any]) -> tuple[tuple[int, int] | None, Any]:
    """``[node] user``/``group`` resolved on this host: never uid or gid 0."""
    import grp
    import pwd

    if "user" not in node:
        if "group" in node:
            raise r.fail("[node]", "group: needs user (the account to run as)")
        return None, None
    user = r.string(node, "user", "[node]")
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise r.fail("[node]", f"user: no such user {user!r} on this host") from None
    if pw.pw_uid == 0:
        raise r.fail("[node]", f"user: {user!r} is root (uid 0); choose an unprivileged account")
    if "group" in node:
        group = r.string(node, "group", "[node]")
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise r.fail("[node]", f"group: no such group {group!r} on this host") from None
    else:  # the user's primary group
        gid = pw.pw_gid
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
    if gid == 0:
        raise r.fail("[node]", f"group: {group!r} is gid 0; choose an unprivileged group")
    return (pw.pw_uid, gid), (user, group)
