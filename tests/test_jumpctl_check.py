"""``jumpctl check`` and ``jumpctl show-config`` accept and refuse exactly what twistd does
(the same code builds the plugins), with the same one-line reason; ``show-config`` never
prints a secret."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from nodes import node_env, twistd

from jumping import keys
from jumping.cli import main

GATEWAY = """
[node]
role = "gateway"
node_id = "g1"
private_key = "g.key"
[tun]
name = "jchk0"
address = "10.97.0.1/24"
[[listen]]
transport = "{transport}"
host = "127.0.0.1"
port = 0
[[peers]]
public_key = "{peer}"
allowed_ips = ["10.97.0.2/32"]
[ownership]
backend = "{backend}"
[[events]]
sink = "{sink}"
path = "events.jsonl"
{extra}
"""


def _write(tmp_path: Path, transport: str = "udp", backend: str = "memory",
           sink: str = "jsonl", extra: str = "") -> Path:  # fmt: skip
    if not (tmp_path / "g.key").exists():
        keys.write_keypair(tmp_path / "g.key")
    peer = keys.encode_key(keys.public_key(keys.generate_private_key()))
    conf = tmp_path / "g.toml"
    conf.write_text(GATEWAY.format(transport=transport, backend=backend, sink=sink, peer=peer,
                                   extra=extra))  # fmt: skip
    return conf


def _twistd_error(conf: Path) -> str:
    """What twistd says about ``conf`` (it fails before opening anything)."""
    r = subprocess.run(
        [twistd(), "--nodaemon", "--pidfile=", "jumping", "gateway", "--config", str(conf)],
        capture_output=True, text=True, timeout=60, env=node_env(), cwd=conf.parent,
    )  # fmt: skip
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.startswith("jumping: error: ")]
    assert len(lines) == 1, r.stderr
    return lines[0].removeprefix("jumping: error: ")


@pytest.mark.parametrize(
    ("kind", "field", "name", "message"),
    [
        ("transport", "transport", "quick", "unknown transport plugin 'quick'; installed: "),
        ("sink", "sink", "jsnol", "unknown event sink plugin 'jsnol'; installed: "),
        ("backend", "backend", "etcdx", "unknown ownership backend plugin 'etcdx'; installed: "),
    ],
)
@pytest.mark.parametrize("command", ["check", "show-config"])
def test_an_unknown_plugin_is_refused_as_twistd_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, kind: str, field: str,
    name: str, message: str,
) -> None:  # fmt: skip
    conf = _write(tmp_path, **{field: name})
    assert main([command, str(conf)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("jumpctl: error: "), err
    said = err.strip().removeprefix("jumpctl: error: ")
    assert said.startswith(message), said
    if command == "check" and kind == "sink":  # one real twistd run is enough per kind
        assert said == _twistd_error(conf)


def test_twistd_and_check_agree_on_a_bad_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _write(tmp_path, extra="[rate_limit]\ncooldown_ms = 0\n")
    assert main(["check", str(conf)]) == 1
    said = capsys.readouterr().err.strip().removeprefix("jumpctl: error: ")
    assert "cooldown_ms must be an integer >= 1" in said
    assert said == _twistd_error(conf)


def test_check_accepts_a_good_file_and_says_what_will_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _write(tmp_path)
    assert main(["check", str(conf)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{conf}: ok: gateway g1; 1 peer(s); ownership memory; "), out


def test_show_config_redacts_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jumping.configcheck import redact

    options = {
        "sasl_plain_password": "hunter2", "sasl_plain_username": "alice",
        "token": "t0k3n", "api_key": "k", "password_file": "/etc/jumping/pw",
        "endpoints": ["https://root:s3cret@10.0.0.1:2379", "http://10.0.0.2:2379"],
        "topic": "jumping",
    }  # fmt: skip
    out = redact(options)
    assert out == {
        "sasl_plain_password": "<redacted>", "sasl_plain_username": "alice",
        "token": "<redacted>", "api_key": "<redacted>", "password_file": "/etc/jumping/pw",
        "endpoints": ["https://<redacted>@10.0.0.1:2379", "http://10.0.0.2:2379"],
        "topic": "jumping",
    }  # fmt: skip
    conf = _write(tmp_path)
    assert main(["show-config", str(conf)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["node_id"] == "g1" and shown["public_key"]
    assert shown["events"][0]["options"]["path"] == str(tmp_path / "events.jsonl")


def test_show_config_prints_no_secret_of_a_real_plugin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Kafka sink takes SASL credentials inline; they never reach the output."""
    pytest.importorskip("jumping_kafka")
    conf = _write(tmp_path, sink="kafka")
    text = conf.read_text().replace(
        'path = "events.jsonl"',
        'bootstrap_servers = ["127.0.0.1:9"]\ntopic = "t"\nsecurity_protocol = "SASL_PLAINTEXT"\n'
        'sasl_mechanism = "PLAIN"\nsasl_plain_username = "alice"\n'
        'sasl_plain_password = "hunter2-very-secret"',
    )
    conf.write_text(text)
    code = main(["show-config", str(conf)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "hunter2-very-secret" not in out
    assert json.loads(out)["events"][0]["options"]["sasl_plain_password"] == "<redacted>"


def test_jumpctl_is_a_command(tmp_path: Path) -> None:
    conf = _write(tmp_path, sink="jsnol")
    r = subprocess.run(
        [sys.executable, "-c", "from jumping.cli import main; raise SystemExit(main())",
         "check", str(conf)],
        capture_output=True, text=True, timeout=60, env=node_env(),
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.startswith("jumpctl: error: unknown event sink plugin 'jsnol'"), r.stderr
