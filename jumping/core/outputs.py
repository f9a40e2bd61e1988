"""
What the core asks its caller to do. Frozen: the core never gets a callback.

The service executes them in order: ``Send`` on the named path, ``WriteTun`` to the TUN
device, ``Emit`` to the event pipeline, ``ArmTimer`` to call ``tick`` again, ``Claim``,
``Renew``, ``Adopt`` and ``Release`` against the ownership backend, ``ConfirmPath`` by
calling the path's ``confirm()``. ``Drop`` is informational (already counted).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from jumping.core.pathhandle import PathHandle, ProvisionalPath
from jumping.core.segments import SegmentRun


@dataclass(frozen=True, slots=True)
class Send:
    path: PathHandle
    data: bytes


@dataclass(frozen=True, slots=True)
class WriteTun:
    #: an IP packet, or consecutive pieces of one TCP super-packet (written as one GSO packet)
    data: bytes | SegmentRun


@dataclass(frozen=True, slots=True)
class Emit:
    """One SIEM event (docs/events.md) minus what the pipeline adds (schema, ts, node, seq)."""

    event_type: str
    session_id: str | None
    state_version: int
    reason_code: str | None
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """Call ``tick`` no later than ``at`` (seconds, the caller's clock)."""

    at: float


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str


@dataclass(frozen=True, slots=True)
class Claim:
    """Ask the ownership backend for this session by compare-and-swap (``token``: None to
    create, else the token of the record read); answer with ``GatewayCore.claimed``. Sent
    only once the client has proved the session's keys on this node."""

    session_id: str
    record: Mapping[str, Any]
    token: int | None


@dataclass(frozen=True, slots=True)
class Renew:
    """Rewrite the record this node owns (fenced by ``token``), e.g. a newer accepted
    handshake timestamp after a rekey; answer with ``GatewayCore.renewed``."""

    session_id: str
    record: Mapping[str, Any]
    token: int


@dataclass(frozen=True, slots=True)
class Adopt:
    """A client resumed here a session another gateway of the cluster owns: read its record
    and check it against the authenticated initiator (``client_key``, hex), its
    ``state_version`` and its initiation's ``handshake_ts_ms``
    (:func:`jumping.core.gateway.adoption_error`); answer with
    ``GatewayCore.adoption_checked`` and the record's token. Nothing is claimed yet: the
    core claims (``Claim`` with that token) once the client proved the new keys here."""

    session_id: str
    client_key: str
    state_version: int
    handshake_ts_ms: int


@dataclass(frozen=True, slots=True)
class Release:
    session_id: str
    token: int | None


@dataclass(frozen=True, slots=True)
class ConfirmPath:
    """A packet authenticated on a path its transport marked ``provisional``: the transport
    may now keep it (``path.confirm()``). Unauthenticated sources never get a table entry."""

    path: ProvisionalPath


Output = Union[Send, WriteTun, Emit, ArmTimer, Drop, Claim, Renew, Adopt, Release, ConfirmPath]
