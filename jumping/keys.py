"""
Key files: X25519 private keys as one line of base64, mode 0600, refused otherwise.

``NAME.key`` holds the private key, ``NAME.pub`` the public key (also base64), the format
WireGuard users know.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Callable
from pathlib import Path

from jumping.core.noise import public_key as _public_key
from jumping.errors import KeyFileError

KEY_LEN = 32


def generate_private_key(rng: Callable[[int], bytes] = os.urandom) -> bytes:
    return rng(KEY_LEN)


def public_key(private: bytes) -> bytes:
    return _public_key(private)


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def decode_key(text: str, what: str = "key") -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{what}: not valid base64") from None
    if len(raw) != KEY_LEN:
        raise KeyFileError(f"{what}: must decode to {KEY_LEN} bytes, got {len(raw)}")
    return raw


def public_path(private_path: str | os.PathLike[str]) -> Path:
    p = Path(private_path)
    return p.with_suffix(".pub") if p.suffix == ".key" else p.with_name(p.name + ".pub")


def write_keypair(
    private_path: str | os.PathLike[str], rng: Callable[[int], bytes] = os.urandom
) -> bytes:
    """Create ``private_path`` (0600, never overwritten) and its ``.pub``; return the public key."""
    key = generate_private_key(rng)
    pub = public_key(key)
    path = Path(private_path)
    pub_path = public_path(path)
    if pub_path.exists():
        raise KeyFileError(f"{pub_path}: already exists, refusing to overwrite")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists, refusing to overwrite") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot create: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(encode_key(key) + "\n")
    pub_path.write_text(encode_key(pub) + "\n")
    return pub


def load_private_key(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise KeyFileError(
            f"{p}: private key file not found (create one: jumpctl keygen --out {p})"
        ) from None
    except OSError as e:
        raise KeyFileError(f"{p}: cannot read private key: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{p}: private key must be a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"{p}: private key is accessible by group/others (mode {stat.S_IMODE(st.st_mode):04o});"
            f" fix with: chmod 600 {p}"
        )
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{p}: cannot read private key: {e}") from None
    return decode_key(text, str(p))
