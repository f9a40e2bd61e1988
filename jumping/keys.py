"""
Key files: X25519 private keys as one line of base64, mode 0600 or stricter, owned by the
user running the node (or root), in a directory only that user can write; opened once
without following symlinks and checked on the open descriptor (:func:`read_secret_file`).

``NAME.key`` holds the private key, ``NAME.pub`` the public key (also base64), the format
WireGuard users know.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

from jumping.core.noise import public_key as _public_key
from jumping.errors import KeyFileError

KEY_LEN = 32
MAX_SECRET_FILE = 4096  # bytes: a key file is one short line


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


def read_secret_file(path: str | os.PathLike[str], what: str = "private key") -> bytes:
    """The bytes of a secret file, opened **once** and checked on that descriptor.

    The file is opened relative to its already opened parent directory with ``O_NOFOLLOW``
    (a symlink is refused, not followed) and ``O_NONBLOCK`` (a FIFO never blocks us); then,
    on the descriptors, never again by name: it must be a regular file owned by the
    effective uid or root, mode 0600 or stricter (no bit beyond ``rw`` for its owner), in a
    directory owned by the effective uid or root that neither group nor others can write
    (whoever can write the directory can swap the file). What is read is what was checked.

    :raise KeyFileError: one line naming the file, what is wrong, and how to fix it.
    """
    p = Path(path)
    parent = p.parent
    try:
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _missing(p, what) from None
    except OSError as e:
        raise KeyFileError(f"{p}: cannot open its directory: {e.strerror}") from None
    try:
        _check_owner_dir(p, os.fstat(dir_fd))
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        try:
            fd = os.open(p.name, flags, dir_fd=dir_fd)
        except FileNotFoundError:
            raise _missing(p, what) from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise KeyFileError(
                    f"{p}: {what} is a symlink; refusing to follow it (point the "
                    f"configuration at the file itself)"
                ) from None
            raise KeyFileError(f"{p}: cannot open {what}: {e.strerror}") from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{p}: {what} must be a regular file")
        euid = os.geteuid()
        if st.st_uid not in (euid, 0):
            raise KeyFileError(
                f"{p}: {what} is owned by uid {st.st_uid}, not by this user (uid {euid}) or "
                f"root; fix with: chown {euid} {p}"
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & ~0o600:
            raise KeyFileError(
                f"{p}: {what} has mode {mode:04o}, must be 0600 or stricter; "
                f"fix with: chmod 600 {p}"
            )
        if st.st_size > MAX_SECRET_FILE:
            raise KeyFileError(f"{p}: {what} is too large ({st.st_size} bytes)")
        chunks = []
        size = 0
        while True:
            chunk = os.read(fd, MAX_SECRET_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_SECRET_FILE:
                raise KeyFileError(f"{p}: {what} is too large (over {MAX_SECRET_FILE} bytes)")
        return b"".join(chunks)
    except OSError as e:
        raise KeyFileError(f"{p}: cannot read {what}: {e.strerror}") from None
    finally:
        os.close(fd)


def _missing(p: Path, what: str) -> KeyFileError:
    if what == "private key":
        return KeyFileError(
            f"{p}: private key file not found (create one: jumpctl keygen --out {p})"
        )
    return KeyFileError(f"{p}: {what} file not found")


def _check_owner_dir(p: Path, st: os.stat_result) -> None:
    d = p.parent
    euid = os.geteuid()
    if st.st_uid not in (euid, 0):
        raise KeyFileError(
            f"{p}: its directory {d} is owned by uid {st.st_uid}, not by this user "
            f"(uid {euid}) or root: its owner could swap the key"
        )
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise KeyFileError(
            f"{p}: its directory {d} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): anyone who can write it can swap the key; "
            f"fix with: chmod go-w {d}, or move the key"
        )


def load_private_key(path: str | os.PathLike[str]) -> bytes:
    """An X25519 private key (one line of base64) from a file checked by
    :func:`read_secret_file`."""
    raw = read_secret_file(path)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: private key is not base64 text") from None
    return decode_key(text, str(path))


# --- the node secret and the keys derived from it -------------------------------------------
#: HKDF labels (``info``): one per derived key, so no derived key says anything about another
CHAIN_KEY_LABEL = b"jumping/1 event chain key"
ADDRESS_KEY_LABEL = b"jumping/1 event address key"
SECRET_LEN = 32


def derive_key(secret: bytes, label: bytes) -> bytes:
    """A 32-byte key for one purpose (``label``) from the node secret: HKDF-SHA256 (RFC 5869)
    with no salt and ``info = label``. One-way: holding a derived key (the chain key given
    to an auditor) tells nothing about the secret nor about the keys of other labels (the
    address key)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    if len(secret) < SECRET_LEN:
        raise ValueError(f"the node secret must be at least {SECRET_LEN} bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret)


def load_node_secret(path: str | os.PathLike[str]) -> bytes:
    """The node secret: one line of base64 of at least 32 random bytes (``jumpctl secret``),
    in a file checked like a private key (:func:`read_secret_file`)."""
    raw = read_secret_file(path, "node secret")
    try:
        secret = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(
            f"{path}: node secret: not valid base64 (create one: jumpctl secret --out {path})"
        ) from None
    if len(secret) < SECRET_LEN:
        raise KeyFileError(
            f"{path}: node secret: must decode to at least {SECRET_LEN} bytes, got {len(secret)}"
        )
    return secret


def write_secret(path: str | os.PathLike[str], rng: Callable[[int], bytes] = os.urandom) -> None:
    """Create a node secret file (0600, never overwritten)."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{p}: already exists, refusing to overwrite") from None
    except OSError as e:
        raise KeyFileError(f"{p}: cannot create: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(encode_key(rng(SECRET_LEN)) + "\n")


def event_keys(secret_path: str | os.PathLike[str] | None) -> tuple[bytes, bytes | None]:
    """(chain key, address key) of a node: both derived from its secret file, or, without
    one, an all-zero chain key (it still detects accidents, not a forger) and no address
    key (``address_privacy = "hash"`` is refused without a secret)."""
    if secret_path is None:
        return bytes(32), None
    secret = load_node_secret(secret_path)
    return derive_key(secret, CHAIN_KEY_LABEL), derive_key(secret, ADDRESS_KEY_LABEL)


def load_psk(path: str | os.PathLike[str]) -> bytes:
    """A pre-shared key: one line of base64 of exactly 32 bytes (``jumpctl psk``), in a file
    checked like a private key. The same file content goes to both ends."""
    raw = read_secret_file(path, "pre-shared key")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: pre-shared key is not base64 text") from None
    return decode_key(text, f"{path}: pre-shared key")
