"""The built-in ``memory`` ownership backend passes the shared IOwnershipBackend mixin."""

from __future__ import annotations

from typing import Any

from jumping import plugin
from jumping.builtin.memory import MemoryStore
from jumping.interfaces import IOwnershipBackend
from jumping.testing.conformance import OwnershipBackendTests


class TestMemoryOwnership(OwnershipBackendTests):
    def make_backends(self, n: int) -> list[Any]:
        store = MemoryStore()  # one store: a cluster inside this process
        return [
            plugin.load(IOwnershipBackend, "memory", node_id=f"node-{i}", store=store)
            for i in range(n)
        ]
