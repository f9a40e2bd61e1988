"""
Find plugins by name with ``twisted.plugin.getPlugins`` and check them with ``verifyObject``.

A drop-in under ``twisted/plugins/`` declares :class:`PluginSpec` objects: a name, the
interface the built object provides, a one-line description and a lazy factory path, so
that scanning the drop-ins imports nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

from twisted.plugin import IPlugin, getPlugins
from zope.interface import Interface, implementer
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from jumping.errors import PluginError
from jumping.interfaces import IJumpingPlugin

HUMAN = {
    "ITransportFactory": "transport",
    "IOwnershipBackend": "ownership backend",
    "IRateLimitPolicy": "rate-limit policy",
    "IEventSink": "event sink",
}


def human(interface: type[Interface]) -> str:
    return HUMAN.get(interface.__name__, interface.__name__)


@implementer(IPlugin, IJumpingPlugin)
class PluginSpec:
    def __init__(self, name: str, provides: Any, factory: str, description: str) -> None:
        self.name = name
        self.provides = provides
        self.factory = factory
        self.description = description

    def build(self, **options: Any) -> Any:
        module, _, attr = self.factory.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise PluginError(
                f"{human(self.provides)} plugin {self.name!r}: cannot import {self.factory}: {e}"
            ) from None
        return cls(**options)

    def __repr__(self) -> str:
        return f"<PluginSpec {self.name} -> {self.factory}>"


def _all() -> list[Any]:
    import twisted.plugins

    return [p for p in getPlugins(IJumpingPlugin, twisted.plugins) if IJumpingPlugin.providedBy(p)]


def available(interface: Any) -> list[str]:
    return sorted({p.name for p in _all() if p.provides is interface})


def find(interface: Any, name: str) -> Any:
    matches = [p for p in _all() if p.provides is interface and p.name == name]
    if not matches:
        installed = ", ".join(available(interface)) or "none"
        raise PluginError(f"unknown {human(interface)} plugin {name!r}; installed: {installed}")
    if len(matches) > 1:
        where = ", ".join(type(m).__module__ + ":" + getattr(m, "factory", "?") for m in matches)
        raise PluginError(f"{human(interface)} plugin {name!r} is declared more than once: {where}")
    return matches[0]


def load(interface: Any, name: str, **options: Any) -> Any:
    spec = find(interface, name)
    try:
        obj = spec.build(**options)
    except PluginError:
        raise
    except (TypeError, ValueError) as e:
        raise PluginError(f"{human(interface)} plugin {name!r}: {e}") from None
    try:
        verifyObject(interface, obj)
    except Invalid as e:
        raise PluginError(
            f"{human(interface)} plugin {name!r} does not provide {interface.__name__}: {e}"
        ) from None
    return obj
