"""
The etcd backend's TLS and authentication (docs/security.md, "The ownership store") against the
test cluster, which runs secure (conftest: etcd.sh ETCD_SECURE=1): clients over TLS with
client certificates, etcd authentication on, the user ``jumping`` allowed /jumping/ only.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from jumping_etcd.client import Cluster, make_security, parse_endpoints

from jumping import plugin
from jumping.errors import OwnershipUnavailable, PluginError
from jumping.interfaces import IOwnershipBackend


def _cluster(etcd_cluster: Any, **changes: Any) -> Cluster:
    eps = parse_endpoints(etcd_cluster.endpoints)
    return Cluster(eps, 2.0, make_security(eps, **{**etcd_cluster.security, **changes}))


def test_the_cluster_refuses_what_has_no_credentials(etcd_cluster: Any, tmp_path: Path) -> None:
    # the test cluster really is secure: without a token, without a client certificate,
    # or over plain http, nothing goes through
    eps = parse_endpoints(etcd_cluster.endpoints)
    sec = make_security(eps, ca_cert=etcd_cluster.security["ca_cert"],
                        cert=etcd_cluster.security["cert"], key=etcd_cluster.security["key"])  # fmt: skip
    with pytest.raises(OwnershipUnavailable, match="user name is empty"):
        Cluster(eps, 2.0, sec).call("kv/range", {"key": "L2p1bXBpbmcv"})
    no_cert = make_security(eps, ca_cert=etcd_cluster.security["ca_cert"])
    with pytest.raises(OwnershipUnavailable, match="no member reachable"):
        Cluster(eps, 2.0, no_cert).call("kv/range", {"key": "L2p1bXBpbmcv"})
    plain = [("http", h, p) for _s, h, p in eps]
    with pytest.raises(OwnershipUnavailable):
        Cluster(plain, 2.0).call("kv/range", {"key": "L2p1bXBpbmcv"})


def test_a_refused_token_is_renewed_once(etcd_cluster: Any) -> None:
    c = _cluster(etcd_cluster)
    c.call("kv/put", {"key": "L2p1bXBpbmcvc2VjL3g=", "value": "eA=="})  # /jumping/sec/x
    assert c.authentications == 1
    # what an expired token (etcd --auth-token-ttl) or a restarted member looks like
    c._tokens[c.preferred] = "expired.1"
    r = c.call("kv/range", {"key": "L2p1bXBpbmcvc2VjL3g="})
    assert r["count"] == "1"
    assert c.authentications == 2


def test_credentials_are_read_once_at_start(
    etcd_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as a node that dropped root after start-up: the files are gone, new connections
    # still verify the members and present the client certificate; and a CA bundle in the
    # environment (requests reads REQUESTS_CA_BUNDLE) neither replaces nor widens our CA
    files = _secrets(tmp_path, etcd_cluster)
    eps = parse_endpoints(etcd_cluster.endpoints)
    c = Cluster(eps, 2.0, make_security(eps, user="jumping", **files))
    shutil.rmtree(tmp_path / "sec")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/bundle.pem")
    for i in range(len(eps)):  # one new TLS connection per member
        assert "header" in c.call_on(i, "kv/range", {"key": "L2p1bXBpbmcv"})


def test_members_are_verified_against_the_configured_ca(etcd_cluster: Any) -> None:
    # the system's CAs did not sign the test members: without ca_cert, TLS fails
    eps = parse_endpoints(etcd_cluster.endpoints)
    sec = make_security(eps, cert=etcd_cluster.security["cert"], key=etcd_cluster.security["key"])
    with pytest.raises(OwnershipUnavailable, match="no member reachable") as info:
        Cluster(eps, 2.0, sec).call("kv/range", {"key": "L2p1bXBpbmcv"})
    assert "TLS: certificate verify failed" in str(info.value), str(info.value)


def test_wrong_password_is_one_line_error(etcd_cluster: Any, tmp_path: Path) -> None:
    bad = tmp_path / "pw"
    bad.write_text("not-the-password\n")
    bad.chmod(0o600)
    with pytest.raises(OwnershipUnavailable) as info:
        _cluster(etcd_cluster, password_file=str(bad)).call("kv/range", {"key": "Lw=="})
    msg = str(info.value)
    assert "\n" not in msg and "'jumping'" in msg and "authentication failed" in msg, msg


def test_the_role_confines_the_user_to_its_prefix(etcd_cluster: Any) -> None:
    with pytest.raises(OwnershipUnavailable, match="permission denied"):
        _cluster(etcd_cluster).call("kv/put", {"key": "L290aGVy", "value": "eA=="})  # /other


@pytest_twisted.ensureDeferred
async def test_backend_claims_over_tls_with_auth_and_outside_its_prefix_fails(
    etcd_cluster: Any, backends: Any
) -> None:
    b = await backends("sec-a")
    assert b.cluster.security.tls and b.cluster.security.auth
    sid = secrets.token_hex(16)
    rec = {"client_public_key": "ab" * 32, "state_version": 1, "owner": "sec-a"}
    assert await b.claim(sid, rec, None) > 0
    stored = etcd_cluster.etcdctl("get", f"/jumping/sessions/{sid}", "--print-value-only")
    assert '"sec-a"' in stored, stored
    # the role allows /jumping/ only: a node configured elsewhere does not start
    with pytest.raises(OwnershipUnavailable, match="cannot start.*permission denied"):
        await backends("sec-b", prefix="/elsewhere/")


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_fails_the_start(
    etcd_cluster: Any, backends: Any, tmp_path: Path
) -> None:
    # etcd grants leases without a token: the start must not look fine
    files = _secrets(tmp_path, etcd_cluster)
    Path(files["password_file"]).write_text("wrong\n")
    with pytest.raises(OwnershipUnavailable) as info:
        await backends("sec-c", password_file=files["password_file"])
    msg = str(info.value)
    assert "cannot start" in msg and "authentication failed" in msg and "\n" not in msg, msg


def _secrets(tmp_path: Path, etcd_cluster: Any) -> dict[str, str]:
    """Copies of the cluster's credentials in a private directory (mode changes allowed)."""
    d = tmp_path / "sec"
    d.mkdir(mode=0o700)
    out = {}
    for k in ("ca_cert", "cert", "key", "password_file"):
        p = d / Path(etcd_cluster.security[k]).name
        shutil.copy(etcd_cluster.security[k], p)
        p.chmod(0o600)
        out[k] = str(p)
    return out


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"cert": None}, "cert and key go together"),
        ({"password_file": None}, "user and password_file go together"),
        ({"endpoints": "http://127.0.0.1:23791"}, "every endpoint must be https"),
        (
            {"endpoints": "http://127.0.0.1:23791", "ca_cert": None, "cert": None, "key": None},
            "password in clear",
        ),
        ({"ca_cert": "/nonexistent/ca.pem"}, "No such file"),
        ({"ca_cert": "@key"}, "not a PEM certificate"),
        ({"key": "@ca_cert"}, "not a PEM private key"),
        ({"key": "chmod 644"}, "must be 0600 or stricter"),
        ({"password_file": "symlink"}, "symlink"),
        ({"password_file": "empty"}, "must hold one line"),
        ({"user": ""}, "user must be a non-empty string"),
    ],
)
def test_bad_security_options_are_one_line_errors(
    etcd_cluster: Any, tmp_path: Path, change: dict[str, Any], words: str
) -> None:
    files = _secrets(tmp_path, etcd_cluster)
    opts: dict[str, Any] = {"endpoints": etcd_cluster.endpoints, "user": "jumping", **files}
    for k, v in change.items():
        if v == "@key":
            v = files["key"]
        elif v == "@ca_cert":
            v = files["ca_cert"]
        elif v == "chmod 644":
            Path(files[k]).chmod(0o644)
            v = files[k]
        elif v == "symlink":
            link = tmp_path / "sec" / "link"
            os.symlink(files[k], link)
            v = str(link)
        elif v == "empty":
            Path(files[k]).write_text("\n")
            v = files[k]
        if v is None:
            opts.pop(k)
        else:
            opts[k] = v
    with pytest.raises(PluginError) as info:
        plugin.load(IOwnershipBackend, "etcd", node_id="gw", **opts)
    msg = str(info.value)
    assert "\n" not in msg and words in msg, msg
