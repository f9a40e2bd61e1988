"""The ``jumpctl audit`` command: options, running an audit, printing it, exit status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import IO

from jumping import schema as event_schema
from jumping.audit.engine import (
    DEFAULT_MAX_SWITCHES_PER_MIN,
    DEFAULT_RECOVERY_WINDOW_MS,
    DEFAULT_SWITCH_COOLDOWN_MS,
    DEFAULT_TOLERANCE_MS,
    AuditInputError,
    Auditor,
)
from jumping.audit.plot import plot_timeline
from jumping.audit.render import format_summary, format_timeline, format_violations
from jumping.audit.sources import load_chain_key, read_jsonl, read_kafka


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``jumpctl audit`` (mount with ``run`` as the handler)."""
    parser.add_argument(
        "files", nargs="*", metavar="FILE", help="JSON-lines event files in order ('-': stdin)"
    )
    parser.add_argument("--kafka", metavar="BOOTSTRAP", help="read a Kafka topic instead")
    parser.add_argument("--topic", help="the Kafka topic (with --kafka)")
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="S",
        help="give up reading Kafka after S seconds (default 30)",
    )  # fmt: skip
    parser.add_argument(
        "--chain-key", metavar="FILE",
        help="file with the 32-byte chain key (hex, base64 or raw); without it only seq is "
        "checked",
    )  # fmt: skip
    parser.add_argument(
        "--recovery-window-ms", type=int, default=DEFAULT_RECOVERY_WINDOW_MS, metavar="MS",
        help="bound on RECOVERING (default %(default)s, the policy default)",
    )  # fmt: skip
    parser.add_argument(
        "--tolerance-ms", type=int, default=DEFAULT_TOLERANCE_MS, metavar="MS",
        help="slack on the time bounds (recovery window, switch cooldown) for timer "
        "granularity (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--clock-skew-ms", type=int, default=0, metavar="MS",
        help="clock skew allowed between nodes when comparing ownership (default 0)",
    )  # fmt: skip
    parser.add_argument(
        "--switch-cooldown-ms", type=int, default=DEFAULT_SWITCH_COOLDOWN_MS, metavar="MS",
        help="minimum gap between two switches of a session (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--max-switches-per-min", type=int, default=DEFAULT_MAX_SWITCHES_PER_MIN, metavar="N",
        help="maximum switches of a session in any minute (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--order", choices=("arrival", "seq"), default=None,
        help="check each node's events in input order (files' default) or sorted by seq "
        "(Kafka's default; exact duplicates are then ignored)",
    )  # fmt: skip
    parser.add_argument(
        "--partial", action="store_true",
        help="histories may start after seq 0 (an excerpt or a rotated file)",
    )  # fmt: skip
    parser.add_argument(
        "--session", action="append", default=[], metavar="ID",
        help="show only sessions whose id starts with ID (repeatable)",
    )  # fmt: skip
    parser.add_argument("--no-timeline", action="store_true", help="print only the summary")
    parser.add_argument("--plot", metavar="PNG", help="draw the timeline (needs matplotlib)")


def run(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Run an audit from parsed arguments; returns the exit status (0, 1 or 2)."""
    out = out or sys.stdout
    err = err or sys.stderr
    if bool(args.files) == bool(args.kafka):
        print("jumpctl audit: give event FILEs or --kafka BOOTSTRAP --topic T", file=err)
        return 2
    if args.kafka and not args.topic:
        print("jumpctl audit: --kafka needs --topic", file=err)
        return 2
    for name in (
        "recovery_window_ms", "tolerance_ms", "clock_skew_ms", "switch_cooldown_ms",
        "max_switches_per_min",
    ):  # fmt: skip
        if getattr(args, name) < 0:
            print(f"jumpctl audit: --{name.replace('_', '-')} must be >= 0", file=err)
            return 2
    try:
        event_schema.validate({})
        key = load_chain_key(args.chain_key) if args.chain_key else None
        auditor = Auditor(
            key,
            recovery_window_ms=args.recovery_window_ms,
            tolerance_ms=args.tolerance_ms,
            clock_skew_ms=args.clock_skew_ms,
            switch_cooldown_ms=args.switch_cooldown_ms,
            max_switches_per_min=args.max_switches_per_min,
            order=args.order or ("seq" if args.kafka else "arrival"),
            partial=args.partial,
        )
        if args.kafka:
            read_kafka(auditor, args.kafka, args.topic, args.timeout)
        for name in args.files:
            if name == "-":
                read_jsonl(auditor, sys.stdin.buffer, "<stdin>")
                continue
            try:
                with open(name, "rb") as f:
                    read_jsonl(auditor, f, name)
            except OSError as e:
                auditor.input_error(name, f"cannot read: {e.strerror}")
        report = auditor.finish()
        if args.plot:
            plot_timeline(report, args.plot)
    except (AuditInputError, event_schema.SchemaUnavailable) as e:
        print(f"jumpctl audit: {e}", file=err)
        return 2
    if not args.no_timeline:
        print(format_timeline(report, args.session), file=out)
    if report.violations:
        print(format_violations(report), file=out)
    for problem in report.input_errors:
        print(f"INPUT ERROR {problem}", file=err)
    print(format_summary(report), file=out)
    if args.plot:
        print(f"  timeline picture: {args.plot}", file=out)
    return report.exit_status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jumpctl audit",
        description="Verify a history of Jumping SIEM events: schema, per-node seq and hash "
        "chain, state machine, versions, bounded recovery, one binding, one owner.",
        epilog="Exit status: 0 no violation, 1 violations (each printed), 2 usage or input errors.",
    )
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    return run(args)
