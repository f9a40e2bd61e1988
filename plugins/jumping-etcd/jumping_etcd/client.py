"""
Blocking access to an etcd v3 cluster through its JSON gRPC gateway (``/v3/``), on top of
``etcd3gw``: endpoint parsing, fail-over between the cluster's members, and error mapping to
Jumping's exceptions. Everything here blocks; :mod:`jumping_etcd.backend` calls it from
threads, never from the reactor thread.
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any
from urllib.parse import urlsplit

from etcd3gw import exceptions as gw_errors
from etcd3gw.client import Etcd3Client

from jumping.errors import OwnershipUnavailable

API_PATH = "/v3/"  # etcd >= 3.4 serves the gateway here (3.3: /v3beta/, 3.2: /v3alpha/)


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(data: str) -> bytes:
    return base64.b64decode(data)


def parse_endpoints(value: Any) -> list[tuple[str, str, int]]:
    """
    ``'http://h:p,http://h2:p2'`` or a list of such URLs → ``[(scheme, host, port)]``.

    :raise ValueError: one line naming the bad endpoint.
    """
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ValueError(f"etcd: endpoints must be a non-empty list of URLs, got {value!r}")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"etcd: endpoint {item!r} is not a string")
        text = item.strip()
        try:
            u = urlsplit(text)
            port = u.port
        except ValueError:
            port, u = None, urlsplit("")
        if (
            u.scheme not in ("http", "https")
            or not u.hostname
            or port is None
            or u.path not in ("", "/")
        ):
            raise ValueError(
                f"etcd: endpoint {text!r} is not of the form http://host:port (or https://)"
            )
        out.append((u.scheme, u.hostname, port))
    return out


def url(ep: tuple[str, str, int]) -> str:
    return f"{ep[0]}://{ep[1]}:{ep[2]}"


class Unreachable(OwnershipUnavailable):
    """No endpoint answered (connection refused, timeout, no leader)."""


class Cluster:
    """
    The members' endpoints, one ``Etcd3Client`` per endpoint *per thread* (a
    ``requests.Session`` is not meant to be shared between threads), and the index of the
    member that answered last (tried first next time).
    """

    def __init__(self, endpoints: list[tuple[str, str, int]], timeout: float) -> None:
        self.endpoints = endpoints
        self.timeout = timeout
        self.preferred = 0
        self._local = threading.local()

    def client(self, i: int) -> Etcd3Client:
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        c = clients.get(i)
        if c is None:
            scheme, host, port = self.endpoints[i]
            c = clients[i] = Etcd3Client(
                host=host, port=port, protocol=scheme, timeout=self.timeout, api_path=API_PATH
            )
        return c

    def call(self, path: str, payload: dict[str, Any], timeout: float | None = None) -> Any:
        """
        POST ``payload`` to ``/v3/<path>`` on the preferred member, failing over to the
        others on connection errors, timeouts and 503 (no leader). Each member is tried once.

        :raise Unreachable: no member answered.
        :raise OwnershipUnavailable: a member answered with an error (one line).
        """
        n = len(self.endpoints)
        start = self.preferred
        errors = []
        for k in range(n):
            i = (start + k) % n
            try:
                result = self.call_on(i, path, payload, timeout)
            except Unreachable as e:
                errors.append(str(e))
                continue
            self.preferred = i
            return result
        raise Unreachable("etcd: no member reachable (" + "; ".join(errors) + ")")

    def call_on(
        self, i: int, path: str, payload: dict[str, Any], timeout: float | None = None
    ) -> Any:
        """POST to member ``i`` only (no fail-over): requests whose answers are compared
        must come from one member.

        :raise Unreachable: the member did not answer (its URL and why, one line).
        :raise OwnershipUnavailable: it answered with an error.
        """
        c = self.client(i)
        try:
            if timeout is not None:
                c.timeout = timeout
            return c.post(c.get_url(path), json=payload)
        except (gw_errors.ConnectionFailedError, gw_errors.ConnectionTimeoutError) as e:
            raise Unreachable(f"{url(self.endpoints[i])}: {short(e)}") from None
        except gw_errors.Etcd3Exception as e:
            raise OwnershipUnavailable(
                f"etcd: {url(self.endpoints[i])} refused {path}: {short(e)}"
            ) from None
        except ValueError as e:  # not JSON: not an etcd gateway
            raise OwnershipUnavailable(
                f"etcd: {url(self.endpoints[i])} does not speak the etcd v3 JSON API: {e}"
            ) from None
        finally:
            c.timeout = self.timeout


def short(e: BaseException) -> str:
    """One line out of an etcd3gw/requests exception."""
    detail = getattr(e, "detail_text", None)
    text = str(e)
    if detail:
        try:
            text = json.loads(detail).get("message") or text
        except (ValueError, AttributeError):
            text = f"{text} {detail}".strip()
    if "Connection refused" in text:
        text = "connection refused"
    elif "timed out" in text.lower():
        text = "timed out"
    return " ".join(text.split())[:200] or type(e).__name__
