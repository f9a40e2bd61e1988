"""``jumpctl``: keys, configuration checks, plugins."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from jumping.errors import ConfigError, JumpingError


def _keygen(a: argparse.Namespace) -> int:
    from jumping.keys import encode_key, public_path, write_keypair

    pub = write_keypair(a.out)
    print(encode_key(pub))
    print(f"wrote {a.out} (private, mode 0600) and {public_path(a.out)}", file=sys.stderr)
    return 0


def _pubkey(a: argparse.Namespace) -> int:
    from jumping.keys import encode_key, load_private_key, public_key

    print(encode_key(public_key(load_private_key(a.path))))
    return 0


def _secret(a: argparse.Namespace) -> int:
    from jumping.keys import write_secret

    write_secret(a.out)
    print(f'wrote {a.out} (node secret, mode 0600): set [node] secret = "{a.out}"', file=sys.stderr)
    return 0


def _psk(a: argparse.Namespace) -> int:
    from jumping.keys import write_secret

    write_secret(a.out)
    print(
        f'wrote {a.out} (pre-shared key, mode 0600): psk = "{a.out}" in the client\'s '
        "[gateway] and in its [[peers]] entry on every gateway",
        file=sys.stderr,
    )
    return 0


def _node_secret(config: str) -> Any:
    from jumping.config import load_config

    cfg = load_config(config)
    if cfg.secret is None:
        raise JumpingError(f"{config}: [node] secret is not set (create one: jumpctl secret)")
    return cfg


def _chain_key(a: argparse.Namespace) -> int:
    """The node's event chain key (hex), for the auditor: it verifies the chain and reveals
    neither the node secret nor the address key."""
    from jumping.keys import event_keys

    chain, _address = event_keys(_node_secret(a.config).secret)
    if a.out is None:
        print(chain.hex())
        return 0
    import os

    try:
        fd = os.open(a.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise JumpingError(f"{a.out}: cannot create: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(chain.hex() + "\n")
    print(
        f"wrote {a.out} (chain key, mode 0600): jumpctl audit --chain-key {a.out}", file=sys.stderr
    )
    return 0


def _hash_address(a: argparse.Namespace) -> int:
    """What an address looks like in this node's events under address_privacy = "hash"
    (to find a known address's sessions in the SIEM); needs the node secret."""
    import ipaddress

    from jumping.keys import event_keys
    from jumping.service.events import address_filter

    _chain, address_key = event_keys(_node_secret(a.config).secret)
    hide = address_filter("hash", address_key)
    for text in a.address:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise JumpingError(f"hash-address: {text!r} is not an IP address") from None
        print(f"{text} {hide(text)}")
    return 0


def _tls_cert(a: argparse.Namespace) -> int:
    from jumping import tls

    try:
        crt, key, pin = tls.generate(a.out, a.name, a.days)
    except ValueError as e:
        raise JumpingError(f"tls-cert: {e}") from None
    print(pin)
    print(
        f'wrote {crt} and {key} (private, mode 0600); clients pin it with pin_sha256 = "{pin}"',
        file=sys.stderr,
    )
    return 0


def _tls_pin(a: argparse.Namespace) -> int:
    from jumping import tls

    print(tls.spki_pin(tls.load_certificates(a.path)[0]))
    return 0


def _show_config(a: argparse.Namespace) -> int:
    from jumping import configcheck

    cfg, public = configcheck.check(a.file)
    print(json.dumps(configcheck.resolved(cfg, public), indent=2, sort_keys=True))
    return 0


def _check(a: argparse.Namespace) -> int:
    from jumping import configcheck

    cfg, _public = configcheck.check(a.file)
    print(f"{a.file}: ok: {configcheck.summary(cfg)}")
    return 0


def _plugins(a: argparse.Namespace) -> int:
    from jumping import plugin
    from jumping.interfaces import (
        IEventSink,
        IOwnershipBackend,
        IRateLimitPolicy,
        ITransportFactory,
    )

    for iface in (ITransportFactory, IOwnershipBackend, IRateLimitPolicy, IEventSink):
        print(f"{plugin.human(iface)}:")
        for name in plugin.available(iface):
            spec = plugin.find(iface, name)
            print(f"  {name:14} {spec.description}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jumpctl", description="Jumping VPN control tool")
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser("keygen", help="create a private key file (0600) and its .pub")
    k.add_argument("--out", required=True, help="path of the private key, e.g. client.key")
    k.set_defaults(func=_keygen)
    pk = sub.add_parser("pubkey", help="print the public key of a private key file")
    pk.add_argument("path")
    pk.set_defaults(func=_pubkey)
    se = sub.add_parser(
        "secret",
        help="create a node secret file (0600): event chain and address keys derive from it",
    )
    se.add_argument("--out", required=True, help="path of the secret, e.g. node.secret")
    se.set_defaults(func=_secret)
    ps = sub.add_parser(
        "psk", help="create a pre-shared key file (0600) for one client and its gateway(s)"
    )
    ps.add_argument("--out", required=True, help="path, e.g. alice.psk (copy it to both ends)")
    ps.set_defaults(func=_psk)
    ck = sub.add_parser(
        "chain-key", help="print (or write, 0600) the event chain key derived from [node] secret"
    )
    ck.add_argument("--config", required=True, help="the node's configuration file")
    ck.add_argument("--out", help="write it to this new file (mode 0600) instead of printing it")
    ck.set_defaults(func=_chain_key)
    ha = sub.add_parser(
        "hash-address",
        help='show addresses as this node\'s events hash them (address_privacy = "hash")',
    )
    ha.add_argument("--config", required=True, help="the node's configuration file")
    ha.add_argument("address", nargs="+")
    ha.set_defaults(func=_hash_address)
    tc = sub.add_parser(
        "tls-cert", help="create a self-signed TLS certificate + key (0600) and print its pin"
    )
    tc.add_argument("--out", required=True, help="base path: writes OUT.crt and OUT.key")
    tc.add_argument(
        "--name", action="append", required=True,
        help="DNS name or IP address the certificate is for (repeatable; the first is its subject)",
    )  # fmt: skip
    tc.add_argument("--days", type=int, default=3650, help="validity (default 3650)")
    tc.set_defaults(func=_tls_cert)
    tp = sub.add_parser("tls-pin", help="print the SPKI SHA-256 pin of a PEM certificate")
    tp.add_argument("path")
    tp.set_defaults(func=_tls_pin)
    cc = sub.add_parser(
        "check", help="validate a config file, its key files and plugins as twistd does"
    )
    cc.add_argument("file")
    cc.set_defaults(func=_check)
    sc = sub.add_parser(
        "show-config",
        help="validate a config file as twistd does, print it resolved (secrets redacted)",
    )
    sc.add_argument("file")
    sc.set_defaults(func=_show_config)
    from jumping import ctl

    ctl.add_commands(sub)
    pl = sub.add_parser("plugins", help="list installed plugins")
    pl.set_defaults(func=_plugins)
    from jumping import audit

    au = sub.add_parser("audit", help="rebuild session timelines from events, check the invariants")
    audit.add_arguments(au)
    au.set_defaults(func=audit.run)
    ex = sub.add_parser(
        "export", help="convert event files to another schema (--ocsf: OCSF 1.5.0 JSON lines)"
    )
    ex.add_argument("files", nargs="+", metavar="FILE", help="JSON-lines event files ('-': stdin)")
    ex.add_argument("--ocsf", action="store_true", required=True, help="as OCSF 1.5.0 events")
    ex.add_argument("--out", "-o", default="-", help="output file (default: stdout)")
    ex.set_defaults(func=_export)
    return p


def _export(a: argparse.Namespace) -> int:
    """``jumpctl export --ocsf``: 0, or 2 with the first bad line's place and why."""
    from jumping import ocsf

    out = sys.stdout if a.out == "-" else open(a.out, "w", encoding="utf-8")  # noqa: SIM115
    try:
        n = ocsf.export(a.files, out)
    except ocsf.OcsfMappingError as e:
        print(f"jumpctl export: {e}", file=sys.stderr)
        return 2
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"jumpctl export: {n} event(s) as OCSF {ocsf.OCSF_VERSION}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    a = p.parse_args(argv)
    try:
        return int(a.func(a))
    except (JumpingError, ConfigError, OSError) as e:
        print(f"jumpctl: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
