"""Where audited events come from: JSON-lines files (or stdin), a Kafka topic read from its
beginning to its end, and the chain key file."""

from __future__ import annotations

import base64
import binascii
import json
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from jumping.audit.engine import AuditInputError, Auditor
from jumping.chain import KEY_BYTES


def read_jsonl(auditor: Auditor, stream: IO[bytes], name: str) -> None:
    """Add every line of ``stream``; a bad line is an input error with its line number."""
    for lineno, raw in enumerate(stream, 1):
        where = f"{name}:{lineno}"
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            auditor.input_error(where, f"not UTF-8 ({e.reason} at byte {e.start})")
            continue
        if line:
            _add_json(auditor, line, where)


#: fields whose values repeat across events (a node's names, the enumerations, a session's
#: and a path's ids): one string object each, shared by every event that carries it
_SHARED_VALUES = frozenset((
    "schema", "event_type", "node_id", "boot_id", "policy_version", "reason_code",
    "session_id", "previous_state", "new_state", "owner", "transport_id", "transport_kind",
    "old_transport_id", "old_transport_kind", "new_transport_id", "new_transport_kind",
))  # fmt: skip


def _shared(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys (and the values of :data:`_SHARED_VALUES`) are interned:
    ``json`` makes new strings for every object, and the auditor keeps every event until it
    has read them all; this is about 60 % less memory per event (about 0.8 KB instead of 2
    for the gateway's events), what lets millions of them fit."""
    intern = sys.intern
    return {intern(k): intern(v) if k in _SHARED_VALUES and type(v) is str else v for k, v in pairs}


_decoder = json.JSONDecoder(object_pairs_hook=_shared)


def _add_json(auditor: Auditor, text: str | bytes, where: str) -> None:
    try:
        if isinstance(text, bytes | bytearray):
            text = text.decode("utf-8")
        event = _decoder.decode(text)
    except ValueError as e:
        auditor.input_error(where, f"bad JSON: {e}")
        return
    if not isinstance(event, dict):
        auditor.input_error(where, f"not a JSON object but {type(event).__name__}")
        return
    auditor.add(event, where)


def _kafka_api() -> tuple[Callable[..., Any], Callable[[str, int], Any]]:
    try:
        from kafka import KafkaConsumer, TopicPartition
    except ImportError:
        raise AuditInputError("--kafka needs kafka-python: pip install kafka-python") from None
    return KafkaConsumer, TopicPartition


def read_kafka(
    auditor: Auditor,
    bootstrap: str,
    topic: str,
    timeout_s: float,
    api: tuple[Callable[..., Any], Callable[[str, int], Any]] | None = None,
) -> None:
    """
    Read ``topic`` from the beginning of every partition up to its end *as of now* (the end
    offsets are taken first), giving up after ``timeout_s`` with an input error.
    """
    consumer_cls, tp_cls = api or _kafka_api()
    deadline = time.monotonic() + timeout_s
    try:
        consumer = consumer_cls(
            bootstrap_servers=bootstrap.split(","),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
    except Exception as e:
        raise AuditInputError(f"kafka {bootstrap}: cannot connect: {e}") from None
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise AuditInputError(f"kafka {bootstrap}: no topic {topic!r}")
        tps = [tp_cls(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        left = {tp for tp in tps if consumer.position(tp) < end[tp]}
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(left))
                auditor.input_error(
                    f"kafka {topic}", f"timed out after {timeout_s:g}s before the end of {names}"
                )
                break
            batch = consumer.poll(timeout_ms=int(min(remaining, 1.0) * 1000))
            for tp, messages in batch.items():
                for m in messages:
                    if m.offset < end[tp]:
                        _add_json(auditor, m.value, f"{tp.topic}[{tp.partition}]@{m.offset}")
            left = {tp for tp in left if consumer.position(tp) < end[tp]}
    except AuditInputError:
        raise
    except Exception as e:
        raise AuditInputError(f"kafka {bootstrap}: {type(e).__name__}: {e}") from None
    finally:
        consumer.close()


def load_chain_key(path: str) -> bytes:
    """The 32-byte chain key from a file holding it in hex, base64 or raw."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise AuditInputError(f"--chain-key {path}: {e.strerror}") from None
    text = data.strip()
    for decode in (bytes.fromhex, lambda s: base64.b64decode(s, validate=True)):
        try:
            key = decode(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError, binascii.Error):
            continue
        if len(key) == KEY_BYTES:
            return key
    if len(data) == KEY_BYTES:
        return data
    raise AuditInputError(f"--chain-key {path}: expected 32 bytes in hex, base64 or raw")
