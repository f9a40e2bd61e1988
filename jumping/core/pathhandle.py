"""
What the core holds of a path: :class:`PathHandle`, the static type of every path object
the sans-IO core takes, keeps (a session's ``path``, a client's candidates) and returns in
its outputs.

A path is a transport's object (an :class:`~jumping.interfaces.ITransport`: a UDP address,
a TCP connection, a QUIC path); the core never calls it. It compares paths by identity,
keys tables by them (so they hash), and reads the members below; the service executes the
outputs that carry one (``Send``: :meth:`PathHandle.send`; ``ConfirmPath``:
:meth:`ProvisionalPath.confirm`). A transport plugin's path objects provide these members
(``mypy`` checks the built-in ones and the QUIC plugin's against them); the zope
interfaces in :mod:`jumping.interfaces` remain the contract checked at run time.
"""

from __future__ import annotations

from typing import Protocol


class PathHandle(Protocol):
    """A transport's path as the core sees it (the members of ITransport it uses)."""

    @property
    def transport_id(self) -> str:
        """Unique among the node's live transports; in events, and selection's tie-break."""

    @property
    def kind(self) -> str:
        """``'udp'``, ``'tcp'``, ``'quic'``...: in events."""

    @property
    def remote_address(self) -> tuple[str, int]:
        """``(host, port)`` of the far end: what cookies, rate limits and the client's
        gateway hosts are keyed by."""

    @property
    def connected(self) -> bool:
        """False once closed or lost: a client's selection skips such a path."""

    def send(self, data: bytes) -> None:
        """One datagram to the far end (the service, executing a ``Send``)."""


class ProvisionalPath(PathHandle, Protocol):
    """A listener's path not yet confirmed (IProvisionalPath, optional): the core reads
    ``provisional`` with a default of False and asks for :meth:`confirm` in a
    ``ConfirmPath`` once a packet on it authenticated."""

    @property
    def provisional(self) -> bool:
        """True until :meth:`confirm` was called."""

    def confirm(self) -> None:
        """An authenticated packet arrived on this path: the transport may keep it."""
