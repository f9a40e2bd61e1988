"""
``jumpctl audit``: check a history of SIEM events against the contract and the invariants.

- :mod:`jumping.audit.engine`: the checks (:class:`Auditor`, :func:`audit_events`), pure;
- :mod:`jumping.audit.sources`: JSON-lines files, a Kafka topic, the chain key file;
- :mod:`jumping.audit.render`: timelines, violations and the summary as text;
- :mod:`jumping.audit.plot`: the timeline picture (matplotlib);
- :mod:`jumping.audit.cli`: the command (:func:`main`; :func:`add_arguments` and :func:`run`
  mount it in ``jumpctl``).

``python3 -m jumping.audit`` runs the command. See docs/events.md, "Auditing".
"""

from __future__ import annotations

from jumping.audit.cli import add_arguments, main, run
from jumping.audit.engine import (
    CHECKS,
    UNASSIGNED_SESSION,
    AuditInputError,
    Auditor,
    AuditReport,
    InputError,
    NodeInfo,
    Record,
    SessionTrack,
    Violation,
    audit_events,
)
from jumping.audit.plot import plot_timeline
from jumping.audit.render import format_summary, format_timeline, format_violations
from jumping.audit.sources import load_chain_key, read_jsonl, read_kafka
from jumping.chain import ZERO_HASH, canonical, chain_hash

__all__ = [
    "CHECKS", "UNASSIGNED_SESSION", "ZERO_HASH", "AuditInputError", "Auditor", "AuditReport",
    "InputError", "NodeInfo", "Record", "SessionTrack", "Violation", "add_arguments",
    "audit_events", "canonical", "chain_hash", "format_summary", "format_timeline",
    "format_violations", "load_chain_key", "main", "plot_timeline", "read_jsonl",
    "read_kafka", "run",
]  # fmt: skip
