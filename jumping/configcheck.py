"""
``jumpctl check FILE`` and ``jumpctl show-config FILE``: the configuration as the node
would take it.

Both run what ``twistd jumping`` runs before it opens anything
(:func:`jumping.service.assemble.build_parts`: the file, the key files, every plugin found
by name among the installed ones, constructed with its options and verified against its
interface, the tunnel MTU fitted to the transports), so a file one accepts the other
accepts, and the error is the same line. ``show-config`` prints the result with secrets
redacted: plugin options whose name says they are secret (``password``, ``secret``,
``token``...) and the credentials of URLs (``https://user:pass@host``). Key material
never is in the configuration itself, only the paths of its files.
"""

from __future__ import annotations

import re
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from jumping.errors import JumpingError

REDACTED = "<redacted>"
#: option names holding a secret (not the path of a file holding one: ``*_file``, ``*_path``)
_SECRET_NAME = re.compile(
    r"(password|passwd|passphrase|secret|token|credential|api_?key|private_?key|psk|auth)",
    re.IGNORECASE,
)
_PATH_NAME = re.compile(r"(_file|_path|_dir|^path)$")
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def check(path: str) -> tuple[Any, Any]:
    """Validate ``path`` as the node does; return ``(config, public_key)``.

    :raise ConfigError, KeyFileError, PluginError, JumpingError: the one-line reason.
    """
    from jumping.config import load_config
    from jumping.keys import public_key
    from jumping.service.assemble import build_parts
    from jumping.service.mtu import MTUError

    cfg = load_config(path)
    try:
        parts = build_parts(cfg)
    except MTUError as e:
        raise JumpingError(f"{path}: {e}") from None
    parts.close()
    return cfg, public_key(parts.private_key)


def redact(value: Any, key: str = "") -> Any:
    """``value`` with every secret replaced by ``<redacted>`` (see the module docstring)."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        if key and _SECRET_NAME.search(key) and not _PATH_NAME.search(key) and value:
            return REDACTED
        return _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", value)
    if key and _SECRET_NAME.search(key) and not _PATH_NAME.search(key) and value is not None:
        return REDACTED
    return value


def jsonable(v: Any) -> Any:
    if is_dataclass(v) and not isinstance(v, type):
        return {k: jsonable(x) for k, x in asdict(v).items()}
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, bytes):
        import base64

        return base64.b64encode(v).decode()
    if isinstance(v, Path):
        return str(v)
    return v


def resolved(cfg: Any, public: bytes) -> dict[str, Any]:
    """The configuration as JSON-ready data, plugin options redacted."""
    from jumping.keys import encode_key

    out = jsonable(cfg)
    for section in ("listen", "events"):
        for entry in out.get(section) or []:
            entry["options"] = redact(entry.get("options", {}))
    for name in ("ownership", "rate_limit"):
        if out.get(name):
            out[name]["options"] = redact(out[name].get("options", {}))
    gateway = out.get("gateway")
    if gateway:
        for ep in gateway.get("endpoints") or []:
            ep["options"] = redact(ep.get("options", {}))
    out["public_key"] = encode_key(public)
    return out


def summary(cfg: Any) -> str:
    """One line: what the node will run."""
    places = cfg.listen if cfg.role == "gateway" else cfg.gateway.endpoints
    transports = ", ".join(f"{p.transport} {p.host}:{p.port}" for p in places)
    sinks = ", ".join(s.name for s in cfg.events) or "none"
    parts = [f"{cfg.role} {cfg.node_id}", f"transports {transports}", f"event sinks {sinks}",
             f"rate-limit {cfg.rate_limit.name}", f"policy {cfg.policy.version}"]  # fmt: skip
    if cfg.role == "gateway":
        parts[1:1] = [f"{len(cfg.peers)} peer(s)", f"ownership {cfg.ownership.name}"]
    return "; ".join(parts)
