"""
Anti-replay window in the style of RFC 6479: a ring of 64-bit blocks, O(1) per packet.

Semantics: ``top`` is the highest counter accepted so far. A counter is fresh if it is
greater than ``top``, or within the last ``bits - 64`` counters below ``top`` and not yet
seen. ``check`` only looks (before decryption); ``update`` marks the counter seen and must
be called only after the packet authenticated, so a forged packet can never move the
window.
"""

from __future__ import annotations

from array import array

LIMIT = 2**64
_SIZES: dict[int, int] = {}


class ReplayWindow:
    __slots__ = ("bits", "blocks", "mask", "top", "size")

    def __init__(self, bits: int = 8192) -> None:
        if not isinstance(bits, int) or bits < 128 or bits > 65536 or bits & (bits - 1):
            raise ValueError(f"replay window must be a power of two in 128..65536, got {bits!r}")
        self.bits = bits
        # usable window, as in RFC 6479; one int object per window size, not per keypair
        self.size = _SIZES.setdefault(bits, bits - 64)
        # 64-bit words in one buffer, not a list of ints: no object per block (a busy
        # window would hold 128 ints of 36 bytes each), and the C data plane marks counters
        # in it without allocating
        self.blocks = array("Q", bytes(bits // 8))
        self.mask = bits // 64 - 1
        self.top = -1

    def check(self, counter: int) -> bool:
        if counter > self.top:
            return counter < LIMIT
        if counter < 0 or self.top - counter >= self.size:
            return False
        return not (self.blocks[(counter >> 6) & self.mask] >> (counter & 63)) & 1

    def update(self, counter: int) -> bool:
        top = self.top
        blocks = self.blocks
        mask = self.mask
        if counter > top:
            if counter >= LIMIT:
                return False
            index = counter >> 6
            current = (top >> 6) if top >= 0 else -1
            diff = index - current
            if diff > 0:
                if diff > mask:
                    diff = mask + 1
                for i in range(1, diff + 1):
                    blocks[(current + i) & mask] = 0
            self.top = counter
        elif counter < 0 or top - counter >= self.size:
            return False
        i = (counter >> 6) & mask
        bit = 1 << (counter & 63)
        if blocks[i] & bit:
            return False
        blocks[i] |= bit
        return True

    def check_and_update(self, counter: int) -> bool:
        return self.check(counter) and self.update(counter)


class WipedWindow(ReplayWindow):
    """The window of a keypair whose keys are wiped (an idle session's expired keys are kept
    as a tombstone, so that what still arrives under them is named and counted): nothing can
    be accepted without the keys, so it holds no bits (a window of 8192 bits is 1-5 KiB per
    keypair: a list of 128 slots and the ints in them). ``check`` passes, so that a packet
    reaches its caller's count of wiped keys; ``update`` accepts nothing. Stateless: one
    instance, :data:`WIPED`, serves every wiped keypair."""

    __slots__ = ()
    top = -1
    blocks = array("Q")  # empty and never mutated: check/update below never touch it
    bits = size = mask = 0

    def __init__(self) -> None:  # no bits
        pass

    def check(self, counter: int) -> bool:
        return True

    def update(self, counter: int) -> bool:
        return False


WIPED = WipedWindow()
