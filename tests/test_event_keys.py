"""Event keys: the chain key and the address key are derived from one node secret by HKDF
with distinct labels; hashed addresses follow docs/events.md (``h:`` + 16 hex, port
dropped, separate address key); ``address_privacy = "hash"`` needs a secret; the auditor
needs only the chain key."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jumping import cli, keys
from jumping.audit import audit_events, load_chain_key
from jumping.config import load_config
from jumping.core.outputs import Emit
from jumping.errors import ConfigError, KeyFileError
from jumping.service import node as node_module
from jumping.service.events import address_filter
from jumping.service.node import NodeService

TID = "udp:10.201.1.2:51820>198.51.100.7:40000#1"
TID6 = "udp:[2001:db8:5:6::1]:51820>[2001:db8:5:6::9]:40000#2"


class FakeTun:
    def __init__(self, *a: object, **k: object) -> None:
        self.fd = -1

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _no_tun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_module, "TunDevice", FakeTun)


def _config(tmp_path: Path, node_extra: str = "", events: str = "") -> Path:
    keys.write_keypair(tmp_path / "c.key")
    gw = keys.encode_key(keys.public_key(keys.generate_private_key()))
    conf = tmp_path / "c.toml"
    conf.write_text(
        f"""
[node]
role = "client"
node_id = "c1"
private_key = "c.key"
{node_extra}
[tun]
name = "jek0"
address = "10.99.0.2/24"
[gateway]
public_key = "{gw}"
[[gateway.endpoints]]
transport = "udp"
host = "127.0.0.1"
port = 9
{events}
"""
    )
    return conf


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _expected_hash(address_key: bytes, addr: str) -> str:
    packed = ipaddress.ip_address(addr).packed
    return "h:" + hashlib.blake2s(packed, key=address_key).hexdigest()[:16]


# --- configuration -------------------------------------------------------------------------
def test_hash_privacy_without_a_secret_is_refused(tmp_path: Path) -> None:
    conf = _config(tmp_path, events='[events]\naddress_privacy = "hash"\n')
    with pytest.raises(
        ConfigError, match=r'\[events\] address_privacy = "hash" needs \[node\] secret'
    ):
        load_config(conf)


def test_events_table_holds_privacy_and_the_sinks(tmp_path: Path) -> None:
    keys.write_secret(tmp_path / "node.secret")
    conf = _config(
        tmp_path, 'secret = "node.secret"',
        '[events]\naddress_privacy = "truncated"\n[[events.sinks]]\nsink = "jsonl"\npath = "ev.jsonl"\n',
    )  # fmt: skip
    cfg = load_config(conf)
    assert cfg.address_privacy == "truncated"
    assert cfg.secret == tmp_path / "node.secret"
    assert [(e.name, e.options["path"]) for e in cfg.events] == [
        ("jsonl", str(tmp_path / "ev.jsonl"))
    ]


def test_older_events_array_still_means_sinks_and_full_addresses(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, events='[[events]]\nsink = "jsonl"\npath = "e.jsonl"\n'))
    assert cfg.address_privacy == "full" and [e.name for e in cfg.events] == ["jsonl"]


@pytest.mark.parametrize(
    "line, moved",
    [('event_chain_key = "chain.key"', "secret"), ('address_privacy = "hash"', r"\[events\]")],
)
def test_keys_that_moved_say_where(tmp_path: Path, line: str, moved: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[node\] {line.split()[0]}: .*{moved}"):
        load_config(_config(tmp_path, line))


def test_bad_privacy_mode_and_unknown_events_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="address_privacy: must be full, truncated or hash"):
        load_config(_config(tmp_path, events='[events]\naddress_privacy = "salted"\n'))
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ConfigError, match=r"\[events\] unknown key\(s\) chain_key"):
        load_config(_config(other, events='[events]\nchain_key = "k"\n'))


def test_secret_files_are_checked_like_keys(tmp_path: Path) -> None:
    keys.write_secret(tmp_path / "node.secret")
    (tmp_path / "node.secret").chmod(0o644)
    with pytest.raises(KeyFileError, match="node secret has mode 0644"):
        keys.load_node_secret(tmp_path / "node.secret")
    short = tmp_path / "short.secret"
    short.write_text(keys.encode_key(b"x" * 16))
    short.chmod(0o600)
    with pytest.raises(KeyFileError, match="at least 32 bytes"):
        keys.load_node_secret(short)
    with pytest.raises(KeyFileError, match="already exists"):
        keys.write_secret(tmp_path / "node.secret")


# --- derivation and address format -----------------------------------------------------
def test_chain_and_address_keys_are_hkdf_with_distinct_labels(tmp_path: Path) -> None:
    keys.write_secret(tmp_path / "s")
    secret = keys.load_node_secret(tmp_path / "s")
    chain, address = keys.event_keys(tmp_path / "s")
    assert chain == _hkdf(secret, b"jumping/1 event chain key")
    assert address == _hkdf(secret, b"jumping/1 event address key")
    assert chain != address and secret not in (chain, address)


@pytest.mark.parametrize(
    "mode, text, shown",
    [
        ("full", TID, TID),
        ("truncated", TID, "udp:10.201.1.0/24>198.51.100.0/24#1"),
        ("truncated", TID6, "udp:2001:db8:5::/48>2001:db8:5::/48#2"),
        ("truncated", "203.0.113.77:40000", "203.0.113.0/24"),
        ("truncated", "2001:db8:5:6::9", "2001:db8:5::/48"),
        ("truncated", "[2001:db8:5:6::9]:40000", "2001:db8:5::/48"),
        ("truncated", "tcp:?", "tcp:?"),
        ("truncated", "udp:300.1.2.3:9#1", "udp:300.1.2.3:9#1"),
    ],
)
def test_full_and_truncated_forms(mode: str, text: str, shown: str) -> None:
    assert address_filter(mode)(text) == shown


def test_hash_form_drops_the_port_and_uses_the_address_key() -> None:
    key = bytes(range(32))
    hide = address_filter("hash", key)
    a, b = _expected_hash(key, "10.201.1.2"), _expected_hash(key, "198.51.100.7")
    assert hide(TID) == f"udp:{a}>{b}#1"
    assert hide("198.51.100.7:40000") == hide("198.51.100.7:1") == hide("198.51.100.7") == b
    v6 = _expected_hash(key, "2001:db8:5:6::9")
    assert hide("[2001:db8:5:6::9]:40000") == hide("2001:db8:5:6:0::9") == v6
    assert len(v6) == 2 + 16
    with pytest.raises(ValueError, match="address key"):
        address_filter("hash", None)


# --- the node, end to end: events hashed under the address key, audited with the chain key --
def _node_events(tmp_path: Path) -> tuple[list[dict[str, Any]], Path]:
    keys.write_secret(tmp_path / "node.secret")
    conf = _config(tmp_path, 'secret = "node.secret"', '[events]\naddress_privacy = "hash"\n')
    svc = NodeService(load_config(conf))
    svc.prepare()
    got: list[dict[str, Any]] = []
    try:
        assert svc.events is not None
        svc.events.sinks = [type("S", (), {"emit": staticmethod(got.append)})()]
        sid = "ab" * 16
        svc.events.emit(
            Emit("TRANSPORT_ATTACHED", sid, 0, None, {"transport_id": TID, "transport_kind": "udp"})
        )
        svc.events.emit(
            Emit(
                "SESSION_STATE_CHANGE",
                sid,
                1,
                "HANDSHAKE_OK",
                {"previous_state": "BIRTH", "new_state": "ATTACHED"},
            )
        )
        svc.events.emit(
            Emit(
                "TRANSPORT_ATTACHED",
                "cd" * 16,
                0,
                None,
                {"transport_id": TID, "transport_kind": "udp"},
            )
        )
    finally:
        svc._close_all()
    return got, conf


def test_node_hashes_addresses_under_the_address_key_not_the_chain_key(tmp_path: Path) -> None:
    events, _conf = _node_events(tmp_path)
    chain, address = keys.event_keys(tmp_path / "node.secret")
    assert address is not None
    tid = events[0]["transport_id"]
    assert (
        tid
        == f"udp:{_expected_hash(address, '10.201.1.2')}>{_expected_hash(address, '198.51.100.7')}#1"
    )
    # whoever holds the chain key (the auditor) cannot recompute it
    assert _expected_hash(chain, "198.51.100.7") not in tid


def test_the_auditor_needs_only_the_chain_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events, conf = _node_events(tmp_path)
    out = tmp_path / "auditor" / "chain.key"
    out.parent.mkdir(mode=0o700)
    assert cli.main(["chain-key", "--config", str(conf), "--out", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    chain = load_chain_key(str(out))
    assert chain == keys.event_keys(tmp_path / "node.secret")[0]
    report = audit_events(events, chain, partial=True)
    assert report.chain_verified and "CHAIN" not in report.by_check(), report.violations
    # altered in transit: caught with that key
    bad = [dict(e) for e in events]
    bad[1]["new_state"] = "CLOSED"
    assert "CHAIN" in audit_events(bad, chain, partial=True).by_check()
    # the address key does not verify the chain (they are distinct keys)
    address = keys.event_keys(tmp_path / "node.secret")[1]
    assert "CHAIN" in audit_events(events, address, partial=True).by_check()
    # and jumpctl hash-address finds a known address's value (needs the secret)
    capsys.readouterr()
    assert cli.main(["hash-address", "--config", str(conf), "198.51.100.7"]) == 0
    assert capsys.readouterr().out.split()[1] in events[0]["transport_id"]
