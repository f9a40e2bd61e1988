"""
The Noise Protocol Framework (revision 34) for ``25519_ChaChaPoly_BLAKE2s``.

Handshake patterns are data (token lists), so one :class:`HandshakeState` runs every
one-way and interactive fundamental pattern and their ``pskN`` modifiers; the published
cacophony and snow test vectors check it (``tests/core/test_noise_vectors.py``).

No I/O, no OS randomness: ephemeral keys come from the injected ``rng`` (or are given, for
test vectors).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base

DHLEN = 32
HASHLEN = 32
BLOCKLEN = 64
MAX_MESSAGE = 65535
MAX_NONCE = 2**64 - 1

Rng = Callable[[int], bytes]


class NoiseError(Exception):
    """Any handshake or transport failure: bad length, bad tag, out of turn, bad key."""


def public_key(private: bytes) -> bytes:
    if len(private) != DHLEN:
        raise NoiseError("private key must be 32 bytes")
    return bytes(crypto_scalarmult_base(private))


def generate_keypair(rng: Rng) -> tuple[bytes, bytes]:
    private = rng(DHLEN)
    return private, public_key(private)


def dh(private: bytes, public: bytes) -> bytes:
    try:
        out = bytes(crypto_scalarmult(private, public))
    except Exception:
        raise NoiseError("invalid public key") from None
    if not any(out):
        raise NoiseError("DH produced the all-zero value (low-order point)")
    return out


def _hash(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


# HMAC (RFC 2104) over BLAKE2s written out: a key of at most BLOCKLEN bytes padded with
# zeros, XORed with the pads through a translation table. The hmac module does the same
# with a Python object per call (about twice the time here, and a handshake makes 25).
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))
_blake2s = hashlib.blake2s


def _hmac(key: bytes, data: bytes) -> bytes:
    if len(key) > BLOCKLEN:
        key = _blake2s(key).digest()
    k = key.ljust(BLOCKLEN, b"\x00")
    return _blake2s(k.translate(_OPAD) + _blake2s(k.translate(_IPAD) + data).digest()).digest()


def hkdf(ck: bytes, ikm: bytes, n: int) -> tuple[bytes, ...]:
    """Noise's HKDF (section 4.3): two or three outputs from chaining key ``ck``; the pads
    of the intermediate key are made once for its two or three uses."""
    temp = _hmac(ck, ikm).ljust(BLOCKLEN, b"\x00")
    inner, outer = temp.translate(_IPAD), temp.translate(_OPAD)
    out1 = _blake2s(outer + _blake2s(inner + b"\x01").digest()).digest()
    out2 = _blake2s(outer + _blake2s(inner + out1 + b"\x02").digest()).digest()
    if n == 2:
        return out1, out2
    return out1, out2, _blake2s(outer + _blake2s(inner + out2 + b"\x03").digest()).digest()


class CipherState:
    __slots__ = ("k", "n", "_aead")

    def __init__(self, k: bytes | None = None) -> None:
        self.n = 0
        self.k: bytes | None = None
        self._aead: ChaCha20Poly1305 | None = None
        if k is not None:
            self.initialize_key(k)

    def initialize_key(self, k: bytes) -> None:
        self.k = k
        self.n = 0
        self._aead = None  # made when first used: a handshake mixes in more keys than it uses

    def _cipher(self) -> ChaCha20Poly1305:
        aead = self._aead
        if aead is None:
            assert self.k is not None
            aead = self._aead = ChaCha20Poly1305(self.k)
        return aead

    def _nonce(self) -> bytes:
        if self.n >= MAX_NONCE:
            raise NoiseError("nonce exhausted")
        return b"\x00\x00\x00\x00" + self.n.to_bytes(8, "little")

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.k is None:
            return plaintext
        ct = self._cipher().encrypt(self._nonce(), plaintext, ad)
        self.n += 1
        return ct

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.k is None:
            return ciphertext
        try:
            pt = self._cipher().decrypt(self._nonce(), ciphertext, ad)
        except InvalidTag:
            raise NoiseError("authentication failed") from None
        self.n += 1
        return pt

    def rekey(self) -> None:
        if self.k is None:
            raise NoiseError("no key to rekey")
        k = self._cipher().encrypt(b"\xff" * 12, bytes(32), b"")[:32]
        n = self.n
        self.initialize_key(k)
        self.n = n


class SymmetricState:
    __slots__ = ("ck", "h", "cipher")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = _hash(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, ikm, 2)
        self.cipher.initialize_key(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cipher.initialize_key(temp_k)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ct = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        pt = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = hkdf(self.ck, b"", 2)
        return CipherState(k1), CipherState(k2)


# (pre-messages initiator, pre-messages responder, message token lists); "->" messages are
# the even-numbered ones, sent by the initiator.
PATTERNS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, ...], ...]]] = {
    "N": ((), ("s",), (("e", "es"),)),
    "K": (("s",), ("s",), (("e", "es", "ss"),)),
    "X": ((), ("s",), (("e", "es", "s", "ss"),)),
    "NN": ((), (), (("e",), ("e", "ee"))),
    "NK": ((), ("s",), (("e", "es"), ("e", "ee"))),
    "NX": ((), (), (("e",), ("e", "ee", "s", "es"))),
    "XN": ((), (), (("e",), ("e", "ee"), ("s", "se"))),
    "XK": ((), ("s",), (("e", "es"), ("e", "ee"), ("s", "se"))),
    "XX": ((), (), (("e",), ("e", "ee", "s", "es"), ("s", "se"))),
    "KN": (("s",), (), (("e",), ("e", "ee", "se"))),
    "KK": (("s",), ("s",), (("e", "es", "ss"), ("e", "ee", "se"))),
    "KX": (("s",), (), (("e",), ("e", "ee", "se", "s", "es"))),
    "IN": ((), (), (("e", "s"), ("e", "ee", "se"))),
    "IK": ((), ("s",), (("e", "es", "s", "ss"), ("e", "ee", "se"))),
    "IX": ((), (), (("e", "s"), ("e", "ee", "se", "s", "es"))),
}


@functools.lru_cache(maxsize=64)
def parse_pattern(
    name: str,
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """``"IKpsk2"`` → the pattern with its psk tokens placed (Noise section 9.2); parsed
    once per name (the result is immutable), not once per handshake."""
    base = name
    mods: list[int] = []
    if "psk" in name:
        base, _, rest = name.partition("psk")
        for part in ("psk" + rest).split("+"):
            if not part.startswith("psk") or not part[3:].isdigit():
                raise NoiseError(f"unsupported modifier in {name!r}")
            mods.append(int(part[3:]))
    if base not in PATTERNS:
        raise NoiseError(f"unsupported pattern {name!r}")
    pre_i, pre_r, msgs = PATTERNS[base]
    messages = [list(m) for m in msgs]
    for m in mods:
        if m == 0:
            messages[0].insert(0, "psk")
        elif m <= len(messages):
            messages[m - 1].append("psk")
        else:
            raise NoiseError(f"psk{m} beyond the pattern's messages")
    return pre_i, pre_r, tuple(tuple(m) for m in messages)


class HandshakeState:
    def __init__(
        self,
        pattern: str,
        initiator: bool,
        prologue: bytes = b"",
        s: bytes | None = None,
        rs: bytes | None = None,
        psks: Sequence[bytes] = (),
        rng: Rng | None = None,
        e: bytes | None = None,
        re: bytes | None = None,
        static_static: Callable[[bytes], bytes | None] | None = None,
        s_pub: bytes | None = None,
    ) -> None:
        """``static_static``, if given, returns DH(``s``, a remote static key) computed in
        advance (as wireguard-go's precomputed static-static), or None to compute it here;
        it must be a pure function of the two keys, or the handshake fails to authenticate.
        ``s_pub``: the public half of ``s``, when the caller keeps it (one scalar
        multiplication less); it must be ``s``'s, or the handshake fails to authenticate."""
        self.protocol_name = f"Noise_{pattern}_25519_ChaChaPoly_BLAKE2s"
        pre_i, pre_r, self._messages = parse_pattern(pattern)
        self._psk_mode = "psk" in pattern
        self.initiator = initiator
        self.ss = SymmetricState(self.protocol_name.encode())
        self.ss.mix_hash(prologue)
        self.s = s
        self.s_pub = s_pub if s_pub is not None or s is None else public_key(s)
        self.e = e
        self.e_pub = public_key(e) if e is not None else None
        self.rs = rs
        self.re = re
        self.psks = list(psks)
        self._rng = rng
        self._static_static = static_static
        self._turn = 0
        for tokens, mine in ((pre_i, initiator), (pre_r, not initiator)):
            for token in tokens:
                if token == "s":
                    key = self.s_pub if mine else self.rs
                elif token == "e":
                    key = self.e_pub if mine else self.re
                else:  # pragma: no cover - patterns are data above
                    raise NoiseError(f"bad pre-message token {token}")
                if key is None:
                    raise NoiseError(f"pre-message key {token!r} missing")
                self.ss.mix_hash(key)
                if token == "e" and self._psk_mode:
                    self.ss.mix_key(key)

    @property
    def complete(self) -> bool:
        return self._turn >= len(self._messages)

    @property
    def handshake_hash(self) -> bytes:
        return self.ss.h

    @property
    def remote_static(self) -> bytes | None:
        return self.rs

    def _my_turn(self) -> bool:
        return (self._turn % 2 == 0) == self.initiator

    def _dh(self, token: str) -> bytes:
        # token "xy": x is the initiator's key, y the responder's
        a, b = token[0], token[1]
        mine, theirs = (a, b) if self.initiator else (b, a)
        priv = self.e if mine == "e" else self.s
        pub = self.re if theirs == "e" else self.rs
        if priv is None or pub is None:
            raise NoiseError(f"missing key for {token}")
        if token == "ss" and self._static_static is not None:
            known = self._static_static(pub)
            if known is not None:
                return known
        return dh(priv, pub)

    def _next_psk(self) -> bytes:
        if not self.psks:
            raise NoiseError("psk required")
        psk = self.psks.pop(0)
        if len(psk) != 32:
            raise NoiseError("psk must be 32 bytes")
        return psk

    def write_message(self, payload: bytes = b"") -> bytes:
        if self.complete or not self._my_turn():
            raise NoiseError("not our turn to write")
        out = bytearray()
        for token in self._messages[self._turn]:
            if token == "e":
                if self.e is None:
                    if self._rng is None:
                        raise NoiseError("no rng for the ephemeral key")
                    self.e, self.e_pub = generate_keypair(self._rng)
                assert self.e_pub is not None
                out += self.e_pub
                self.ss.mix_hash(self.e_pub)
                if self._psk_mode:
                    self.ss.mix_key(self.e_pub)
            elif token == "s":
                if self.s_pub is None:
                    raise NoiseError("no static key")
                out += self.ss.encrypt_and_hash(self.s_pub)
            elif token == "psk":
                self.ss.mix_key_and_hash(self._next_psk())
            else:
                self.ss.mix_key(self._dh(token))
        out += self.ss.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE:
            raise NoiseError("message too long")
        self._turn += 1
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        """Read the peer's next message. All or nothing: a message that fails (forged,
        truncated) leaves this handshake exactly as it was, so the genuine one still
        completes; the state is committed only once the message authenticated."""
        if self.complete or self._my_turn():
            raise NoiseError("not our turn to read")
        if len(message) > MAX_MESSAGE:
            raise NoiseError("message too long")
        ss, c = self.ss, self.ss.cipher
        saved = (ss.ck, ss.h, c.k, c.n, c._aead, self.re, self.rs, list(self.psks))
        try:
            return self._read(message)
        except NoiseError:
            ss.ck, ss.h, c.k, c.n, c._aead, self.re, self.rs, self.psks = saved
            raise

    def _read(self, message: bytes) -> bytes:
        pos = 0
        for token in self._messages[self._turn]:
            if token == "e":
                if len(message) - pos < DHLEN:
                    raise NoiseError("message too short")
                self.re = bytes(message[pos : pos + DHLEN])
                pos += DHLEN
                self.ss.mix_hash(self.re)
                if self._psk_mode:
                    self.ss.mix_key(self.re)
            elif token == "s":
                n = DHLEN + (16 if self.ss.cipher.k is not None else 0)
                if len(message) - pos < n:
                    raise NoiseError("message too short")
                self.rs = self.ss.decrypt_and_hash(bytes(message[pos : pos + n]))
                pos += n
            elif token == "psk":
                self.ss.mix_key_and_hash(self._next_psk())
            else:
                self.ss.mix_key(self._dh(token))
        rest = bytes(message[pos:])
        if self.ss.cipher.k is not None and len(rest) < 16:
            raise NoiseError("message too short")
        payload = self.ss.decrypt_and_hash(rest)
        self._turn += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        if not self.complete:
            raise NoiseError("handshake not complete")
        return self.ss.split()
