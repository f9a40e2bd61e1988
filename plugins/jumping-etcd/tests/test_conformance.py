"""The shared IOwnershipBackend conformance tests, against the real 3-member cluster."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from jumping import plugin
from jumping.interfaces import IOwnershipBackend
from jumping.testing.conformance import OwnershipBackendTests


class TestEtcdConformance(OwnershipBackendTests):
    @pytest.fixture(autouse=True)
    def _cluster(self, etcd_cluster: Any) -> None:
        self.endpoints = etcd_cluster.endpoints
        self.security = etcd_cluster.security

    def make_backends(self, n: int) -> list[Any]:
        run = secrets.token_hex(3)
        return [
            plugin.load(
                IOwnershipBackend,
                "etcd",
                node_id=f"gw{i}-{run}",
                endpoints=self.endpoints,
                **self.security,
            )
            for i in range(n)
        ]
