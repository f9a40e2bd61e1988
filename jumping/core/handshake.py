"""
The Jumping handshake: Noise ``IKpsk2`` over X25519 / ChaCha20-Poly1305 / BLAKE2s, framed by
:mod:`jumping.core.wire`, with WireGuard-style MACs and cookies against floods.

- The pre-shared key (per peer, both ends; :data:`NO_PSK`, 32 zero bytes, when none is
  configured, as in WireGuard) is mixed in at the end of the responder's message (``psk2``):
  the responder learns the initiator's static key from the first message, then uses that
  peer's psk. Without the right psk the initiator cannot open the response, and no session
  key ever confirms. With a secret psk the session keys stay secret even against an
  attacker who later breaks X25519 (recorded traffic, a quantum computer), as long as the
  psk itself is not disclosed.

- ``mac1`` (keyed by the responder's public key) lets the gateway drop junk before any DH.
- Under load the gateway answers an initiation without a valid ``mac2`` with a cookie reply
  instead of doing the DH: the cookie is a MAC of the sender's address under a secret that
  rotates every two minutes, so it costs the gateway no state, and a spoofed source never
  sees it.

Everything raises :class:`HandshakeError` on bad input; the node turns that into a counted
drop. No I/O, no clock, no OS randomness: ``now`` and ``rng`` come from the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt
from nacl.exceptions import CryptoError

from jumping.core import wire
from jumping.core.noise import HandshakeState, NoiseError, dh, public_key

PROLOGUE = b"jumping/1"
PATTERN = "IKpsk2"
NO_PSK = bytes(32)  # the psk of a peer without one: IKpsk2 with a known psk is IK
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
COOKIE_SECRET_LIFETIME = 120.0
COOKIE_LIFETIME = 120.0 - 5.0

Rng = Callable[[int], bytes]


class HandshakeError(Exception):
    """A handshake message was malformed, unauthenticated or unexpected. ``args[0]`` is the
    drop reason code."""


def _hash(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def mac(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2s-128."""
    return hashlib.blake2s(data, digest_size=16, key=key).digest()


class Identity:
    """A node's static keypair and the keys derived from its public half."""

    __slots__ = ("private", "public", "mac1_key", "cookie_key", "_static_static")

    #: remote static keys whose DH with ours an initiator keeps (a client knows a few
    #: gateways; a gateway keeps its own per-peer results, see GatewayCore)
    STATIC_STATIC_KEPT = 8

    def __init__(self, private: bytes) -> None:
        self.private = private
        self.public = public_key(private)
        self.mac1_key = _hash(LABEL_MAC1 + self.public)
        self.cookie_key = _hash(LABEL_COOKIE + self.public)
        self._static_static: dict[bytes, bytes] = {}

    def static_static(self, remote: bytes) -> bytes | None:
        """DH(our static key, ``remote``), computed once per remote key (as wireguard-go's
        precomputed static-static): one of an initiation's DH operations less for every
        rekey after the first. None (computed by the handshake, which then fails) for a key
        that gives no DH result, or when this many remote keys are kept already."""
        known = self._static_static.get(remote)
        if known is None and len(self._static_static) < self.STATIC_STATIC_KEPT:
            try:
                known = self._static_static[remote] = dh(self.private, remote)
            except NoiseError:
                return None
        return known


@dataclass(frozen=True, slots=True)
class Established:
    """Keys and identity agreed by a completed handshake."""

    send_key: bytes
    recv_key: bytes
    local_index: int
    remote_index: int
    session_id: bytes
    state_version: int
    remote_static: bytes
    timestamp_ms: int


class Initiation:
    """The client's side of one handshake attempt."""

    def __init__(
        self,
        me: Identity,
        peer_public: bytes,
        rng: Rng,
        now: float,
        local_index: int,
        session_id: bytes = bytes(16),
        state_version: int = 0,
        cookie: bytes | None = None,
        psk: bytes = NO_PSK,
    ) -> None:
        self.local_index = local_index
        self.peer_public = peer_public
        self._my_mac1_key = me.mac1_key
        self.started = now
        self._hs = HandshakeState(
            PATTERN, True, PROLOGUE, s=me.private, rs=peer_public, psks=[psk], rng=rng,
            s_pub=me.public, static_static=me.static_static,
        )  # fmt: skip
        payload = wire.INIT_PAYLOAD.pack(int(now * 1000), session_id, state_version)
        body = wire.pack_init(local_index, self._hs.write_message(payload))
        self.mac1 = mac(_hash(LABEL_MAC1 + peer_public), body)
        body += self.mac1
        #: sent with a mac2 (the cookie of an earlier cookie reply)
        self.with_cookie = cookie is not None
        mac2 = mac(cookie, body) if cookie is not None else bytes(wire.MAC_LEN)
        self.message = body + mac2

    def consume_response(self, data: bytes) -> Established:
        if len(data) != wire.RESP_LEN:
            raise HandshakeError("BAD_LENGTH")
        _t, _v, _r, sender, receiver, noise_msg = wire.RESP.unpack_from(data)
        if receiver != self.local_index:
            raise HandshakeError("UNKNOWN_INDEX")
        # a message's mac1 is keyed by its receiver's public key: ours
        expected = mac(self._my_mac1_key, data[: wire.RESP.size])
        if not hmac.compare_digest(expected, data[wire.RESP.size : wire.RESP.size + 16]):
            raise HandshakeError("BAD_MAC1")
        try:
            payload = self._hs.read_message(noise_msg)
        except NoiseError:
            raise HandshakeError("HANDSHAKE_AUTH_FAILED") from None
        session_id, state_version = wire.RESP_PAYLOAD.unpack(payload)
        send, recv = self._hs.split()
        assert send.k is not None and recv.k is not None
        return Established(
            send.k, recv.k, self.local_index, sender, session_id, state_version,
            self.peer_public, 0,
        )  # fmt: skip


def read_cookie_reply(data: bytes, peer_public: bytes, last_mac1: bytes) -> bytes:
    """Open a cookie reply addressed to our last initiation; return the cookie."""
    if len(data) != wire.COOKIE_LEN:
        raise HandshakeError("BAD_LENGTH")
    _t, _v, _r, _receiver, nonce, sealed = wire.COOKIE.unpack(data)
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed, last_mac1, nonce, _hash(LABEL_COOKIE + peer_public)
        )
    except CryptoError:
        raise HandshakeError("BAD_COOKIE_REPLY") from None


_QUARTER_ROUNDS = (
    (0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
    (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14),
)  # fmt: skip


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha, section 2.2): the subkey XChaCha20 derives from a
    256-bit key and the first 16 bytes of its 24-byte nonce. Run once per cookie secret."""
    m = 0xFFFFFFFF
    x = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    x += list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))

    def qr(a: int, b: int, c: int, d: int) -> None:
        x[a] = (x[a] + x[b]) & m
        x[d] ^= x[a]
        x[d] = ((x[d] << 16) | (x[d] >> 16)) & m
        x[c] = (x[c] + x[d]) & m
        x[b] ^= x[c]
        x[b] = ((x[b] << 12) | (x[b] >> 20)) & m
        x[a] = (x[a] + x[b]) & m
        x[d] ^= x[a]
        x[d] = ((x[d] << 8) | (x[d] >> 24)) & m
        x[c] = (x[c] + x[d]) & m
        x[b] ^= x[c]
        x[b] = ((x[b] << 7) | (x[b] >> 25)) & m

    for _ in range(10):  # 20 rounds: a column round and a diagonal round each
        for a, b, c, d in _QUARTER_ROUNDS:
            qr(a, b, c, d)
    return struct.pack("<8I", *x[0:4], *x[12:16])


class CookieChecker:
    """Gateway side of mac1/mac2 and cookie replies. Stateless per client.

    Made for the flood path (docs/security.md): the keyed BLAKE2s of mac1 and of the
    current cookie secret are set up once and copied per message; the caller computes a
    source's cookie once (:meth:`cookie`) for both the mac2 check and the reply; a reply is
    sealed by one ChaCha20-Poly1305 object kept with the cookie secret. That is XChaCha20-
    Poly1305 exactly (what :func:`read_cookie_reply` opens): the reply nonce is a random
    16-byte prefix, drawn with each cookie secret, followed by an 8-byte counter, so the
    XChaCha20 subkey (HChaCha20 of the reply key and the prefix) is the same for every reply
    under one secret, and every nonce is unique."""

    def __init__(self, me: Identity, rng: Rng) -> None:
        self._me = me
        self._rng = rng
        self._mac1 = hashlib.blake2s(digest_size=16, key=me.mac1_key)
        self._secret_mac = self._mac1
        self._secret = b""
        self._secret_at = -1e18
        self._aead: ChaCha20Poly1305 | None = None
        self._subkey = b""
        self._nonce_prefix = b""
        self._nonce_n = 0

    def check_mac1(self, data: bytes, mac_offset: int) -> bool:
        h = self._mac1.copy()
        h.update(data[:mac_offset])
        return hmac.compare_digest(h.digest(), data[mac_offset : mac_offset + 16])

    def _rotate(self, now: float) -> None:
        self._secret = self._rng(32)
        self._secret_mac = hashlib.blake2s(digest_size=16, key=self._secret)
        self._secret_at = now
        self._nonce_prefix = self._rng(16)
        self._nonce_n = 0
        self._subkey = hchacha20(self._me.cookie_key, self._nonce_prefix)
        self._aead = ChaCha20Poly1305(self._subkey)

    def _current(self, now: float) -> None:
        """The cookie secret in use at ``now`` (rotated every COOKIE_SECRET_LIFETIME s)."""
        if now - self._secret_at >= COOKIE_SECRET_LIFETIME:
            self._rotate(now)

    def gate_keys(self, now: float) -> tuple[bytes, bytes, bytes]:
        """What a gate needs to check mac2 and to seal cookie replies as this checker does
        (jumping/service/_fastio.c; it has the mac1 key already): the current cookie
        secret, the reply cipher's key and its nonce prefix. A gate counts its reply
        nonces from 2**63 under each prefix, this checker from 1: no nonce is used twice."""
        self._current(now)
        return self._secret, self._subkey, self._nonce_prefix

    def cookie(self, now: float, address: bytes) -> bytes:
        """The cookie of a source address under the current secret (rotated every
        COOKIE_SECRET_LIFETIME seconds)."""
        self._current(now)
        h = self._secret_mac.copy()
        h.update(address)
        return h.digest()

    def check_mac2(self, cookie: bytes, data: bytes, mac_offset: int) -> bool:
        """Does the message carry a mac2 under ``cookie`` (from :meth:`cookie`)?"""
        expected = mac(cookie, data[: mac_offset + 16])
        return hmac.compare_digest(expected, data[mac_offset + 16 : mac_offset + 32])

    def cookie_reply(self, cookie: bytes, data: bytes, mac_offset: int) -> bytes:
        """The cookie reply to the message ``data``, carrying ``cookie`` (from
        :meth:`cookie`, which also set up the cipher)."""
        aead = self._aead
        assert aead is not None, "cookie() first"
        self._nonce_n += 1
        tail = self._nonce_n.to_bytes(8, "little")
        sealed = aead.encrypt(b"\0\0\0\0" + tail, cookie, data[mac_offset : mac_offset + 16])
        sender = int.from_bytes(data[4:8], "little")
        return wire.pack_cookie_reply(sender, self._nonce_prefix + tail, sealed)


class Response:
    """The gateway's side: read an initiation, then (once the caller has decided which
    session it belongs to) write the response."""

    def __init__(
        self,
        me: Identity,
        data: bytes,
        rng: Rng,
        static_static: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        """``static_static``: DH(our static key, a peer's) computed in advance, per peer (see
        :class:`~jumping.core.noise.HandshakeState`); one of the responder's four DH
        operations less per handshake."""
        if len(data) != wire.INIT_LEN:
            raise HandshakeError("BAD_LENGTH")
        _t, _v, _r, self.remote_index, noise_msg = wire.INIT.unpack_from(data)
        self._hs = HandshakeState(
            PATTERN, False, PROLOGUE, s=me.private, rng=rng, static_static=static_static,
            s_pub=me.public,
        )  # fmt: skip
        try:
            payload = self._hs.read_message(noise_msg)
        except NoiseError:
            raise HandshakeError("HANDSHAKE_AUTH_FAILED") from None
        remote = self._hs.remote_static
        assert remote is not None
        self.remote_static: bytes = remote
        self.timestamp_ms, self.session_id, self.state_version = wire.INIT_PAYLOAD.unpack(payload)

    def write(
        self, local_index: int, session_id: bytes, state_version: int, psk: bytes = NO_PSK
    ) -> tuple[bytes, Established]:
        """The response, under ``psk``: the pre-shared key of the peer the initiation came
        from (:attr:`remote_static`)."""
        self._hs.psks = [psk]
        payload = wire.RESP_PAYLOAD.pack(session_id, state_version)
        body = wire.pack_resp(local_index, self.remote_index, self._hs.write_message(payload))
        body += mac(_hash(LABEL_MAC1 + self.remote_static), body)
        message = body + bytes(wire.MAC_LEN)
        recv, send = self._hs.split()
        assert send.k is not None and recv.k is not None
        return message, Established(
            send.k, recv.k, local_index, self.remote_index, session_id, state_version,
            self.remote_static, self.timestamp_ms,
        )  # fmt: skip
