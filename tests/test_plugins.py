"""Plugin discovery: built-ins are found by name through ``twisted.plugin.getPlugins``,
unknown names, broken drop-ins and bad options are clear ``PluginError``s."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.plugin import getPlugins
from zope.interface.verify import verifyObject

import twisted.plugins
from jumping import plugin
from jumping.errors import PluginError
from jumping.interfaces import (
    IEventSink,
    IJumpingPlugin,
    IOwnershipBackend,
    IRateLimitPolicy,
    ITransportFactory,
)

BUILTINS = {
    ("udp", ITransportFactory),
    ("tcp", ITransportFactory),
    ("memory", IOwnershipBackend),
    ("token-bucket", IRateLimitPolicy),
    ("jsonl", IEventSink),
    ("syslog", IEventSink),
}
INTERFACES = [ITransportFactory, IOwnershipBackend, IRateLimitPolicy, IEventSink]


def test_every_builtin_is_found_by_name_through_getplugins() -> None:
    found = list(getPlugins(IJumpingPlugin, twisted.plugins))
    declared = {(p.name, p.provides) for p in found}
    assert BUILTINS <= declared, BUILTINS - declared
    for p in found:
        assert verifyObject(IJumpingPlugin, p)
        assert re.fullmatch(r"[a-z0-9_-]+", p.name), p.name
        assert p.description and "\n" not in p.description
    for name, iface in BUILTINS:
        assert plugin.find(iface, name).name == name
        assert name in plugin.available(iface)


@pytest.fixture
def collector() -> Iterator[socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    try:
        yield rx
    finally:
        rx.close()


@pytest.mark.parametrize(("name", "iface"), sorted(BUILTINS, key=lambda b: b[0]))
def test_every_builtin_loads_and_verifies(
    name: str, iface: Any, tmp_path: Path, collector: socket.socket
) -> None:
    options: dict[str, Any] = {
        "jsonl": {"path": str(tmp_path / "events.jsonl")},
        "syslog": {"address": f"127.0.0.1:{collector.getsockname()[1]}"},
    }.get(name, {})
    obj = plugin.load(iface, name, **options)
    try:
        assert verifyObject(iface, obj)
    finally:
        if hasattr(obj, "close") and iface in (IEventSink, IOwnershipBackend):
            obj.close()


@pytest.mark.parametrize("iface", INTERFACES, ids=lambda i: i.__name__)
def test_unknown_name_lists_the_installed_ones(iface: Any) -> None:
    with pytest.raises(PluginError) as info:
        plugin.load(iface, "no-such-plugin")
    msg = str(info.value)
    assert msg.startswith(f"unknown {plugin.human(iface)} plugin 'no-such-plugin'; installed: ")
    installed = msg.split("installed: ", 1)[1].split(", ")
    assert installed == plugin.available(iface) and installed


@pytest.mark.parametrize(
    ("iface", "name", "options", "named"),
    [
        (ITransportFactory, "udp", {"bogus": 1}, "bogus"),
        (ITransportFactory, "udp", {"max_paths": 0}, "max_paths"),
        (ITransportFactory, "udp", {"gso": "yes"}, "gso"),
        (ITransportFactory, "tcp", {"max_frame": 10}, "max_frame"),
        (ITransportFactory, "tcp", {"connect_timeout": 5}, "connect_timeout"),
        (IOwnershipBackend, "memory", {"max_sessions": 0}, "max_sessions"),
        (IOwnershipBackend, "memory", {"nodeid": "x"}, "nodeid"),
        (IRateLimitPolicy, "token-bucket", {"cooldown_ms": 0}, "cooldown_ms"),
        (IRateLimitPolicy, "token-bucket", {"cooldown": 5}, "cooldown"),
        (IEventSink, "jsonl", {"path": "/tmp/x.jsonl", "rotate_bytes": 1}, "rotate_bytes"),
        (IEventSink, "jsonl", {"path": "/tmp/x.jsonl", "keep_files": 1}, "keep_files"),
        (IEventSink, "syslog", {"facility": 99}, "facility"),
        (IEventSink, "syslog", {"address": "no-port-here"}, "address"),
    ],
)
def test_a_bad_option_is_a_plugin_error_naming_it(
    iface: Any, name: str, options: dict[str, Any], named: str
) -> None:
    if iface is ITransportFactory and name == "udp" and "gso" in options:
        import inspect

        from jumping.builtin.udp import UDPTransportFactory

        if "gso" not in inspect.signature(UDPTransportFactory).parameters:
            pytest.skip("this udp transport has no gso option")
    with pytest.raises(PluginError) as info:
        plugin.load(iface, name, **options)
    msg = str(info.value)
    assert msg.startswith(f"{plugin.human(iface)} plugin {name!r}: "), msg
    assert named in msg, msg


# ---------------------------------------------------------------- third-party drop-ins

DROP_IN = '''
from zope.interface import implementer

from jumping.interfaces import IEventSink, ITransportFactory
from jumping.plugin import PluginSpec


@implementer(ITransportFactory)
class HalfTransport:
    """Declares ITransportFactory but has no ``connect``."""

    kind = "udp"

    def listen(self, reactor, host, port, receiver):
        raise NotImplementedError


not_a_transport = PluginSpec("fake-dict", ITransportFactory, "collections:OrderedDict", "x")
half = PluginSpec("fake-half", ITransportFactory, "twisted.plugins.{module}:HalfTransport", "x")
missing = PluginSpec("fake-missing", IEventSink, "no_such_module_for_jumping:Sink", "x")
'''


@pytest.fixture
def drop_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Install drop-in modules in a temporary directory on ``twisted.plugins.__path__``."""
    directory = tmp_path / "plugins"
    directory.mkdir()
    monkeypatch.setattr(twisted.plugins, "__path__", [*twisted.plugins.__path__, str(directory)])
    modules: list[str] = []

    def install(source: str) -> str:
        module = f"jumping_test_dropin_{len(modules)}_{abs(hash(str(tmp_path))) % 10**8}"
        (directory / f"{module}.py").write_text(source.format(module=module))
        modules.append(module)
        return module

    try:
        yield install
    finally:
        for m in modules:
            sys.modules.pop(f"twisted.plugins.{m}", None)
            if hasattr(twisted.plugins, m):
                delattr(twisted.plugins, m)


def test_a_drop_in_is_found_and_listed(drop_in: Callable[[str], str]) -> None:
    drop_in(textwrap.dedent(DROP_IN))
    assert {"fake-dict", "fake-half", "udp", "tcp"} <= set(plugin.available(ITransportFactory))
    with pytest.raises(PluginError, match=r"installed: .*fake-dict"):
        plugin.load(ITransportFactory, "nope")


def test_an_object_not_providing_its_interface_is_refused(
    drop_in: Callable[[str], str],
) -> None:
    drop_in(textwrap.dedent(DROP_IN))
    with pytest.raises(
        PluginError, match=r"^transport plugin 'fake-dict' does not provide ITransportFactory: "
    ):
        plugin.load(ITransportFactory, "fake-dict")
    with pytest.raises(PluginError) as info:
        plugin.load(ITransportFactory, "fake-half")
    msg = str(info.value)
    assert msg.startswith("transport plugin 'fake-half' does not provide ITransportFactory")
    assert "connect" in msg, msg


def test_an_unimportable_factory_is_a_clear_error(drop_in: Callable[[str], str]) -> None:
    drop_in(textwrap.dedent(DROP_IN))
    with pytest.raises(
        PluginError,
        match=r"^event sink plugin 'fake-missing': cannot import no_such_module_for_jumping:Sink",
    ):
        plugin.load(IEventSink, "fake-missing")


def test_a_name_declared_twice_is_an_error(drop_in: Callable[[str], str]) -> None:
    drop_in(
        "from jumping.interfaces import ITransportFactory\n"
        "from jumping.plugin import PluginSpec\n"
        "udp_again = PluginSpec('udp', ITransportFactory, "
        "'jumping.builtin.udp:UDPTransportFactory', 'a second udp')\n"
    )
    with pytest.raises(PluginError, match=r"transport plugin 'udp' is declared more than once"):
        plugin.load(ITransportFactory, "udp")


def test_drop_ins_import_nothing_heavy() -> None:
    """Scanning the drop-ins must not import the plugins' code nor install a reactor."""
    code = (
        "import sys, twisted.plugins\n"
        "from twisted.plugin import getPlugins\n"
        "from jumping.interfaces import IJumpingPlugin\n"
        "names = sorted(p.name for p in getPlugins(IJumpingPlugin, twisted.plugins))\n"
        "heavy = sorted(m for m in sys.modules if m.startswith('jumping.builtin.')\n"
        "               or m in ('twisted.internet.reactor', 'jumping.core.ratelimit'))\n"
        "print(names, heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "'udp'" in out and out.rstrip().endswith("[]"), out
