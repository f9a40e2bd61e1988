"""
The keypair's AEAD (ChaCha20-Poly1305) and the data plane's per-packet loops.

:class:`PyAead` is the reference, in Python on ``cryptography``; ``jumping.core._dataplane``
(C, optional: built by ``pip install .`` where a C compiler and OpenSSL's headers exist)
has the same type with every method in C, one libcrypto context per key and direction
re-armed with each nonce instead of a fresh one per call. :data:`Aead` is the C type when
it is importable (and ``JUMPING_PURE_PYTHON`` is not set), else :class:`PyAead`; the tests
run both and check that they give the same bytes, the same results and the same replay
window.

Methods (besides ``encrypt``/``decrypt``, with cryptography's signature and InvalidTag):

- ``seal(header, plaintext)``: ``header | AEAD(plaintext)``, the 16-byte transport header
  (:data:`jumping.core.wire.TRANSPORT_HEADER`) as associated data and its counter as the
  nonce;
- ``open(datagram)``: the plaintext of a transport message, or None if it does not
  authenticate;
- ``seal_pieces`` / ``open_pieces``: a TCP super-packet as DATA_SEGMENT datagrams, and the
  in-order pieces of one joined back (:mod:`jumping.core.segments`).
"""

from __future__ import annotations

import os
import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from jumping.core import wire
from jumping.core.replay import ReplayWindow

_NONCE_PAD = bytes(4)
_HDR = wire.TRANSPORT_HEADER
_PACK_HEADER = wire.TRANSPORT_HEADER.pack
_SEGMENT = wire.MessageType.DATA_SEGMENT
_SEGMENT_BYTE = bytes((_SEGMENT,))
_VERSION = wire.VERSION
_LAST = 0x8000
_MAX_PIECES = 0x7FFF


class PyAead:
    """ChaCha20-Poly1305 for one key, with the data plane's loops (the reference)."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        return self._aead.encrypt(nonce, data, associated_data)

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        return self._aead.decrypt(nonce, data, associated_data)

    def seal(self, header: bytes, plaintext: bytes) -> bytes:
        if len(header) != 16:
            raise ValueError("a transport header is 16 bytes")
        return header + self._aead.encrypt(_NONCE_PAD + header[8:], plaintext, header)

    def open(self, datagram: bytes) -> bytes | None:
        if len(datagram) < 32:
            return None  # no room for a header and a tag
        try:
            return self._aead.decrypt(_NONCE_PAD + datagram[8:16], datagram[16:], datagram[:16])
        except InvalidTag:
            return None

    def seal_pieces(
        self, packet: bytes, hl: int, gso_size: int, remote_index: int, counter: int
    ) -> list[bytes]:
        """One DATA_SEGMENT datagram per ``gso_size`` piece of the payload, each behind the
        super-packet's header and sealed on its own, counters from ``counter`` on."""
        if hl < 0 or hl > len(packet) or gso_size <= 0:
            raise ValueError("bad header length or segment size")
        count = -(-(len(packet) - hl) // gso_size) or 1
        header = packet[:hl]
        view = memoryview(packet)
        encrypt = self._aead.encrypt
        last = count - 1
        out: list[bytes] = []
        append = out.append
        off = hl
        for k in range(count):
            h = _PACK_HEADER(
                _SEGMENT, _VERSION, k | _LAST if k == last else k, remote_index, counter + k
            )
            append(h + encrypt(_NONCE_PAD + h[8:], header + view[off : off + gso_size], h))
            off += gso_size
        return out

    def open_pieces(
        self,
        datagrams: list[bytes],
        i: int,
        index: bytes,
        replay: ReplayWindow,
        nxt: int,
        template: bytes,
        gso: int,
        end: int,
        payload: int,
        pieces: list[Any],
    ) -> tuple[int, int, int, bool, int]:
        """The DATA_SEGMENT datagrams from ``datagrams[i]`` on that are, in order, the next
        pieces of a run (receiver index ``index``, next piece ``nxt``, header
        ``template``, segment size ``gso``, ``end`` of ``payload`` payload bytes so far)
        with counters above the replay window's top: each authenticated, its counter
        marked in ``replay``, its payload appended to ``pieces``. Stops at the first
        datagram that is not such a piece (nothing was changed for it) and after the last
        piece. Returns ``(i, nxt, end, last, taken_bytes)``."""
        decrypt = self._aead.decrypt
        unpack = _HDR.unpack_from
        hl = len(template)
        add = pieces.append
        n = len(datagrams)
        taken = 0
        last = False
        while i < n:
            data = datagrams[i]
            if data[:1] != _SEGMENT_BYTE or data[4:8] != index:
                break
            try:
                _t, v, chunk, _idx, counter = unpack(data)
            except struct.error:
                break
            if v != _VERSION or chunk & _MAX_PIECES != nxt or counter <= replay.top:
                break
            m = len(data) - 32 - hl
            is_last = chunk & _LAST
            if is_last:
                if m <= 0 or m > gso or end + m != payload:
                    break
            elif m != gso or end + m >= payload:
                break
            try:
                plain = decrypt(_NONCE_PAD + data[8:16], data[16:], data[:16])
            except InvalidTag:
                break  # the caller's ordinary path counts it
            if not plain.startswith(template):
                break
            replay.update(counter)
            add(memoryview(plain)[hl:])
            end += m
            nxt += 1
            taken += len(data)
            i += 1
            if is_last:
                last = True
                break
        return i, nxt, end, last, taken


def _compiled() -> Any:
    if os.environ.get("JUMPING_PURE_PYTHON"):
        return None
    try:
        from jumping.core import _dataplane  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _dataplane


_C = _compiled()
#: the C type (jumping/core/_dataplane.c) if it was built, else None
CAead: Any = _C.Aead if _C is not None else None
#: what keypairs use
Aead: Any = CAead if CAead is not None else PyAead
#: the C replay window (one object, blocks inline) if it was built, else None
CReplayWindow: Any = _C.ReplayWindow if _C is not None else None
#: the replay window keypairs use: same semantics either way (tests/core/test_replay.py)
Window: Any = CReplayWindow if CReplayWindow is not None else ReplayWindow
#: a session's numbers unboxed, the base of jumping.core.session.Session, if it was built
CSessionBase: Any = _C.SessionBase if _C is not None else None
#: "c" or "python": which of the two the data plane runs (for logs and benchmarks)
IMPLEMENTATION = "c" if CAead is not None else "python"
