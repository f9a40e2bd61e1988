"""
``twistd jumping gateway --config FILE`` and ``twistd jumping client --config FILE``.

Everything that can fail (config, keys, plugins, TUN, sockets) is done here, before the
reactor starts: a problem is one line on stderr and exit status 1, with nothing left
half-started.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application import service
from twisted.python import usage

from jumping.errors import ConfigError, KeyFileError, PluginError


class _RoleOptions(usage.Options):
    optParameters = [["config", "c", None, "Path to the node's configuration file (TOML)."]]

    def postOptions(self) -> None:  # noqa: N802
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")


class GatewayOptions(_RoleOptions):
    role = "gateway"


class ClientOptions(_RoleOptions):
    role = "client"


class Options(usage.Options):
    synopsis = "gateway|client --config FILE"
    subCommands = [
        ["gateway", None, GatewayOptions, "Run a Jumping gateway."],
        ["client", None, ClientOptions, "Run a Jumping client."],
    ]

    def postOptions(self) -> None:  # noqa: N802
        if self.subCommand is None:
            raise usage.UsageError("choose a role: gateway or client")


def fail(message: str) -> None:
    sys.stderr.write(f"jumping: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(1)


def makeService(options: Any) -> service.IService:  # noqa: N802
    from jumping.config import load_config
    from jumping.service.node import NodeService, StartupError

    role = options.subCommand
    path = options.subOptions["config"]
    try:
        config = load_config(path)
    except (ConfigError, OSError) as e:
        fail(str(e))
    if config.role != role:
        fail(f"{path}: [node] role is {config.role!r} but twistd was asked for {role!r}")
    node = NodeService(config)
    try:
        node.prepare()
    except (StartupError, KeyFileError, PluginError) as e:
        fail(str(e))
    top = service.MultiService()
    node.setServiceParent(top)
    return top
