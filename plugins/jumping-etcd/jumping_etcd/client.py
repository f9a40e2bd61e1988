"""
Blocking access to an etcd v3 cluster through its JSON gRPC gateway (``/v3/``), on top of
``etcd3gw``: endpoint parsing, fail-over between the cluster's members, and error mapping to
Jumping's exceptions. Everything here blocks; :mod:`jumping_etcd.backend` calls it from
threads, never from the reactor thread.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import tempfile
import threading
from typing import Any
from urllib.parse import urlsplit

import requests
from etcd3gw import exceptions as gw_errors
from etcd3gw.client import Etcd3Client
from requests.adapters import HTTPAdapter

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


class _TLSAdapter(HTTPAdapter):
    """``requests`` transport for https:// members that verifies with our own SSLContext
    only: no CA bundle or certificate *path* from requests (``verify``, ``cert``,
    REQUESTS_CA_BUNDLE), which would be read again on each new connection and which
    urllib3 would add to the context's trust store."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def build_connection_pool_key_attributes(
        self, request: Any, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host, pool = super().build_connection_pool_key_attributes(request, True, None)
        for k in ("ca_certs", "ca_cert_dir", "cert_file", "key_file"):
            pool.pop(k, None)
        pool["cert_reqs"] = "CERT_REQUIRED"
        return host, pool

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = conn.ca_cert_dir = conn.cert_file = conn.key_file = None


class Security:
    """
    How the node proves itself to etcd and checks etcd: TLS (the CA that signed the members'
    certificates, optionally a client certificate and key for ``--client-cert-auth``) and
    etcd's password authentication (a user and its password; etcd answers with a token sent
    as ``Authorization`` on every request, renewed when etcd refuses it).

    etcd's JSON gateway cannot pass a client certificate's name on to etcd's authorisation
    (it calls the member's gRPC server on its own connection), so a user comes from the
    password, never from the certificate: docs in the plugin's README.
    """

    __slots__ = ("ca_cert", "cert", "key", "user", "password", "context")

    def __init__(
        self,
        ca_cert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        user: str | None = None,
        password: str | None = None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.ca_cert, self.cert, self.key = ca_cert, cert, key
        self.user, self.password = user, password
        #: CA and client certificate loaded once, at start (as root, before the node drops
        #: privileges): connections opened later read no file
        self.context = context

    @property
    def tls(self) -> bool:
        return bool(self.ca_cert or self.cert)

    @property
    def auth(self) -> bool:
        return self.user is not None


def make_security(
    endpoints: list[tuple[str, str, int]],
    ca_cert: Any = None,
    cert: Any = None,
    key: Any = None,
    user: Any = None,
    password_file: Any = None,
) -> Security:
    """
    The backend's TLS and authentication options, checked: files readable (the client key
    and the password file as secrets: not group/other readable, no symlink), pairs complete
    (``cert`` with ``key``, ``user`` with ``password_file``), TLS options only with
    ``https://`` endpoints and a password never over plain ``http://``.

    :raise ValueError: one line naming the option.
    """
    from jumping.errors import KeyFileError
    from jumping.keys import read_secret_file

    for name, v in (("ca_cert", ca_cert), ("cert", cert), ("key", key), ("user", user),
                    ("password_file", password_file)):  # fmt: skip
        if v is not None and (not isinstance(v, str) or not v):
            raise ValueError(f"etcd: {name} must be a non-empty string, got {v!r}")
    if (cert is None) != (key is None):
        raise ValueError("etcd: cert and key go together (the client certificate and its key)")
    if (user is None) != (password_file is None):
        raise ValueError("etcd: user and password_file go together")
    schemes = {ep[0] for ep in endpoints}
    if (ca_cert or cert) and schemes != {"https"}:
        raise ValueError("etcd: ca_cert/cert/key are TLS options: every endpoint must be https://")
    if user is not None and schemes != {"https"}:
        raise ValueError(
            "etcd: user/password_file over http:// would send the password in clear: "
            "use https:// endpoints"
        )
    for name, v in (("ca_cert", ca_cert), ("cert", cert)):
        if v is not None:
            try:
                with open(v, "rb") as f:
                    head = f.read(4096)
            except OSError as e:
                raise ValueError(f"etcd: {name} {v}: {e.strerror or e}") from None
            if b"-----BEGIN CERTIFICATE-----" not in head:
                raise ValueError(f"etcd: {name} {v} is not a PEM certificate")
    password = None
    context = None
    try:
        key_pem = None
        if key is not None:
            key_pem = read_secret_file(key, "etcd client key")
            if b"PRIVATE KEY-----" not in key_pem:
                raise ValueError(f"etcd: key {key} is not a PEM private key")
        if password_file is not None:
            password = read_secret_file(password_file, "etcd password file").decode().strip()
            if not password or "\n" in password:
                raise ValueError(f"etcd: password_file {password_file} must hold one line")
    except KeyFileError as e:
        raise ValueError(f"etcd: {e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"etcd: password_file {password_file} is not UTF-8 text") from None
    if schemes == {"https"}:
        context = _context(ca_cert, cert, key_pem)
    return Security(ca_cert, cert, key, user, password, context)


def _context(ca_cert: str | None, cert: str | None, key_pem: bytes | None) -> ssl.SSLContext:
    """A client SSLContext: the given CA (else the system's), TLS 1.2 or later, and the
    client certificate with its key (the key as read and checked by read_secret_file: it
    goes to OpenSSL through a private temporary file, removed at once, as ``ssl`` loads keys
    from files only)."""
    try:
        ctx = ssl.create_default_context(cafile=ca_cert)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"etcd: ca_cert {ca_cert}: {e}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key_pem is not None:
        fd, tmp = tempfile.mkstemp(prefix="jumping-etcd-key-")
        try:
            os.write(fd, key_pem)
            os.close(fd)
            ctx.load_cert_chain(cert, tmp)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"etcd: cert {cert} and its key do not load: {e}") from None
        finally:
            os.unlink(tmp)
    return ctx


def is_token_error(e: BaseException) -> bool:
    """etcd refused the request's token (expired, revoked, unknown to this member: simple
    tokens live on the member that issued them) or found none: authenticate again."""
    text = f"{e} {getattr(e, 'detail_text', '')}"
    return any(m in text for m in ("invalid auth token", "user name is empty",
                                   "ErrInvalidAuthToken"))  # fmt: skip


class Cluster:
    """
    The members' endpoints, one ``Etcd3Client`` per endpoint *per thread* (a
    ``requests.Session`` is not meant to be shared between threads), and the index of the
    member that answered last (tried first next time). With authentication, one token per
    member (etcd's simple tokens are valid only on the member that issued them), shared by
    the threads.
    """

    def __init__(
        self,
        endpoints: list[tuple[str, str, int]],
        timeout: float,
        security: Security | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.timeout = timeout
        self.security = security or Security()
        self.preferred = 0
        self._local = threading.local()
        self._tokens: dict[int, str] = {}
        self._token_lock = threading.Lock()
        #: tokens fetched (the first one per member, then renewals)
        self.authentications = 0

    def client(self, i: int) -> Etcd3Client:
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        c = clients.get(i)
        if c is None:
            scheme, host, port = self.endpoints[i]
            session = requests.Session()
            if self.security.context is not None:
                session.mount("https://", _TLSAdapter(self.security.context))
            c = clients[i] = Etcd3Client(
                host=host, port=port, protocol=scheme, timeout=self.timeout, api_path=API_PATH,
                session=session,
            )  # fmt: skip
        return c

    def headers(self, i: int) -> dict[str, str]:
        """The ``Authorization`` header for member ``i`` (a token fetched now if there is
        none yet), or nothing without authentication.

        :raise Unreachable: the member did not answer the authentication.
        :raise OwnershipUnavailable: it refused it (one line: wrong password, auth off).
        """
        if not self.security.auth:
            return {}
        with self._token_lock:
            token = self._tokens.get(i)
        if token is None:
            token = self._authenticate(i)
        return {"Authorization": token}

    def forget_token(self, i: int, token: str | None = None) -> None:
        """Drop member ``i``'s token (if it is still ``token``): the next request fetches a
        new one."""
        with self._token_lock:
            if token is None or self._tokens.get(i) == token:
                self._tokens.pop(i, None)

    def _authenticate(self, i: int) -> str:
        c = self.client(i)
        sec = self.security
        try:
            r = c.post(c.get_url("auth/authenticate"),
                       json={"name": sec.user, "password": sec.password})  # fmt: skip
        except (gw_errors.ConnectionFailedError, gw_errors.ConnectionTimeoutError) as e:
            raise Unreachable(f"{url(self.endpoints[i])}: {short(e)}") from None
        except gw_errors.Etcd3Exception as e:
            raise OwnershipUnavailable(
                f"etcd: {url(self.endpoints[i])} refused the login of {sec.user!r}: {short(e)}"
            ) from None
        except ValueError as e:
            raise OwnershipUnavailable(
                f"etcd: {url(self.endpoints[i])} does not speak the etcd v3 JSON API: {e}"
            ) from None
        token = r.get("token") if isinstance(r, dict) else None
        if not isinstance(token, str) or not token:
            raise OwnershipUnavailable(
                f"etcd: {url(self.endpoints[i])} answered the login of {sec.user!r} without "
                "a token (is authentication enabled there? `etcdctl auth enable`)"
            )
        with self._token_lock:
            self._tokens[i] = token
            self.authentications += 1
        return token

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
            headers = self.headers(i)
            try:
                return c.post(c.get_url(path), json=payload, headers=headers)
            except gw_errors.Etcd3Exception as e:
                if not (headers and is_token_error(e)):
                    raise
                # the token expired or the member forgot it (a restart): one new login
                self.forget_token(i, headers["Authorization"])
                return c.post(c.get_url(path), json=payload, headers=self.headers(i))
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
    tls = re.search(r"\[SSL: [A-Z_]+\] ([^'\"()]+)", text)
    if tls:  # "HTTPSConnectionPool(...): Max retries ... SSLError(...[SSL: X] why (_ssl.c"
        text = "TLS: " + tls.group(1).strip()
    elif "Connection refused" in text:
        text = "connection refused"
    elif "timed out" in text.lower():
        text = "timed out"
    return " ".join(text.split())[:200] or type(e).__name__
