"""
TLS certificates for transports that wrap Jumping in TLS (the ``quic`` plugin, others later).

The Noise handshake inside the tunnel authenticates client and gateway end to end; the
outer TLS layer only has to make the path look like ordinary TLS and keep a middlebox from
terminating it. A gateway therefore either has a certificate from a public CA (clients then
use their trust store) or a self-signed one made here, which clients *pin*: the pin is the
SHA-256 of the certificate's SubjectPublicKeyInfo in base64 (the HPKP / ``curl
--pinnedpubkey sha256//...`` form), so a certificate renewed with the same key keeps its
pin.

``jumpctl tls-cert --out NAME`` writes ``NAME.crt`` and ``NAME.key`` (mode 0600, never
overwritten) and prints the pin; ``jumpctl tls-pin FILE`` prints the pin of a certificate
an operator already has.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jumping.errors import KeyFileError
from jumping.keys import read_secret_file

#: length of a pin: base64 of a 32-byte digest
PIN_LEN = 44


def spki_pin(certificate: x509.Certificate) -> str:
    """Base64 SHA-256 of the certificate's DER SubjectPublicKeyInfo."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def check_pin(text: Any, what: str = "pin") -> str:
    """``text`` if it is a well-formed pin (``sha256//`` prefix allowed), else ValueError."""
    if not isinstance(text, str):
        raise ValueError(f"{what}: must be a string, got {text!r}")
    # the prefix is told by length, not by stripping: a pin may itself start with "/"
    pin = text
    for prefix in ("sha256//", "sha256/"):
        if len(text) == PIN_LEN + len(prefix) and text.startswith(prefix):
            pin = text[len(prefix) :]
            break
    try:
        raw = base64.b64decode(pin, validate=True)
    except ValueError:
        raise ValueError(f"{what}: not valid base64: {text!r}") from None
    if len(raw) != 32 or len(pin) != PIN_LEN:
        raise ValueError(f"{what}: must be the base64 of a SHA-256 digest (44 chars), got {text!r}")
    return pin


def load_certificates(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """The PEM certificates of ``path`` (leaf first, then its chain)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(
            f"{p}: certificate file not found (create one: jumpctl tls-cert --out {p.with_suffix('')})"
        ) from None
    except OSError as e:
        raise KeyFileError(f"{p}: cannot read certificate: {e.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise KeyFileError(f"{p}: not a PEM certificate: {e}") from None
    return certs


def load_private_key(path: str | os.PathLike[str]) -> Any:
    """A PEM private key (EC, Ed25519, RSA), checked like every secret file
    (:func:`jumping.keys.read_secret_file`: 0600, ours, no symlink)."""
    data = read_secret_file(path, "TLS private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key: {e}") from None


def generate(
    out: str | os.PathLike[str], names: list[str], days: int = 3650
) -> tuple[Path, Path, str]:
    """Write a self-signed ECDSA P-256 certificate ``OUT.crt`` for ``names`` (DNS names or
    IP addresses; the first is the subject) and its key ``OUT.key`` (0600). Refuses to
    overwrite either. Returns (certificate path, key path, pin)."""
    base = Path(out)
    if base.suffix in (".crt", ".key", ".pem"):
        base = base.with_suffix("")
    crt, key_path = base.with_name(base.name + ".crt"), base.with_name(base.name + ".key")
    if not names:
        raise ValueError("at least one name is needed")
    if not 1 <= days <= 36500:
        raise ValueError(f"days must be in 1..36500, got {days}")
    for p in (crt, key_path):
        if p.exists():
            raise KeyFileError(f"{p}: already exists, refusing to overwrite")
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{key_path}: already exists, refusing to overwrite") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem_key)
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt, key_path, spki_pin(cert)
