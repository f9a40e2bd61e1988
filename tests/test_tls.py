"""``jumpctl tls-cert`` / ``tls-pin`` and the TLS file helpers transports use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography import x509

from jumping import cli, tls
from jumping.errors import KeyFileError


def test_tls_cert_writes_a_0600_key_and_prints_the_pin_tls_pin_agrees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gw-tls"
    assert (
        cli.main(["tls-cert", "--out", str(out), "--name", "gw.example", "--name", "10.0.0.1"]) == 0
    )
    pin = capsys.readouterr().out.strip()
    crt, key = tmp_path / "gw-tls.crt", tmp_path / "gw-tls.key"
    assert os.stat(key).st_mode & 0o777 == 0o600
    cert = tls.load_certificates(crt)[0]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["gw.example"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]
    assert tls.check_pin(pin) == pin == tls.spki_pin(cert)
    assert cli.main(["tls-pin", str(crt)]) == 0
    assert capsys.readouterr().out.strip() == pin
    tls.load_private_key(key)  # loads: mode 0600, ours


def test_tls_cert_refuses_to_overwrite_and_bad_days(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "a")
    assert cli.main(["tls-cert", "--out", out, "--name", "x"]) == 0
    before = (tmp_path / "a.key").read_bytes()
    assert cli.main(["tls-cert", "--out", out, "--name", "x"]) == 1
    assert "already exists, refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "a.key").read_bytes() == before
    assert cli.main(["tls-cert", "--out", str(tmp_path / "b"), "--name", "x", "--days", "0"]) == 1
    assert "days must be in 1..36500" in capsys.readouterr().err
    assert not (tmp_path / "b.key").exists()


def test_private_key_refused_when_group_readable_or_a_symlink(tmp_path: Path) -> None:
    _crt, key, _pin = tls.generate(tmp_path / "k", ["x"])
    os.chmod(key, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        tls.load_private_key(key)
    os.chmod(key, 0o600)
    link = tmp_path / "link.key"
    link.symlink_to(key)
    with pytest.raises(KeyFileError, match="symlink"):
        tls.load_private_key(link)
    with pytest.raises(KeyFileError, match="not found"):
        tls.load_private_key(tmp_path / "missing.key")
    (tmp_path / "junk.key").write_text("junk")
    os.chmod(tmp_path / "junk.key", 0o600)
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
        tls.load_private_key(tmp_path / "junk.key")


def test_certificate_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="jumpctl tls-cert"):
        tls.load_certificates(tmp_path / "none.crt")
    (tmp_path / "bad.crt").write_text("not pem")
    with pytest.raises(KeyFileError, match="not a PEM certificate"):
        tls.load_certificates(tmp_path / "bad.crt")


@pytest.mark.parametrize("bad", ["", "abc", "A" * 44, "sha256//" + "A" * 43, 42, None, "Zm9v" * 11])
def test_malformed_pins_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="pin"):
        tls.check_pin(bad)


def test_pin_prefixes_are_accepted(tmp_path: Path) -> None:
    _c, _k, pin = tls.generate(tmp_path / "p", ["x"])
    assert tls.check_pin("sha256//" + pin) == pin
    assert tls.check_pin("sha256/" + pin) == pin


@pytest.mark.parametrize("first", ["/", "+", "A"])
def test_a_pin_that_starts_with_a_slash_keeps_it(first: str) -> None:
    # base64 pins may start with "/": the prefix is told by length, not stripped greedily
    # (a generated pin starting with "/" made test_pin_prefixes_are_accepted fail now and then)
    pin = first + "A" * 42 + "="
    assert tls.check_pin(pin) == pin
    assert tls.check_pin("sha256/" + pin) == pin
    assert tls.check_pin("sha256//" + pin) == pin
