"""
``jumpctl status``, ``sessions``, ``terminate`` and ``reload``: the client side of a
node's control socket (the protocol is in jumping/service/control.py and
docs/operations.md#control-socket). Plain blocking sockets: no reactor.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

from jumping.errors import JumpingError

TIMEOUT = 10.0
MAX_ANSWER = 64 * 1024 * 1024


def socket_path(a: argparse.Namespace) -> Path:
    """``--socket``, else ``[control] socket`` of ``--config``, else the only socket in
    /run/jumping."""
    if a.socket:
        return Path(a.socket)
    from jumping.config import CONTROL_DIR, load_config

    if a.config:
        cfg = load_config(a.config)
        assert cfg.control is not None
        return cfg.control.socket
    found = sorted(CONTROL_DIR.glob("*.sock")) if CONTROL_DIR.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise JumpingError(
            f"no control socket in {CONTROL_DIR} (is a node running? give --socket PATH or "
            "--config FILE)"
        )
    names = ", ".join(str(p) for p in found)
    raise JumpingError(f"several nodes run here ({names}): choose one with --socket or --config")


def request(path: Path, payload: dict[str, Any], timeout: float = TIMEOUT) -> Any:
    """Send one request, return its ``result``; every failure is a one-line JumpingError."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except FileNotFoundError:
            raise JumpingError(f"{path}: no such control socket (is the node running?)") from None
        except PermissionError:
            raise JumpingError(
                f"{path}: permission denied (run jumpctl as root or as the node's user)"
            ) from None
        except ConnectionRefusedError:
            raise JumpingError(f"{path}: the node is not running (stale control socket)") from None
        except OSError as e:
            if e.errno == errno.ENOTSOCK:
                raise JumpingError(f"{path}: not a control socket") from None
            raise JumpingError(f"{path}: cannot connect: {e.strerror}") from None
        buf = bytearray()
        try:
            s.sendall(json.dumps(payload).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            raise JumpingError(
                f"{path}: the node closed the connection without answering"
            ) from None
        while not buf.endswith(b"\n"):
            try:
                chunk = s.recv(1 << 16)
            except TimeoutError:
                raise JumpingError(f"{path}: no answer within {timeout:g} s") from None
            except ConnectionResetError:  # the node went away while the request was queued
                raise JumpingError(
                    f"{path}: the node closed the connection without answering"
                ) from None
            if not chunk:
                raise JumpingError(f"{path}: the node closed the connection without answering")
            buf += chunk
            if len(buf) > MAX_ANSWER:
                raise JumpingError(f"{path}: answer larger than {MAX_ANSWER} bytes")
    finally:
        s.close()
    try:
        answer = json.loads(buf)
    except ValueError:
        raise JumpingError(f"{path}: not a Jumping control socket (answer is not JSON)") from None
    if not answer.get("ok"):
        raise JumpingError(str(answer.get("error", "refused")))
    return answer.get("result")


def _ago(seconds: Any) -> str:
    if seconds is None:
        return "never"
    s = float(seconds)
    if s < 120:
        return f"{s:.1f} s ago"
    if s < 7200:
        return f"{s / 60:.1f} min ago"
    return f"{s / 3600:.1f} h ago"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def format_status(st: dict[str, Any]) -> str:
    lines = [
        f"node: {st['node_id']} ({st['role']}), jumping {st['version']}, "
        f"up {st['uptime_s'] if st['uptime_s'] is not None else '-'} s"
        + ("" if st["serving"] else " (not serving yet)"),
        f"policy: version {st['policy_version']}",
        "sessions: " + (", ".join(f"{k} {v}" for k, v in st["sessions"].items()) or "none"),
    ]
    if "ownership" in st:
        o = st["ownership"]
        health = "healthy" if o["healthy"] else "UNHEALTHY"
        lines.append(f"ownership: {o['backend']} {health}" + (", shared" if o["shared"] else ""))
        lines.append(f"peers: {st['peers']}")
    if "handshakes" in st:
        h = st["handshakes"]
        q = h["queue"]
        lines.append(
            f"handshakes: cookies {'REQUIRED' if h['cookies_required'] else 'not required'} "
            f"({h['cookie_mode']}: wasted load {h['wasted_load']:.3f} of a core, trigger "
            f"{h['load_fraction_trigger']}), load {h['load']:.3f}, cost {h['cost_s'] * 1e6:.0f} us"
        )
        lines.append(
            f"  queue: {q['depth']} of {q['limit']} waiting, served {q['served']}, "
            f"dropped {q['dropped']}"
        )
        g = h.get("gate")
        if g is not None:
            lines.append(
                f"  gate: {'in the read loop' if g['available'] else 'not built (core only)'}, "
                f"refused {g['refused']}, cookie part armed for {g['passes']} reads"
                + (f", {g['errors']} ERRORS" if g["errors"] else "")
            )
    for s in st["sinks"]:
        lines.append(
            f"event sink: {s['name']} {s.get('state', 'unknown')}: delivered {s['delivered']}, "
            f"dropped {s['dropped']}, queued {s['queue_depth']}"
        )
        if "spool_backlog" in s:
            lines.append(
                f"  spool: {s['spool_backlog']} event(s) waiting, oldest "
                f"{s['spool_oldest_age_s']:.1f} s, {_bytes(s['spool_bytes'])} of "
                f"{_bytes(s['spool_max_bytes'])}, dropped when full {s['spool_dropped']}"
            )
        if s.get("last_error"):
            when = s.get("last_error_at")
            at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when)) if when else "?"
            lines.append(f"  last error ({at}): {s['last_error']}")
    for lst in st["listeners"]:
        lines.append(f"listening: {lst['local']}")
    for p in st["paths"]:
        lines.append(f"path: {p['kind']} {p['local']} -> {p['remote']}")
    t = st["tun"]
    lines.append(f"tun: {t['name']} mtu {t['mtu']}, write errors {t['write_errors']}")
    if "dispatch" in st:
        lines.append(f"dispatch: {st['dispatch']}")
    if "drops" in st:  # a node of this version; the largest first
        drops = sorted(st["drops"].items(), key=lambda kv: (-kv[1], kv[0]))
        lines.append("drops: " + (", ".join(f"{k} {v}" for k, v in drops) or "none"))
    return "\n".join(lines)


def format_sessions(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no sessions"
    out = []
    for r in rows:
        path = r["path"]
        where = f"{path['kind']} {path['local']} -> {path['remote']}" if path else "none"
        out += [
            f"session: {r['session_id']}",
            f"  peer: {r['peer']}",
            f"  state: {r['state']} (state_version {r['state_version']})",
            f"  receiver index: {r['receiver_index']}",
            f"  path: {where}",
            f"  transfer: {_bytes(r['rx_bytes'])} received, {_bytes(r['tx_bytes'])} sent",
            f"  latest handshake: {_ago(r['last_handshake_s_ago'])}",
            f"  owner token: {r['owner_token']}",
        ]
        for c in r.get("candidates", []):
            mark = "*" if c["active"] else " "
            rtt = "-" if c["srtt_ms"] is None else f"{c['srtt_ms']:.1f} ms"
            out.append(
                f"  {mark} candidate {c['kind']} {c['remote']}: rtt {rtt}, "
                f"loss {c['loss'] * 100:.1f}%, score {c['score']:.1f}"
            )
        out.append("")
    return "\n".join(out).rstrip()


def run(a: argparse.Namespace) -> int:
    path = socket_path(a)
    cmd = a.command
    if cmd == "status":
        st = request(path, {"command": "status"})
        print(json.dumps(st, indent=2, sort_keys=True) if a.json else format_status(st))
    elif cmd == "sessions":
        rows = request(path, {"command": "sessions"})
        print(json.dumps(rows, indent=2, sort_keys=True) if a.json else format_sessions(rows))
    elif cmd == "terminate":
        r = request(path, {"command": "terminate", "session_id": a.session_id,
                           "reason": a.reason})  # fmt: skip
        print(f"session {r['session_id']} terminated ({r['reason']})")
    elif cmd == "reload":
        r = request(path, {"command": "reload"})
        changes = [f"{what} {', '.join(r[key])}" for what, key in
                   (("added", "peers_added"), ("removed", "peers_removed"),
                    ("changed", "peers_changed")) if r[key]]  # fmt: skip
        print(f"reloaded: policy version {r['policy_version']}; peers: "
              + ("; ".join(changes) or "unchanged"))  # fmt: skip
    else:  # pragma: no cover - argparse refuses it
        print(f"jumpctl: unknown command {cmd}", file=sys.stderr)
        return 2
    return 0


def add_commands(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--socket", help="the node's control socket ([control] socket)")
        g.add_argument("--config", help="the node's configuration file (to find its socket)")
        p.set_defaults(func=run)

    st = sub.add_parser("status", help="a running node: role, uptime, sessions, plugins")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    common(st)
    se = sub.add_parser("sessions", help="a running node's sessions, one block each")
    se.add_argument("--json", action="store_true", help="machine-readable output")
    common(se)
    te = sub.add_parser("terminate", help="end one session (OPERATOR_TERMINATED, peer told)")
    te.add_argument("session_id", help="hex session ID (jumpctl sessions)")
    te.add_argument("--reason", help="text recorded in the event (detail)")
    common(te)
    rl = sub.add_parser("reload", help="re-read [policy] and [[peers]] (the same as SIGHUP)")
    common(rl)
