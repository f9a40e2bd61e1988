"""The keypair's AEAD: the C loops (jumping/core/_dataplane.c) give exactly what their
Python twin (jumping.core.aead.PyAead, the reference) gives: the same bytes, the same
results, the same replay window, for good and bad input alike."""

from __future__ import annotations

import contextlib
import os
from array import array
from collections.abc import Iterator

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from jumping.core import aead, wire
from jumping.core.replay import ReplayWindow

C = aead.CAead
needs_c = pytest.mark.skipif(C is None, reason="jumping.core._dataplane is not built")
#: both implementations where the C one is built: data-plane properties run on each (in
#: the test body: pytest-twisted cannot run a parametrized hypothesis test twice)
IMPLEMENTATIONS: list[object] = [aead.PyAead] + ([C] if C is not None else [])


@contextlib.contextmanager
def implementation(impl: object) -> Iterator[None]:
    """Keypairs made inside use ``impl`` (jumping.core.session reads aead.Aead)."""
    before = aead.Aead
    aead.Aead = impl
    try:
        yield
    finally:
        aead.Aead = before


keys = st.binary(min_size=32, max_size=32)


def test_the_compiled_loops_are_there_where_they_must_be() -> None:
    """JUMPING_REQUIRE_COMPILED=1 (CI, where deploy/setup.sh installs the compiler and
    OpenSSL's headers): a build that silently fell back to Python is a failure."""
    if os.environ.get("JUMPING_REQUIRE_COMPILED") == "1":
        assert C is not None and aead.IMPLEMENTATION == "c"
    assert aead.Aead is (C if C is not None and not os.environ.get("JUMPING_PURE_PYTHON")
                         else aead.PyAead)  # fmt: skip


@needs_c
@given(keys, st.binary(min_size=12, max_size=12), st.binary(max_size=3000), st.binary(max_size=40))
def test_encrypt_and_decrypt_are_cryptographys(
    key: bytes, nonce: bytes, data: bytes, ad: bytes
) -> None:
    ref = ChaCha20Poly1305(key)
    c = C(key)
    sealed = c.encrypt(nonce, data, ad)
    assert sealed == ref.encrypt(nonce, data, ad)
    assert c.decrypt(nonce, sealed, ad) == data
    assert c.encrypt(nonce, data, None) == ref.encrypt(nonce, data, None)
    for bad in (sealed[:-1] + bytes([sealed[-1] ^ 1]), sealed[:15], b""):
        with pytest.raises(InvalidTag):
            c.decrypt(nonce, bad, ad)
    with pytest.raises(InvalidTag):
        c.decrypt(nonce, sealed, ad + b"x")
    with pytest.raises(ValueError):
        c.encrypt(nonce[:11], data, ad)
    with pytest.raises(ValueError):
        C(key[:31])
    keyless = C.__new__(C)  # never initialised, or re-initialised with a bad key
    with pytest.raises(ValueError):
        keyless.encrypt(nonce, data, ad)
    with pytest.raises(ValueError):
        c.__init__(key[:16])
    with pytest.raises(ValueError):
        c.open(bytes(40))


@needs_c
@given(keys, st.binary(min_size=16, max_size=16), st.binary(max_size=2000), st.integers(0, 40))
def test_seal_and_open_agree_with_the_reference(
    key: bytes, header: bytes, plain: bytes, cut: int
) -> None:
    c, p = C(key), aead.PyAead(key)
    d = c.seal(header, plain)
    assert d == p.seal(header, plain)
    assert c.open(d) == p.open(d) == plain
    for bad in (d[: len(d) - cut - 1], d[:-1] + bytes([d[-1] ^ 1]), bytes([d[0] ^ 1]) + d[1:]):
        assert c.open(bad) is None and p.open(bad) is None
    with pytest.raises(ValueError):
        c.seal(header[:15], plain)


def _packet(hl: int, payload: bytes) -> bytes:
    h = bytearray(os.urandom(hl))
    h[2:4] = (hl + len(payload)).to_bytes(2, "big")
    return bytes(h) + payload


@needs_c
@given(
    keys,
    st.integers(20, 120),
    st.integers(1, 1500),
    st.binary(max_size=9000),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**40),
)
def test_seal_pieces_agree_with_the_reference(
    key: bytes, hl: int, gso: int, payload: bytes, ri: int, counter: int
) -> None:
    packet = _packet(hl, payload)
    assert C(key).seal_pieces(packet, hl, gso, ri, counter) == aead.PyAead(key).seal_pieces(
        packet, hl, gso, ri, counter
    )


# what can happen to a piece on its way: arrive, be lost, come twice, late, forged,
# truncated, under another index, or be some other message
_FATES = st.sampled_from(["ok", "ok", "ok", "lost", "twice", "swap", "forge", "cut", "index",
                          "data", "short"])  # fmt: skip


@needs_c
@settings(max_examples=150)
@given(
    keys,
    st.integers(1, 30),
    st.integers(1, 400),
    st.lists(_FATES, min_size=1, max_size=30),
    st.integers(0, 3),
    st.integers(0, 9000),
    st.sampled_from([128, 256, 8192]),
    st.lists(st.integers(0, 9000), max_size=6),
)
def test_open_pieces_agrees_with_the_reference(
    key: bytes,
    pieces: int,
    gso: int,
    fates: list[str],
    start: int,
    counter: int,
    bits: int,
    seen: list[int],
) -> None:
    """The same datagrams, the same run state, the same replay window (counters already
    seen, a top above or below the pieces'): the same (i, nxt, end, last, taken), the same
    pieces and the same window after."""
    hl = 40
    packet = _packet(hl, os.urandom(gso * pieces - gso // 2 if pieces > 1 else gso))
    template = packet[:hl]
    ri = 0x01020304
    sealed = aead.PyAead(key).seal_pieces(packet, hl, gso, ri, counter)
    start = min(start, len(sealed) - 1)  # the run holds the pieces before this one
    datagrams: list[bytes] = []
    for k, d in enumerate(sealed[start:]):
        fate = fates[k % len(fates)]
        if fate == "lost":
            continue
        if fate == "twice":
            datagrams += [d, d]
        elif fate == "swap" and datagrams:
            datagrams.insert(len(datagrams) - 1, d)
        elif fate == "forge":
            datagrams.append(d[:-1] + bytes([d[-1] ^ 0x40]))
        elif fate == "cut":
            datagrams.append(d[: len(d) // 2])
        elif fate == "index":
            datagrams.append(d[:4] + b"\0\0\0\0" + d[8:])
        elif fate == "data":
            datagrams.append(bytes([wire.MessageType.DATA]) + d[1:])
        elif fate == "short":
            datagrams.append(d[:12])
        else:
            datagrams.append(d)
    index = ri.to_bytes(4, "little")
    payload = len(packet) - hl
    results = []
    for impl in (C, aead.PyAead):
        w = ReplayWindow(bits)
        for s in seen:
            w.update(s)
        out: list = []
        got = impl(key).open_pieces(
            list(datagrams), 0, index, w, start, template, gso, start * gso, payload, out
        )
        results.append((got, b"".join(bytes(p) for p in out), w.top, list(w.blocks)))
    assert results[0] == results[1]


@needs_c
def test_open_pieces_takes_a_whole_super_packet() -> None:
    key = os.urandom(32)
    packet = _packet(52, os.urandom(1448 * 44 - 100))
    sealed = C(key).seal_pieces(packet, 52, 1448, 7, 1000)
    for window in (ReplayWindow, aead.CReplayWindow):  # the C window is marked in place too
        w = window(8192)
        out: list = []
        got = C(key).open_pieces(sealed, 0, (7).to_bytes(4, "little"), w, 0, packet[:52], 1448,
                                 0, len(packet) - 52, out)  # fmt: skip
        assert got == (44, 44, len(packet) - 52, True, sum(map(len, sealed)))
        assert b"".join(out) == packet[52:] and w.top == 1043
        for c in range(1000, 1044):
            assert not w.check(c)
        assert w.check(1044) and w.check(999)


@needs_c
@pytest.mark.parametrize(
    "blocks", [[0] * 128, array("L" if array("L").itemsize == 4 else "I", bytes(512)), b"\0" * 1024]
)
def test_open_pieces_refuses_a_window_it_cannot_mark_in_place(blocks) -> None:
    """The C data plane writes counters straight into the window's 64-bit words: a list of
    ints, words of another width or a read-only buffer is refused before anything is
    opened or marked."""
    key = os.urandom(32)
    packet = _packet(52, os.urandom(1448 * 3))
    sealed = C(key).seal_pieces(packet, 52, 1448, 7, 10)
    w = ReplayWindow(8192)
    w.blocks = blocks
    out: list = []
    with pytest.raises(TypeError, match=r"array\('Q'\)"):
        C(key).open_pieces(sealed, 0, (7).to_bytes(4, "little"), w, 0, packet[:52], 1448, 0,
                           len(packet) - 52, out)  # fmt: skip
    assert out == [] and w.top == -1 and w.blocks is blocks


@needs_c
def test_aead_objects_live_outside_the_small_object_pools() -> None:
    """An Aead is allocated from malloc, beside the libcrypto contexts it owns, not from
    pymalloc's pools: when an idle session's keys expire, freeing them leaves no hole among
    the session's long-lived small objects (issue 18). ``sys.getallocatedblocks`` counts
    pymalloc's blocks: 2 000 Aeads must not add one each."""
    import gc
    import sys

    keys = [os.urandom(32) for _ in range(2000)]
    gc.collect()
    before = sys.getallocatedblocks()
    made = [C(k) for k in keys]
    grown = sys.getallocatedblocks() - before
    assert grown < 200, f"{grown} pymalloc blocks for {len(made)} Aead objects"
    assert made[0].decrypt(b"\0" * 12, made[0].encrypt(b"\0" * 12, b"x", b""), b"") == b"x"
    del made
    gc.collect()
    assert sys.getallocatedblocks() - before < 200
