"""
The gateway's routing table: which session a TUN packet goes to, by its destination.

Three parts, all independent of the number of sessions per look-up and per change:

- **host routes** (``routes`` on the gateway): a peer's /32 and /128 allowed IPs, pointing
  at the session that confirmed last (``_set_routes``), removed with that session;
- **configured hosts** (:class:`HostTable`): every peer's /32 and /128 allowed IPs, pointing
  at the peer (or the peers, in configuration order, that list the same one). It changes
  only with the configuration, never with a session: a session's birth or death touches
  no table for them (issue 18: one table of 100 000 entries less per birth and per death,
  and its 50 bytes per session). The match is the newest session of the first of those
  peers that has one;
- **prefix routes** (:class:`PrefixTable`): every wider allowed IP of every peer that has a
  live session, as one dict per prefix length (per IP version); a look-up tries the
  lengths present, longest first, so it costs one dict probe per distinct prefix length
  in use (a handful), not one test per peer. The match is the peer's newest session.

A destination goes to its host route, else to its configured host, else to the longest
matching prefix (a host is the longest prefix there is); between peers that list the very
same prefix, the one configured first wins.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Callable
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _insert(table: dict[Any, Any], key: Any, peer: Any, rank: Callable[[Any], int]) -> None:
    """Add ``peer`` under ``key``: the entry is the peer itself, or a list of the peers
    (in configuration order: ``rank``) when several list the same key (the common case is
    one, and a list per entry costs 64 bytes, issue 18)."""
    entry = table.get(key)
    if entry is None:
        table[key] = peer
    elif type(entry) is not list:
        if entry is not peer:
            table[key] = sorted((entry, peer), key=rank)
    elif peer not in entry:
        bisect.insort(entry, peer, key=rank)


def _discard(table: dict[Any, Any], key: Any, peer: Any) -> bool:
    """Take ``peer`` from under ``key`` (a list of one becomes the peer); True if the key
    is gone from ``table``."""
    entry = table.get(key)
    if entry is peer:
        del table[key]
        return True
    if type(entry) is list and peer in entry:
        entry.remove(peer)
        if len(entry) == 1:
            table[key] = entry[0]
    return False


class PrefixTable:
    """Longest-prefix match from an address (packed bytes) to a peer."""

    __slots__ = ("_tables", "_lengths", "_rank")

    def __init__(self, rank: Callable[[Any], int]) -> None:
        #: address length in bytes (4, 16) -> prefix length -> network as int -> the peer,
        #: or the peers that list that prefix (``_insert``)
        self._tables: dict[int, dict[int, dict[int, Any]]] = {4: {}, 16: {}}
        #: address length -> prefix lengths in use, longest first
        self._lengths: dict[int, tuple[int, ...]] = {4: (), 16: ()}
        self._rank = rank

    @staticmethod
    def _key(n: Network) -> tuple[int, int, int]:
        size = 4 if n.version == 4 else 16
        return size, n.prefixlen, int(n.network_address) >> (size * 8 - n.prefixlen)

    def add(self, peer: Any, networks: tuple[Network, ...]) -> None:
        rank = self._rank
        for n in networks:
            size, plen, key = self._key(n)
            by_len = self._tables[size]
            table = by_len.get(plen)
            if table is None:
                table = by_len[plen] = {}
                self._lengths[size] = tuple(sorted(by_len, reverse=True))
            _insert(table, key, peer, rank)

    def remove(self, peer: Any, networks: tuple[Network, ...]) -> None:
        for n in networks:
            size, plen, key = self._key(n)
            by_len = self._tables[size]
            table = by_len.get(plen)
            if table is None or not _discard(table, key, peer) or table:
                continue
            del by_len[plen]
            self._lengths[size] = tuple(sorted(by_len, reverse=True))

    def lookup(self, address: bytes) -> Any:
        """The peer whose prefix matches ``address`` longest (None: no match)."""
        size = len(address)
        lengths = self._lengths.get(size)
        if not lengths:
            return None
        a = int.from_bytes(address, "big")
        bits = size * 8
        tables = self._tables[size]
        for plen in lengths:
            entry = tables[plen].get(a >> (bits - plen))
            if entry is not None:
                return entry[0] if type(entry) is list else entry
        return None

    def __len__(self) -> int:
        return sum(len(t) for by_len in self._tables.values() for t in by_len.values())


class HostTable:
    """The configured /32 and /128 allowed IPs (packed address -> peer, or the peers that
    list it, in configuration order); a look-up skips peers without a live session."""

    __slots__ = ("_hosts", "_rank")

    def __init__(self, rank: Callable[[Any], int]) -> None:
        self._hosts: dict[bytes, Any] = {}
        self._rank = rank

    def add(self, peer: Any, keys: frozenset[bytes]) -> None:
        hosts, rank = self._hosts, self._rank
        for key in keys:
            _insert(hosts, key, peer, rank)

    def remove(self, peer: Any, keys: frozenset[bytes]) -> None:
        hosts = self._hosts
        for key in keys:
            _discard(hosts, key, peer)

    def lookup(self, address: bytes) -> Any:
        """The newest session of the first peer listing ``address`` that has one (None:
        no such peer)."""
        entry = self._hosts.get(address)
        if entry is None:
            return None
        if type(entry) is list:
            for peer in entry:
                if peer.sessions:
                    return peer.sessions[-1]
            return None
        live = entry.sessions
        return live[-1] if live else None

    def __len__(self) -> int:
        return len(self._hosts)
