"""
The attack packets of the wire-abuse scenarios, for Jumping and for WireGuard, written as
the frames file the generator (flood.c) sends: records of (u16 little-endian length, IPv4
packet). Every packet goes to the gateway's address and UDP port; spoofed sources come from
198.18.0.0/15 (the benchmarking range, RFC 2544), routed only inside the harness's
namespaces; the generator rewrites the source of packet k to one of ``sources`` addresses.

Scenarios (``SCENARIOS``): exact replay and bit-flipped replay of sealed packets captured
from the live session (capture.py), random garbage from one spoofed source, spoofed-source
packets of the handshake initiation's size with a valid-looking header and a wrong mac1,
transport-data junk (valid header, random receiver index) from 100 000 spoofed sources,
and real handshake initiations from a key the gateway does not know, with a valid mac1
(which needs only the gateway's public key), from 65 536 spoofed sources.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import struct
import time
from dataclasses import dataclass
from pathlib import Path

SPOOF_BASE = "198.18.0.0"
SPOOF_NET = "198.18.0.0/15"
GARBAGE_SOURCE = "198.18.0.1"


@dataclass(frozen=True)
class Scenario:
    name: str
    #: distinct spoofed source addresses the generator cycles through (0: as built)
    sources: int = 0
    #: flip one random bit per packet at or after this UDP payload offset (-1: none)
    flip_from: int = -1
    #: frames come from a capture of the live session
    replay: bool = False

    def generator_args(self) -> list[str]:
        args: list[str] = []
        if self.sources:
            args += ["-n", str(self.sources), "-s", SPOOF_BASE]
        if self.flip_from >= 0:
            args += ["-b", str(self.flip_from)]
        return args


#: the bit-flip starts after the receiver index (byte 8): flips in the counter make a fresh
#: counter (a full AEAD attempt), flips in the ciphertext a replayed counter
SCENARIOS = {
    s.name: s
    for s in (
        Scenario("exact_replay", replay=True),
        Scenario("bitflip_replay", replay=True, flip_from=8),
        Scenario("random_garbage"),
        Scenario("spoofed_handshake_size", sources=65536),
        Scenario("junk_100k_sources", sources=100_000),
        Scenario("valid_mac1_init_flood", sources=65536),
    )
}


# ---------------------------------------------------------------------------- packets
def _checksum(header: bytes) -> int:
    s = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _aton(a: str) -> bytes:
    return bytes(int(x) for x in a.split("."))


def udp_packet(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4/UDP packet (no UDP checksum: 0 means none for IPv4)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                      _aton(src), _aton(dst))  # fmt: skip
    hdr = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
    return hdr + udp


def write_frames(path: Path, packets: list[bytes]) -> None:
    with open(path, "wb") as f:
        for p in packets:
            f.write(struct.pack("<H", len(p)) + p)


def read_frames(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    out, i = [], 0
    while i + 2 <= len(data):
        (n,) = struct.unpack_from("<H", data, i)
        out.append(data[i + 2 : i + 2 + n])
        i += 2 + n
    return out


# ---------------------------------------------------------------------------- WireGuard
# The initiation of the WireGuard protocol (Noise_IKpsk2 as WireGuard uses it), built from
# its published description, so that the valid-mac1 flood costs wireguard-go exactly what a
# real stranger's initiation costs it.
_WG_CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
_WG_IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
_WG_LABEL_MAC1 = b"mac1----"


def _blake2s(*parts: bytes) -> bytes:
    return hashlib.blake2s(b"".join(parts)).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def _kdf2(ck: bytes, data: bytes) -> tuple[bytes, bytes]:
    t0 = _hmac(ck, data)
    t1 = _hmac(t0, b"\x01")
    return t1, _hmac(t0, t1 + b"\x02")


def _seal(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    return ChaCha20Poly1305(key).encrypt(bytes(12), plaintext, ad)


def _tai64n(t: float) -> bytes:
    return struct.pack(">QI", (1 << 62) + int(t), int((t % 1) * 1e9))


def wireguard_initiation(static_private: bytes, ephemeral_private: bytes, gateway_public: bytes,
                         sender_index: int, now: float) -> bytes:  # fmt: skip
    """A complete WireGuard handshake initiation (148 bytes, mac2 zero)."""
    from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base

    ck = _blake2s(_WG_CONSTRUCTION)
    h = _blake2s(_blake2s(ck, _WG_IDENTIFIER), gateway_public)
    e_pub = crypto_scalarmult_base(ephemeral_private)
    ck = _kdf2(ck, e_pub)[0]
    h = _blake2s(h, e_pub)
    ck, k = _kdf2(ck, crypto_scalarmult(ephemeral_private, gateway_public))
    static = _seal(k, crypto_scalarmult_base(static_private), h)
    h = _blake2s(h, static)
    ck, k = _kdf2(ck, crypto_scalarmult(static_private, gateway_public))
    timestamp = _seal(k, _tai64n(now), h)
    body = struct.pack("<II", 1, sender_index) + e_pub + static + timestamp
    mac1_key = _blake2s(_WG_LABEL_MAC1, gateway_public)
    return body + hashlib.blake2s(body, digest_size=16, key=mac1_key).digest() + bytes(16)


# ---------------------------------------------------------------------------- scenarios
WG_INIT_LEN = 148


def jumping_initiations(gateway_public: bytes, n: int, rng: random.Random) -> list[bytes]:
    from jumping.core.handshake import Identity, Initiation

    stranger = Identity(rng.randbytes(32))
    now = time.time()
    return [
        Initiation(stranger, gateway_public, rng.randbytes, now + i * 1e-3, i + 1).message
        for i in range(n)
    ]


def payloads(scenario: str, vpn: str, gateway_public: bytes, n: int = 4096,
             seed: int = 7) -> list[bytes]:  # fmt: skip
    """UDP payloads of a non-replay scenario for ``vpn`` ("jumping" or "wireguard-go")."""
    r = random.Random(seed)
    jumping = vpn == "jumping"
    if scenario == "random_garbage":
        return [r.randbytes(r.randrange(1, 1401)) for _ in range(n)]
    if scenario == "spoofed_handshake_size":
        if jumping:
            from jumping.core import wire

            return [wire.HEADER.pack(1, wire.VERSION, 0) + r.randbytes(wire.INIT_LEN - 4)
                    for _ in range(n)]  # fmt: skip
        return [b"\x01\0\0\0" + r.randbytes(WG_INIT_LEN - 4) for _ in range(n)]
    if scenario == "junk_100k_sources":
        if jumping:
            from jumping.core import wire

            return [wire.HEADER.pack(4, wire.VERSION, 0) + r.randbytes(60) for _ in range(n)]
        return [b"\x04\0\0\0" + r.randbytes(60) for _ in range(n)]
    if scenario == "valid_mac1_init_flood":
        m = min(n, 1024)
        if jumping:
            return jumping_initiations(gateway_public, m, r)
        stranger = r.randbytes(32)
        now = time.time()
        return [
            wireguard_initiation(
                stranger, r.randbytes(32), gateway_public, r.getrandbits(32), now + i * 1e-3
            )  # fmt: skip
            for i in range(m)
        ]
    raise ValueError(f"no payloads for scenario {scenario!r}")


def build(scenario: str, vpn: str, gateway_public: bytes, gateway: tuple[str, int],
          out: Path, capture: Path | None = None) -> int:  # fmt: skip
    """Write the frames file of ``scenario``; returns the number of frames."""
    if SCENARIOS[scenario].replay:
        if capture is None or not capture.exists():
            raise SystemExit(f"{scenario}: needs a capture of the live session")
        packets = read_frames(capture)
        if not packets:
            raise SystemExit(f"{scenario}: the capture {capture} is empty")
    else:
        src = GARBAGE_SOURCE
        packets = [udp_packet(src, 40000, gateway[0], gateway[1], p)
                   for p in payloads(scenario, vpn, gateway_public)]  # fmt: skip
    write_frames(out, packets)
    return len(packets)


def main() -> int:
    import argparse
    import base64

    ap = argparse.ArgumentParser(description="write the frames file of one scenario; print "
                                 "the generator's options for it")  # fmt: skip
    ap.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    ap.add_argument("--vpn", required=True, choices=("jumping", "wireguard-go"))
    ap.add_argument("--gw-pub", required=True, help="the gateway's public key, base64")
    ap.add_argument("--gw", required=True, help="the gateway's IPv4 address:port")
    ap.add_argument("--capture", type=Path, help="capture.py replay output (replay scenarios)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    host, _, port = a.gw.rpartition(":")
    n = build(a.scenario, a.vpn, base64.b64decode(a.gw_pub), (host, int(port)), a.out, a.capture)
    if n == 0:
        raise SystemExit("no frames")
    print(" ".join(SCENARIOS[a.scenario].generator_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
