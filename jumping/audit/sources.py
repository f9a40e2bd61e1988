"""Where audited events come from: JSON-lines files (or stdin), a Kafka topic read from its
beginning to its end, and the chain key file."""

from __future__ import annotations

import base64
import binascii
import json
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


def _add_json(auditor: Auditor, text: str | bytes, where: str) -> None:
    try:
        event = json.loads(text)
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
