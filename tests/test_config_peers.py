"""``[[peers]] allowed_ips`` that overlap are refused, naming the first prefix (in file order)
that overlaps an earlier one and that earlier one: found by one sweep in address order
(jumping.config._first_overlap), the same answer as testing each prefix against every
earlier one (the reference below), which took minutes for 10 000 peers."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jumping.config import _first_overlap, load_config
from jumping.errors import ConfigError
from jumping.keys import encode_key, write_keypair

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def reference(nets: list[Net]) -> tuple[int, int] | None:
    for k, net in enumerate(nets):
        for j in range(k):
            if net.version == nets[j].version and net.overlaps(nets[j]):
                return k, j
    return None


# a small address space, so that prefixes nest, repeat and mix families often
v4 = st.builds(
    lambda a, n: ipaddress.ip_network((a, n), strict=False),
    st.integers(0, 2**8 - 1).map(lambda x: x << 24 | x << 4),
    st.integers(0, 32),
)
v6 = st.builds(
    lambda a, n: ipaddress.ip_network((a, n), strict=False),
    st.integers(0, 2**8 - 1).map(lambda x: x << 120 | x << 60),
    st.integers(0, 128),
)


@settings(max_examples=400)
@given(st.lists(st.one_of(v4, v6), max_size=30))
def test_the_sweep_finds_what_testing_every_pair_finds(nets: list[Net]) -> None:
    assert _first_overlap(nets) == reference(nets)


def write(tmp: Path, peers: list[list[str]]) -> Path:
    write_keypair(tmp / "g.key")
    body = "".join(
        f'[[peers]]\npublic_key = "{encode_key(write_keypair(tmp / f"p{i}.key"))}"\n'
        f"allowed_ips = {ips!r}\n".replace("'", '"')
        for i, ips in enumerate(peers)
    )
    conf = tmp / "g.toml"
    conf.write_text(
        '[node]\nrole = "gateway"\nnode_id = "g"\nprivate_key = "g.key"\n'
        '[tun]\nname = "jx0"\naddress = "10.9.0.1/24"\n'
        '[[listen]]\ntransport = "udp"\nhost = "127.0.0.1"\nport = 51820\n' + body
    )
    return conf


def test_disjoint_peers_load(tmp_path: Path) -> None:
    conf = load_config(write(tmp_path, [["10.9.0.2/32"], ["10.9.0.3/32", "fd00::3/128"]]))
    assert [p.allowed_ips for p in conf.peers] == [("10.9.0.2/32",), ("10.9.0.3/32", "fd00::3/128")]


@pytest.mark.parametrize(
    ("peers", "message"),
    [
        ([["10.9.0.2/32"], ["10.9.0.0/24"]], "[[peers]] #2 allowed_ips: 10.9.0.0/24 overlaps 10.9.0.2/32 of [[peers]] #1"),
        ([["10.9.0.0/24"], ["fd00::/64"], ["10.9.0.7/32"]], "[[peers]] #3 allowed_ips: 10.9.0.7/32 overlaps 10.9.0.0/24 of [[peers]] #1"),
        ([["10.9.0.4/30", "10.9.0.5/32"]], "[[peers]] #1 allowed_ips: 10.9.0.5/32 overlaps 10.9.0.4/30 of [[peers]] #1"),
    ],
)  # fmt: skip
def test_overlapping_peers_are_refused_with_both_named(
    tmp_path: Path, peers: list[list[str]], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, peers))
    assert str(err.value).endswith(message), str(err.value)
