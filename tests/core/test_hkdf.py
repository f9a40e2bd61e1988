"""Noise's HMAC-BLAKE2s and HKDF written out (``jumping.core.noise``) against the standard
library's hmac module, for keys of every length a caller can pass (beyond the block size the
key is hashed first, RFC 2104) and data of any length. The test vectors
(test_noise_vectors.py) check whole handshakes; this checks the functions themselves."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given, settings
from hypothesis import strategies as st

from jumping.core import noise


def reference_hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def reference_hkdf(ck: bytes, ikm: bytes, n: int) -> tuple[bytes, ...]:
    temp = reference_hmac(ck, ikm)
    out1 = reference_hmac(temp, b"\x01")
    out2 = reference_hmac(temp, out1 + b"\x02")
    return (out1, out2) if n == 2 else (out1, out2, reference_hmac(temp, out2 + b"\x03"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=300))
def test_hmac_matches_the_hmac_module(key: bytes, data: bytes) -> None:
    assert noise._hmac(key, data) == reference_hmac(key, data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=100), st.sampled_from([2, 3]))
def test_hkdf_matches_the_hmac_module(ck: bytes, ikm: bytes, n: int) -> None:
    out = noise.hkdf(ck, ikm, n)
    assert out == reference_hkdf(ck, ikm, n)
    assert len(out) == n and all(len(o) == noise.HASHLEN for o in out)


def test_block_boundary_keys() -> None:
    for size in (0, 1, 31, 32, 63, 64, 65, 128):
        key = bytes(range(size % 256)) if size < 256 else bytes(size)
        key = (key * 2)[:size]
        assert noise._hmac(key, b"x") == reference_hmac(key, b"x"), size
