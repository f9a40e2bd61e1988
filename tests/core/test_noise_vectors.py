"""
Our Noise implementation against the published test vectors (cacophony and snow files).

The vector files are test data fetched by ``tests/data/fetch-noise-vectors.sh`` (run by
``deploy/setup.sh``); without them this test fails, it never skips.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jumping.core.noise import PATTERNS, HandshakeState, NoiseError

VECTORS = Path(__file__).resolve().parent.parent / "data" / "noise-vectors"
SUFFIX = "_25519_ChaChaPoly_BLAKE2s"


def _load() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for fn in ("cacophony.txt", "snow.txt"):
        f = VECTORS / fn
        if not f.exists():
            continue
        for v in json.loads(f.read_text())["vectors"]:
            name = v.get("protocol_name") or v.get("name", "")
            if not name.endswith(SUFFIX) or "fallback" in json.dumps(v) or v.get("hybrid"):
                continue
            base = name.split("_")[1].split("psk")[0]
            if base in PATTERNS:
                out.append((f"{fn}:{name}", v))
    return out


CASES = _load()


def test_vectors_are_present_and_cover_what_we_use() -> None:
    assert VECTORS.exists(), f"missing {VECTORS}: run tests/data/fetch-noise-vectors.sh"
    names = {cid.split(":", 1)[1] for cid, _ in CASES}
    for needed in ("IK", "IKpsk2", "XX", "NN"):
        assert f"Noise_{needed}{SUFFIX}" in names
    assert len(CASES) >= 50


def _h(v: dict[str, Any], k: str) -> bytes | None:
    return bytes.fromhex(v[k]) if v.get(k) else None


def _pair(v: dict[str, Any]) -> tuple[HandshakeState, HandshakeState]:
    pattern = (v.get("protocol_name") or v["name"]).split("_")[1]
    psks = lambda side: [bytes.fromhex(x) for x in v.get(f"{side}_psks", [])]  # noqa: E731
    i = HandshakeState(
        pattern,
        True,
        _h(v, "init_prologue") or b"",
        s=_h(v, "init_static"),
        rs=_h(v, "init_remote_static"),
        psks=psks("init"),
        e=_h(v, "init_ephemeral"),
    )
    r = HandshakeState(
        pattern,
        False,
        _h(v, "resp_prologue") or b"",
        s=_h(v, "resp_static"),
        rs=_h(v, "resp_remote_static"),
        psks=psks("resp"),
        e=_h(v, "resp_ephemeral"),
    )
    return i, r


@pytest.mark.parametrize("cid,v", CASES, ids=[c for c, _ in CASES])
def test_vector(cid: str, v: dict[str, Any]) -> None:
    pattern = (v.get("protocol_name") or v["name"]).split("_")[1]
    one_way = len(PATTERNS[pattern.split("psk")[0]][2]) == 1
    init, resp = _pair(v)
    split = None
    for n, m in enumerate(v["messages"]):
        payload, expected = bytes.fromhex(m["payload"]), bytes.fromhex(m["ciphertext"])
        if split is None:
            writer, reader = (init, resp) if n % 2 == 0 else (resp, init)
            out = writer.write_message(payload)
            assert out == expected, f"message {n}"
            assert reader.read_message(out) == payload
            if init.complete:
                assert resp.complete
                if "handshake_hash" in v:
                    assert init.handshake_hash.hex() == v["handshake_hash"]
                assert resp.handshake_hash == init.handshake_hash
                split = (init.split(), resp.split())
        else:
            (i_send, i_recv), (r_recv, r_send) = split
            enc, dec = (i_send, r_recv) if one_way or n % 2 == 0 else (r_send, i_recv)
            out = enc.encrypt_with_ad(b"", payload)
            assert out == expected, f"transport message {n}"
            assert dec.decrypt_with_ad(b"", out) == payload


@pytest.mark.parametrize("cid,v", [c for c in CASES if "Noise_IK" + SUFFIX in c[0]][:1])
def test_any_flipped_bit_fails_authentication(cid: str, v: dict[str, Any]) -> None:
    for pos in range(0, 96 + 32, 7):
        init, resp = _pair(v)
        msg = bytearray(init.write_message(b"payload"))
        msg[pos % len(msg)] ^= 0x10
        with pytest.raises(NoiseError):
            resp.read_message(bytes(msg))


def test_ik_with_wrong_responder_key_fails() -> None:
    rng = iter(range(1, 1000))
    key = lambda: bytes([next(rng)]) * 32  # noqa: E731
    from jumping.core.noise import public_key

    s_i, s_r, s_other = key(), key(), key()
    init = HandshakeState("IK", True, s=s_i, rs=public_key(s_other), e=key())
    resp = HandshakeState("IK", False, s=s_r, e=key())
    with pytest.raises(NoiseError):
        resp.read_message(init.write_message(b""))


def test_out_of_turn_and_short_messages_raise() -> None:
    init = HandshakeState("NN", True, e=b"\x01" * 32)
    resp = HandshakeState("NN", False, e=b"\x02" * 32)
    with pytest.raises(NoiseError):
        resp.write_message(b"")
    with pytest.raises(NoiseError):
        resp.read_message(b"\x00" * 10)
    with pytest.raises(NoiseError):
        init.read_message(b"")
