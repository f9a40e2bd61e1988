"""Key files: opened once without following a symlink, checked on the open descriptor
(owner, mode, parent directory), read from that descriptor."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jumping import keys
from jumping.errors import KeyFileError


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    d = tmp_path / "etc"
    d.mkdir(mode=0o700)
    p = d / "node.key"
    keys.write_keypair(p)
    return p


def test_a_good_key_file_loads(keyfile: Path) -> None:
    key = keys.load_private_key(keyfile)
    assert keys.encode_key(keys.public_key(key)) == keys.public_path(keyfile).read_text().strip()


def test_a_symlink_to_a_0600_key_is_refused(keyfile: Path) -> None:
    link = keyfile.parent / "link.key"
    link.symlink_to(keyfile)
    with pytest.raises(KeyFileError, match="symlink"):
        keys.load_private_key(link)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o700, 0o4600])
def test_a_mode_other_than_0600_or_stricter_is_refused(keyfile: Path, mode: int) -> None:
    os.chmod(keyfile, mode)
    with pytest.raises(KeyFileError, match="mode"):
        keys.load_private_key(keyfile)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_0600_and_0400_are_accepted(keyfile: Path, mode: int) -> None:
    os.chmod(keyfile, mode)
    assert len(keys.load_private_key(keyfile)) == 32


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_key_owned_by_another_user_is_refused(keyfile: Path) -> None:
    os.chown(keyfile, 65534, 65534)
    with pytest.raises(KeyFileError, match="owned by uid 65534"):
        keys.load_private_key(keyfile)


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o702])
def test_a_key_in_a_directory_writable_by_others_is_refused(keyfile: Path, mode: int) -> None:
    os.chmod(keyfile.parent, mode)
    try:
        with pytest.raises(KeyFileError, match="directory .* writable"):
            keys.load_private_key(keyfile)
    finally:
        os.chmod(keyfile.parent, 0o700)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_key_in_a_directory_owned_by_another_user_is_refused(keyfile: Path) -> None:
    os.chown(keyfile.parent, 65534, 65534)
    with pytest.raises(KeyFileError, match="directory .* owned by uid 65534"):
        keys.load_private_key(keyfile)


def test_a_fifo_or_a_directory_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="regular file"):
        keys.load_private_key(fifo)
    d = tmp_path / "dir.key"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="regular file"):
        keys.load_private_key(d)


def test_a_huge_file_is_refused_not_read_whole(keyfile: Path) -> None:
    with open(keyfile, "w") as f:
        f.write("A" * 100_000)
    with pytest.raises(KeyFileError, match="too large"):
        keys.load_private_key(keyfile)


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="jumpctl keygen"):
        keys.load_private_key(tmp_path / "none.key")


# --- the race: the file checked must be the file read ------------------------------------
_on_open: list[Callable[[str, int], None]] = []


def _audit(event: str, args: tuple) -> None:  # type: ignore[type-arg]
    if event == "open" and _on_open and isinstance(args[0], str | bytes):
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else -1
        for hook in list(_on_open):
            hook(os.fsdecode(args[0]), flags)


sys.addaudithook(_audit)  # audit hooks cannot be removed: this one is inert when idle


@pytest.fixture
def on_open() -> Iterator[list[Callable[[str, int], None]]]:
    yield _on_open
    _on_open.clear()


def test_the_key_file_is_opened_once_with_o_nofollow(keyfile: Path, on_open: list) -> None:  # type: ignore[type-arg]
    opened: list[int] = []
    on_open.append(lambda path, flags: opened.append(flags) if path.endswith("node.key") else None)
    keys.load_private_key(keyfile)
    assert len(opened) == 1, f"the key file was opened {len(opened)} times"
    assert opened[0] != -1 and opened[0] & os.O_NOFOLLOW


def test_a_file_swapped_after_the_check_is_never_read(keyfile: Path, on_open: list) -> None:  # type: ignore[type-arg]
    """Whoever swaps the file in between (here: at the moment it is opened for reading) gets
    their key refused, not loaded: the checks and the read are on one descriptor."""
    evil = keyfile.parent / "evil"
    evil.write_text(keys.encode_key(b"\x01" * 32) + "\n")
    os.chmod(evil, 0o644)
    swapped: list[bool] = []

    def swap(path: str, flags: int) -> None:
        if path.endswith("node.key") and not swapped:
            swapped.append(True)
            os.replace(evil, keyfile)

    on_open.append(swap)
    try:
        key = keys.load_private_key(keyfile)
    except KeyFileError as e:
        assert "mode" in str(e)
    else:
        assert swapped
        assert key != b"\x01" * 32, "read a key file other than the one checked"


# --- pre-shared keys ---------------------------------------------------------------------
def test_psk_files_are_32_bytes_of_base64_checked_like_keys(tmp_path: Path) -> None:
    from jumping import cli

    d = tmp_path / "k"
    d.mkdir(mode=0o700)
    assert cli.main(["psk", "--out", str(d / "a.psk")]) == 0
    assert len(keys.load_psk(d / "a.psk")) == 32
    (d / "a.psk").chmod(0o640)
    with pytest.raises(KeyFileError, match="pre-shared key has mode 0640"):
        keys.load_psk(d / "a.psk")
    (d / "b.psk").write_text(keys.encode_key(b"x" * 16) + "\n")
    (d / "b.psk").chmod(0o600)
    with pytest.raises(KeyFileError, match="must decode to 32 bytes"):
        keys.load_psk(d / "b.psk")


def test_psk_config_keys_resolve_relative_to_the_config(tmp_path: Path) -> None:
    from jumping.config import load_config

    keys.write_keypair(tmp_path / "g.key")
    pub = keys.encode_key(keys.public_key(keys.generate_private_key()))
    conf = tmp_path / "g.toml"
    conf.write_text(
        f'[node]\nrole = "gateway"\nnode_id = "g"\nprivate_key = "g.key"\n'
        f'[tun]\nname = "jg0"\naddress = "10.99.0.1/24"\n'
        f'[[listen]]\ntransport = "udp"\nhost = "127.0.0.1"\nport = 0\n'
        f'[[peers]]\npublic_key = "{pub}"\nallowed_ips = ["10.99.0.2/32"]\npsk = "p/a.psk"\n'
    )
    assert load_config(conf).peers[0].psk == tmp_path / "p" / "a.psk"
