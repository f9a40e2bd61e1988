"""A gateway certificate per test session, and factories built through the plugin loader."""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from jumping import plugin, tls
from jumping.interfaces import ITransportFactory


@cache
def certificate() -> tuple[str, str, str]:
    """(certificate file, key file, pin) of a self-signed test certificate (one per run)."""
    d = Path(tempfile.mkdtemp(prefix="jumping-quic-test-"))
    crt, key, pin = tls.generate(d / "gw", ["gw.test", "127.0.0.1"])
    return str(crt), str(key), pin


def factory(**options: Any) -> Any:
    """A ``quic`` factory that can listen (test certificate) and connect (pinned to it)."""
    crt, key, pin = certificate()
    opts: dict[str, Any] = {"certificate_file": crt, "private_key_file": key, "pin_sha256": pin}
    opts.update(options)
    return plugin.load(
        ITransportFactory, "quic", **{k: v for k, v in opts.items() if v is not None}
    )
