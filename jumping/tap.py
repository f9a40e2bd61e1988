"""
``twistd jumping gateway --config FILE`` and ``twistd jumping client --config FILE``.

``makeService`` reads the configuration, the key files and builds the plugins, before
twistd forks: a problem there is one line on stderr and exit status 1. The TUN device and
the sockets are opened in ``privilegedStartService`` (after the fork, as root): a problem
there is also one line and exit status 1, reported by twistd's parent process when
daemonized. Then twistd drops to ``--uid/--gid`` or to ``[node] user``/``group``.
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
    # the process's own stderr: once twistd's logging runs, sys.stderr goes to the log
    err = sys.__stderr__ or sys.stderr
    err.write(f"jumping: error: {message}\n")
    err.flush()
    raise SystemExit(1)


class _StartError(Exception):
    """What twistd's parent prints when the daemon cannot start: it shows the exception's
    name and message in at most 100 bytes, so the name is short."""


_StartError.__module__ = "builtins"
_StartError.__qualname__ = _StartError.__name__ = "jumping"


class NodeRoot(service.MultiService):
    """The top service: a privileged start that fails is one line, not a traceback."""

    def __init__(self, daemon: bool) -> None:
        super().__init__()
        self.daemon = daemon

    def privilegedStartService(self) -> None:  # noqa: N802
        from jumping.service.node import StartupError

        try:
            super().privilegedStartService()
        except StartupError as e:
            if not self.daemon:
                fail(str(e))
            from twisted.logger import Logger

            Logger().critical("jumping: cannot start: {e}", e=str(e))
            raise _StartError(str(e)) from None


def _identity(options: Any, config: Any) -> tuple[int, int] | None:
    """The (uid, gid) twistd will switch to: ``--uid/--gid``, else ``[node] user``, which
    is handed to twistd (it switches between the privileged start and the start)."""
    twistd = getattr(options, "parent", None)
    if twistd is None:
        return config.run_as
    uid, gid = twistd.get("uid"), twistd.get("gid")
    if config.run_as is not None:
        if uid is not None and (uid, gid if gid is not None else config.run_as[1]) != config.run_as:
            user, group = config.run_as_names
            fail(f"{config.path}: [node] user {user!r} (group {group!r}) and twistd "
                 f"--uid/--gid {uid}/{gid} disagree; use one of them")  # fmt: skip
        twistd["uid"], twistd["gid"] = config.run_as
        return config.run_as
    if uid is None:
        return None
    if uid == 0:
        fail("twistd --uid 0 is root: choose an unprivileged account, or leave --uid out")
    if gid is None:
        import pwd

        gid = pwd.getpwuid(uid).pw_gid
    if gid == 0:
        fail("twistd --gid 0 (or the --uid account's primary group) is root's group")
    twistd["gid"] = gid
    return uid, gid


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
    node.run_as = _identity(options, config)
    try:
        node.build()
    except (StartupError, KeyFileError, PluginError) as e:
        fail(str(e))
    twistd = getattr(options, "parent", None)
    top = NodeRoot(daemon=not (twistd is not None and twistd.get("nodaemon")))
    node.setServiceParent(top)
    return top
