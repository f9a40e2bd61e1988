"""``jumpctl audit``: each invariant visible in events is checked, with the right message."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import random
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jumping import audit
from jumping.audit import Auditor, audit_events, main

DATA = Path(__file__).resolve().parent / "data" / "audit"
KEY = bytes(range(32))
KEY_FILE = str(DATA / "chain.key")
CHAIN_CHECKS = {"SEQ_START", "SEQ_GAP", "SEQ_ORDER", "CHAIN"}


def _fixture_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_fixtures", DATA / "make_fixtures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fx = _fixture_module()


def load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()]


CLEAN = load("clean")


def checks(report: audit.AuditReport) -> list[str]:
    return [v.check for v in report.violations]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ---------------------------------------------------------------------- fixtures
def test_fixtures_are_up_to_date() -> None:
    for name, lines in fx.fixtures().items():
        assert (DATA / f"{name}.jsonl").read_text() == fx.render(lines), name
    assert bytes.fromhex((DATA / "chain.key").read_text()) == KEY


BAD = {
    "illegal-transition": (
        "ILLEGAL_TRANSITION", 5,
        "VOLATILE -> TERMINATED with HEALTH_RECOVERED is not in the transition table "
        "(from VOLATILE, HEALTH_RECOVERED leads to ATTACHED)",
    ),
    "version-backwards": ("STATE_VERSION", 5, "state_version 2 does not increase past 2"),
    "after-terminated": ("AFTER_TERMINATED", 11, "TRANSPORT_SWITCH after the session reached "
                         "TERMINATED on gw1"),
    "seq-gap": ("SEQ_GAP", 8, "seq jumps from 6"),
    "chain-altered": ("CHAIN", 9, "prev_hash is not the hash of seq 7"),
    "two-bindings": ("TWO_BINDINGS", 6, "attaches udp:1 while still bound to udp:0"),
    "two-owners": ("TWO_OWNERS", 6, "gw2 claims session 5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a with "
                   "fencing token 5 while gw1 still owns it with token 5"),
    "long-recovering": ("RECOVERY_TOO_LONG", 6, "still RECOVERING 9000 ms after entering it"),
    "switch-rate": ("SWITCH_RATE", 8, "switch 200 ms after the previous one"),
    "schema-invalid": ("SCHEMA", 8, "'bytes_out' is a required property (for SESSION_STATS)"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_history_is_caught_with_the_right_message(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    check, line, message = BAD[name]
    path = str(DATA / f"{name}.jsonl")
    status, out, _err = run_cli(capsys, "--chain-key", KEY_FILE, path)
    assert status == 1
    assert f"VIOLATION [{check}] {path}:{line}: {message}" in out
    assert out.count("VIOLATION [") == 1, out  # that defect, and nothing else
    assert "result: VIOLATIONS FOUND" in out
    # the offending event itself is printed under its location
    offending = json.loads((DATA / f"{name}.jsonl").read_text().splitlines()[line - 1])
    assert "    " + json.dumps(offending, sort_keys=True) in out


@pytest.mark.parametrize("name", sorted(set(BAD) - {"chain-altered"}))
def test_bad_histories_are_caught_without_the_key_too(name: str) -> None:
    report = audit_events(load(name), None)
    assert checks(report) == [BAD[name][0]]


def test_clean_history_passes(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "--chain-key", KEY_FILE, str(DATA / "clean.jsonl"))
    assert status == 0, out
    assert "VIOLATION" not in out and err == ""
    assert "result: OK" in out
    assert "checked seq and keyed hash chain" in out
    assert "session 5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a" in out
    assert "RECOVERING -> ATTACHED" in out and "udp:0 -> udp:1 (switch 200 ms)" in out
    assert "node-wide events" in out and "REPLAY_DETECTED x1200" in out


def test_clean_history_without_key_checks_seq_only(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _err = run_cli(capsys, "--no-timeline", str(DATA / "clean.jsonl"))
    assert status == 0
    assert "checked seq only (no --chain-key)" in out
    assert "time (UTC)" not in out


def test_wrong_key_breaks_the_chain() -> None:
    report = audit_events(CLEAN, bytes(32))
    assert set(checks(report)) == {"CHAIN"}
    # every event but each node's first is reported
    assert len(report.violations) == len(CLEAN) - 3


def test_bad_lines_are_reported_with_line_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(DATA / "bad-lines.jsonl")
    status, out, err = run_cli(capsys, "--chain-key", KEY_FILE, path)
    assert status == 2
    assert f"INPUT ERROR {path}:4: bad JSON: Expecting value" in err
    assert f"INPUT ERROR {path}:6: not a JSON object but list" in err
    assert "input errors: 2" in out and "result: INPUT ERRORS" in out
    assert "events: 10 from 1 node(s)" in out  # the good lines were still audited
    assert "VIOLATION" not in out


def test_not_utf8_is_an_input_error() -> None:
    auditor = Auditor()
    audit.read_jsonl(auditor, io.BytesIO(b'{"a": "\xff"}\n'), "x.jsonl")
    report = auditor.finish()
    assert report.exit_status == 2
    assert str(report.input_errors[0]).startswith("x.jsonl:1: not UTF-8")


def test_events_read_share_their_keys_and_repeated_values() -> None:
    """The auditor keeps every event until the end: keys and the values that repeat (ids,
    enumerations) are one object each across events, the others are not (a hash, a time),
    and the events are equal to what json.loads gives."""
    lines = [
        json.dumps({"event_type": "SESSION_STATE_CHANGE", "session_id": "ab" * 16, "seq": i,
                    "prev_hash": f"{i:064x}", "new_state": "ATTACHED", "ts_ms": 10 + i})
        for i in range(2)
    ]  # fmt: skip
    auditor = Auditor()
    audit.read_jsonl(auditor, io.BytesIO("\n".join(lines).encode()), "x.jsonl")
    a, b = (r.event for r in auditor.report.records)
    assert [a, b] == [json.loads(line) for line in lines]
    ka, kb = {k: k for k in a}, {k: k for k in b}
    assert all(ka[k] is kb[k] for k in ka), "one key object per name"
    for field in ("event_type", "session_id", "new_state"):
        assert a[field] is b[field], field
    assert a["prev_hash"] is not b["prev_hash"]


# ---------------------------------------------------------------------- the real core
def _simulated(live: bool) -> list[dict[str, Any]]:
    spec = importlib.util.spec_from_file_location(
        "schema_tests", Path(__file__).resolve().parent / "test_schema.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    events: list[dict[str, Any]] = module.simulated_events(live)
    return events


@pytest.mark.parametrize("live", [False, True], ids=["stamped-after", "live"])
def test_history_from_the_simulated_core_passes(live: bool) -> None:
    events = _simulated(live)
    report = audit_events(events, bytes(32))
    assert report.violations == [], [str(v) for v in report.violations]
    assert report.ok and set(report.nodes) == {"c1", "gw1"}
    if live:  # the gateway's recovery ran into its window and ended the session
        assert 8000 <= max(t.longest_recovering_ms for t in report.tracks) <= 8500
        # the same history judged against a shorter window is a violation
        strict = audit_events(events, bytes(32), recovery_window_ms=5000)
        assert "RECOVERY_TOO_LONG" in checks(strict)


def test_simulated_history_through_the_cli_with_a_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in _simulated(True)))
    key = tmp_path / "key"
    key.write_text(base64.b64encode(bytes(32)).decode())
    png = tmp_path / "timeline.png"
    status, out, _ = run_cli(capsys, "--chain-key", str(key), "--plot", str(png), str(events))
    assert status == 0, out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"timeline picture: {png}" in out


# ---------------------------------------------------------------------- chain properties
def _node_order(events: list[dict[str, Any]]) -> dict[str, list[int]]:
    order: dict[str, list[int]] = {}
    for e in events:
        order.setdefault(e["node_id"], []).append(e["seq"])
    return order


@settings(max_examples=300, suppress_health_check=[HealthCheck.filter_too_much], deadline=None)
@given(st.sets(st.integers(0, len(CLEAN) - 1), min_size=1), st.booleans())
def test_any_deletion_followed_by_a_survivor_is_detected(deleted: set[int], keyed: bool) -> None:
    kept = [e for i, e in enumerate(CLEAN) if i not in deleted]
    # a deletion is visible when a later event of the same node survives it (losing the
    # tail of a node's stream is invisible to any chain: see docs/events.md)
    assume(
        any(
            any(j > i and CLEAN[j]["node_id"] == CLEAN[i]["node_id"] for j in range(len(CLEAN)) if j not in deleted)
            for i in deleted
        )
    )  # fmt: skip
    report = audit_events(kept, KEY if keyed else None)
    assert CHAIN_CHECKS & set(checks(report))


@settings(max_examples=300, deadline=None)
@given(st.permutations(range(len(CLEAN))), st.booleans())
def test_any_reordering_within_a_node_is_detected(perm: list[int], keyed: bool) -> None:
    shuffled = [CLEAN[i] for i in perm]
    assume(_node_order(shuffled) != _node_order(CLEAN))
    report = audit_events(shuffled, KEY if keyed else None)
    assert CHAIN_CHECKS & set(checks(report))


@settings(max_examples=200, deadline=None)
@given(st.permutations(range(len(CLEAN))), st.sets(st.integers(0, len(CLEAN) - 1)))
def test_deletion_and_reordering_together_are_detected(perm: list[int], deleted: set[int]) -> None:
    mutated = [CLEAN[i] for i in perm if i not in deleted]
    original = [e for i, e in enumerate(CLEAN) if i not in deleted]
    tails_only = all(
        all(CLEAN[j]["node_id"] != CLEAN[i]["node_id"] or j in deleted for j in range(i, len(CLEAN)))
        for i in deleted
    )  # fmt: skip
    assume(_node_order(mutated) != _node_order(original) or not tails_only)
    assert CHAIN_CHECKS & set(checks(audit_events(mutated, KEY)))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(CLEAN) - 1), st.sampled_from(["ts_ms", "reason_code", "extra", "drop"]))
def test_any_alteration_before_a_nodes_last_event_is_detected(i: int, how: str) -> None:
    node = CLEAN[i]["node_id"]
    assume(any(e["node_id"] == node for e in CLEAN[i + 1 :]))
    altered = [dict(e) for e in CLEAN]
    e = altered[i]
    if how == "ts_ms":
        e["ts_ms"] += 1
    elif how == "reason_code":
        e["reason_code"] = "OPERATOR_TERMINATED" if e["reason_code"] is None else None
    elif how == "extra":
        e["note"] = "inserted"
    else:
        e.pop("policy_version")
    assert "CHAIN" in checks(audit_events(altered, KEY))


@settings(max_examples=100, deadline=None)  # schema validation of 20 events: slow under load
@given(st.permutations(range(len(CLEAN))))
def test_seq_order_mode_accepts_any_interleaving(perm: list[int]) -> None:
    """Kafka partitions interleave one node's events: sorted by seq, nothing is wrong."""
    report = audit_events([CLEAN[i] for i in perm], KEY, order="seq")
    assert report.violations == []


def test_seq_order_mode_ignores_exact_duplicates_but_not_altered_ones() -> None:
    dup = CLEAN + CLEAN[5:9]
    report = audit_events(dup, KEY, order="seq")
    assert report.ok and report.duplicates == 4
    assert checks(audit_events(dup, KEY)) == ["SEQ_ORDER"] * 4
    forged = [*CLEAN, dict(CLEAN[5], ts_ms=CLEAN[5]["ts_ms"] + 1)]
    assert "SEQ_ORDER" in checks(audit_events(forged, KEY, order="seq"))


# ---------------------------------------------------------------------- one check at a time
def test_partial_histories() -> None:
    excerpt = CLEAN[10:]
    assert "SEQ_START" in checks(audit_events(excerpt, KEY))
    assert audit_events(excerpt, KEY, partial=True).ok


def test_node_restart_starts_a_new_chain() -> None:
    n1 = fx.Node("gw1")
    first = fx.start(n1, 0)
    n2 = fx.Node("gw1")  # the process restarted: seq 0 and a zero prev_hash again
    second = fx.start(n2, 5000, sid=fx.B)
    report = audit_events(first + second, KEY)
    assert report.ok and report.nodes["gw1"].restarts == 1
    # a "restart" stamped before the events it follows is reordering
    assert checks(audit_events(second + first, KEY)) == ["SEQ_ORDER"]


def test_state_discontinuity() -> None:
    n = fx.Node("gw1")
    ev = fx.start(n, 0)
    ev.append(fx.change(n, 1000, fx.A, 2, "VOLATILE", "DEGRADED", "VOLATILE_PERSISTED"))
    report = audit_events(ev, KEY)
    assert checks(report) == ["STATE_DISCONTINUITY"]
    assert (
        "previous_state VOLATILE, but the last new_state of this session on gw1 was ATTACHED"
        in (report.violations[0].message)
    )


def test_version_going_back_on_a_non_transition_event() -> None:
    n = fx.Node("gw1")
    ev = fx.start(n, 0)
    ev.append(n.ev(10, "SESSION_STATS", fx.A, 0, bytes_in=1, bytes_out=1, packets_in=1,
                   packets_out=1))  # fmt: skip
    report = audit_events(ev, KEY)
    assert checks(report) == ["STATE_VERSION"]
    assert "state_version 0 goes back from 1" in report.violations[0].message


def test_terminated_without_a_transition_and_with_another_reason() -> None:
    n = fx.Node("gw1")
    ev = fx.start(n, 0)
    ev.append(n.ev(10, "SESSION_TERMINATED", fx.A, 1, "OPERATOR_TERMINATED", lifetime_ms=10,
                   bytes_in=0, bytes_out=0))  # fmt: skip
    report = audit_events(ev, KEY)
    assert checks(report) == ["TERMINATION_MISMATCH"]
    assert "no SESSION_STATE_CHANGE to TERMINATED" in report.violations[0].message
    n = fx.Node("gw1")
    ev = fx.start(n, 0)
    ev.append(fx.change(n, 10, fx.A, 2, "ATTACHED", "TERMINATED", "OPERATOR_TERMINATED"))
    ev.append(n.ev(10, "SESSION_TERMINATED", fx.A, 2, "POLICY_DENIED", lifetime_ms=10,
                   bytes_in=0, bytes_out=0))  # fmt: skip
    report = audit_events(ev, KEY)
    assert checks(report) == ["TERMINATION_MISMATCH"]
    assert "differs from the terminating transition's OPERATOR_TERMINATED" in (
        report.violations[0].message
    )


def test_a_second_session_terminated_is_after_terminated() -> None:
    ev = fx.simple(fx.Node("gw1"))
    ev = fx.rechained([*ev, dict(ev[-1])])
    assert checks(audit_events(ev, KEY)) == ["AFTER_TERMINATED"]


def test_recovering_still_open_at_the_end_of_the_nodes_history() -> None:
    n = fx.Node("gw1")
    ev = fx.start(n, 0)
    ev.append(fx.change(n, 1000, fx.A, 2, "ATTACHED", "RECOVERING", "TRANSPORT_DEAD"))
    ev.append(n.ev(20_000, "SECURITY_EVENT", None, 0, violation_type="HANDSHAKE_FLOOD", count=9,
                   window_ms=10_000))  # fmt: skip
    report = audit_events(ev, KEY)
    assert checks(report) == ["RECOVERY_TOO_LONG"]
    v = report.violations[0]
    assert v.where == "event #4" and "still RECOVERING 19000 ms later" in v.message
    # within the window (and its tolerance) nothing is wrong
    assert audit_events(ev[:4], KEY).ok
    assert audit_events(ev, KEY, recovery_window_ms=18_600, tolerance_ms=400).ok


def test_switch_from_a_transport_that_is_not_the_bound_one() -> None:
    n = fx.Node("gw1")
    ev = fx.start(n, 0)
    ev.append(fx.change(n, 1000, fx.A, 2, "ATTACHED", "RECOVERING", "TRANSPORT_DEAD"))
    ev.append(fx.switch(n, 1200, fx.A, 2, 7, 8))
    report = audit_events(ev, KEY)
    assert checks(report) == ["TWO_BINDINGS"]
    assert "switches from udp:7 to udp:8 while still bound to udp:0" in report.violations[0].message


def test_reattach_result_on_an_unannounced_transport() -> None:
    n = fx.Node("gw1")
    ev = fx.start(n, 0)
    ev.append(n.ev(10, "REATTACH_RESULT", fx.A, 1, "REATTACH_OK", ok=True, transport_id="udp:4"))
    assert checks(audit_events(ev, KEY)) == ["TWO_BINDINGS"]


def test_switch_rate_per_minute() -> None:
    n = fx.Node("gw1")
    ev = fx.start(n, 0)
    for k in range(9):  # nine switches 2 s apart: the ninth breaks max_switches_per_min = 8
        ev.append(fx.switch(n, 2000 * (k + 1), fx.A, 1, k, k + 1))
    report = audit_events(ev, KEY)
    assert checks(report) == ["SWITCH_RATE"]
    assert "9 switches within a minute" in report.violations[0].message
    assert audit_events(ev, KEY, max_switches_per_min=9).ok


def test_stale_claim_by_a_fenced_node_is_two_owners() -> None:
    gw1, gw2 = fx.Node("gw1"), fx.Node("gw2")
    ev = fx.start(gw1, 0, token=3) + fx.start(gw2, 1000, token=4)
    assert audit_events(ev, KEY).ok  # a takeover with a newer token fences gw1 out
    ev.append(gw1.ev(2000, "OWNERSHIP_CHANGE", fx.A, 1, owner="gw1", fencing_token=3))
    report = audit_events(ev, KEY)
    assert checks(report) == ["TWO_OWNERS"]
    assert "gw1 claims session" in report.violations[0].message
    assert "while gw2 still owns it with token 4" in report.violations[0].message


def test_older_token_claimed_later_is_two_owners_unless_the_owner_let_go() -> None:
    gw1, gw2 = fx.Node("gw1"), fx.Node("gw2")
    ev = fx.start(gw1, 0, token=8) + fx.start(gw2, 1000, token=7)
    assert checks(audit_events(ev, KEY)) == ["TWO_OWNERS"]
    gw1, gw2 = fx.Node("gw1"), fx.Node("gw2")
    ev = fx.start(gw1, 0, token=8)
    ev.append(gw1.ev(500, "OWNERSHIP_CHANGE", fx.A, 1, "OWNERSHIP_LOST", owner=None,
                     fencing_token=None))  # fmt: skip
    ev += fx.start(gw2, 1000, token=7)
    assert audit_events(ev, KEY).ok


@pytest.mark.parametrize(
    ("late_ms", "skew_ms", "ok"), [(0, 0, True), (150, 0, False), (150, 200, True)]
)
def test_clock_skew_tolerance_for_ownership(late_ms: int, skew_ms: int, ok: bool) -> None:
    """Without fencing tokens, a handover is judged by time: gw1's release, stamped by its
    own clock, may look a little later than gw2's claim."""
    gw1, gw2 = fx.Node("gw1"), fx.Node("gw2")
    ev = [
        gw1.ev(0, "OWNERSHIP_CHANGE", fx.A, 0, owner="gw1", fencing_token=None),
        gw1.ev(1000 + late_ms, "OWNERSHIP_CHANGE", fx.A, 0, owner=None, fencing_token=None),
        gw2.ev(1000, "OWNERSHIP_CHANGE", fx.A, 0, owner="gw2", fencing_token=None),
    ]
    report = audit_events(ev, KEY, clock_skew_ms=skew_ms)
    assert checks(report) == ([] if ok else ["TWO_OWNERS"])


def test_unassigned_session_id_attempts_are_separate() -> None:
    """A client's pre-handshake sessions share the all-zero id: each BIRTH is a new attempt."""
    n = fx.Node("c1")
    zero = audit.UNASSIGNED_SESSION
    ev = []
    for k in range(3):
        ev.append(fx.change(n, 15_000 * (k + 1), zero, 1, "BIRTH", "TERMINATED", "HANDSHAKE_FAIL"))
        ev.append(n.ev(15_000 * (k + 1), "SESSION_TERMINATED", zero, 1, "HANDSHAKE_FAIL",
                       lifetime_ms=15_000, bytes_in=0, bytes_out=148))  # fmt: skip
    report = audit_events(ev, KEY)
    assert report.ok, [str(v) for v in report.violations]
    assert [t.attempt for t in report.tracks] == [0, 1, 2]
    # any other session id is absorbing as usual
    other = [dict(e, session_id=fx.B) for e in ev]
    assert "AFTER_TERMINATED" in checks(audit_events(fx.rechained(other), KEY))


def test_audit_events_locations_and_non_objects() -> None:
    report = audit_events([CLEAN[0], "nope"], KEY)  # type: ignore[list-item]
    assert [(v.check, v.where, v.message) for v in report.violations] == [
        ("SCHEMA", "event #2", "not a JSON object")
    ]


def test_schema_violations_are_one_per_event_and_other_checks_still_run() -> None:
    ev = fx.simple(fx.Node("gw1"), "illegal")
    ev[-1] = dict(ev[-1], silence_ms="long")
    ev = fx.rechained(ev)
    assert checks(audit_events(ev, KEY)) == ["SCHEMA", "ILLEGAL_TRANSITION"]


# ---------------------------------------------------------------------- command line
def test_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _out, err = run_cli(capsys)
    assert status == 2 and "give event FILEs or --kafka" in err
    status, _out, err = run_cli(capsys, "--kafka", "localhost:9092")
    assert status == 2 and "--kafka needs --topic" in err
    status, _out, err = run_cli(capsys, "--recovery-window-ms", "-1", "x.jsonl")
    assert status == 2 and "--recovery-window-ms must be >= 0" in err
    status, _out, err = run_cli(capsys, "--bogus")
    assert status == 2 and "unrecognized arguments" in err
    bad_key = tmp_path / "key"
    bad_key.write_text("c2hvcnQ=")
    status, _out, err = run_cli(capsys, "--chain-key", str(bad_key), str(DATA / "clean.jsonl"))
    assert status == 2 and "expected 32 bytes in hex, base64 or raw" in err
    status, _out, err = run_cli(capsys, "--chain-key", str(tmp_path / "nope"), "x.jsonl")
    assert status == 2 and "No such file" in err


def test_unreadable_file_is_an_input_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "/nonexistent/events.jsonl", str(DATA / "clean.jsonl"))
    assert status == 2
    assert "INPUT ERROR /nonexistent/events.jsonl: cannot read: No such file" in err
    assert "events: 34 from 3 node(s)" in out


def test_stdin_and_several_files(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text = (DATA / "clean.jsonl").read_text()
    lines = text.splitlines(keepends=True)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("".join(lines[:20]).encode())))
    rest = tmp_path / "rest.jsonl"
    rest.write_text("".join(lines[20:]))
    status, out, _ = run_cli(capsys, "--chain-key", KEY_FILE, "--no-timeline", "-", str(rest))
    assert status == 0, out


def test_order_seq_on_the_command_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    shuffled = list(CLEAN)
    random.Random(4).shuffle(shuffled)
    path = tmp_path / "shuffled.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in shuffled))
    status, _out, _ = run_cli(capsys, "--no-timeline", str(path))
    assert status == 1
    status, out, _ = run_cli(capsys, "--no-timeline", "--order", "seq", str(path))
    assert status == 0, out


def test_session_filter(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    n = fx.Node("gw1")
    path = tmp_path / "two.jsonl"
    path.write_text(fx.render(fx.start(n, 0) + fx.start(n, 10, sid=fx.B, token=2)))
    _status, out, _ = run_cli(capsys, "--session", "b7b7", str(path))
    assert f"session {fx.B}" in out and f"session {fx.A}" not in out


def test_timeline_collapses_repeated_rows() -> None:
    n = fx.Node("c1")
    ev = fx.start(n, 0, token=None)
    ev.append(fx.change(n, 100, fx.A, 2, "ATTACHED", "RECOVERING", "TRANSPORT_DEAD"))
    ev += [n.ev(200 + 250 * k, "REATTACH_ATTEMPT", fx.A, 2, candidates=1) for k in range(12)]
    text = audit.format_timeline(audit_events(ev, KEY))
    assert "REATTACH_ATTEMPT (x12)" in text
    assert text.count("REATTACH_ATTEMPT") == 1


@pytest.mark.parametrize(
    "encode",
    [bytes.hex, lambda k: base64.b64encode(k).decode(), lambda k: k],
    ids=["hex", "base64", "raw"],
)
def test_chain_key_formats(tmp_path: Path, encode: Any) -> None:
    path = tmp_path / "key"
    value = encode(KEY)
    if isinstance(value, bytes):
        path.write_bytes(value)
    else:
        path.write_text(value + "\n")
    assert audit.load_chain_key(str(path)) == KEY


def test_add_arguments_mounts_under_another_parser() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="jumpctl")
    sub = parser.add_subparsers(dest="command")
    audit.add_arguments(sub.add_parser("audit"))
    args = parser.parse_args(["audit", "--chain-key", KEY_FILE, str(DATA / "clean.jsonl")])
    out, err = io.StringIO(), io.StringIO()
    assert audit.run(args, out, err) == 0
    assert "result: OK" in out.getvalue()


# ---------------------------------------------------------------------- Kafka (faked)
class FakeConsumer:
    """What read_kafka uses of kafka-python's KafkaConsumer, over in-memory partitions."""

    def __init__(self, partitions: dict[int, list[bytes]], stall: bool = False, **config: Any):
        self.partitions, self.stall, self.config = partitions, stall, config
        self.pos: dict[Any, int] = {}
        self.closed = False

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(self.partitions) if topic == "events" else None

    def assign(self, tps: list[Any]) -> None:
        self.pos = {tp: 0 for tp in tps}

    def seek_to_beginning(self, *tps: Any) -> None:
        for tp in tps:
            self.pos[tp] = 0

    def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: len(self.partitions[tp.partition]) for tp in tps}

    def position(self, tp: Any) -> int:
        return self.pos[tp]

    def poll(self, timeout_ms: int = 0) -> dict[Any, list[Any]]:
        if self.stall:
            return {}
        batch = {}
        for tp, at in self.pos.items():
            msgs = self.partitions[tp.partition][at : at + 3]
            if msgs:
                batch[tp] = [SimpleNamespace(offset=at + k, value=v) for k, v in enumerate(msgs)]
                self.pos[tp] = at + len(msgs)
        return batch

    def close(self) -> None:
        self.closed = True


class TopicPartition(tuple[str, int]):
    def __new__(cls, topic: str, partition: int) -> TopicPartition:
        return super().__new__(cls, (topic, partition))

    @property
    def topic(self) -> str:
        return self[0]

    @property
    def partition(self) -> int:
        return self[1]


def _partitioned(events: list[dict[str, Any]], n: int = 3) -> dict[int, list[bytes]]:
    parts: dict[int, list[bytes]] = {p: [] for p in range(n)}
    for e in events:  # keyed by session_id (node_id for node-wide events), like the sink
        key = e["session_id"] or e["node_id"]
        parts[sum(key.encode()) % n].append(json.dumps(e).encode())
    return parts


def test_kafka_topic_read_to_its_end_and_sorted_per_node() -> None:
    made: list[FakeConsumer] = []

    def factory(**config: Any) -> FakeConsumer:
        made.append(FakeConsumer(_partitioned(CLEAN), **config))
        return made[-1]

    auditor = Auditor(KEY, order="seq")
    audit.read_kafka(auditor, "k1:9092,k2:9092", "events", 5.0, api=(factory, TopicPartition))
    report = auditor.finish()
    assert report.ok and len(report.records) == len(CLEAN)
    assert made[0].closed and made[0].config["bootstrap_servers"] == ["k1:9092", "k2:9092"]
    assert made[0].config["enable_auto_commit"] is False
    assert all("events[" in r.where and "]@" in r.where for r in report.records)


def test_kafka_bad_message_timeout_and_missing_topic() -> None:
    parts = _partitioned(CLEAN)
    parts[0].insert(1, b"{broken")
    auditor = Auditor(KEY, order="seq")
    audit.read_kafka(
        auditor, "k", "events", 5.0, api=(lambda **c: FakeConsumer(parts, **c), TopicPartition)
    )
    report = auditor.finish()
    assert [str(e).split(": bad JSON")[0] for e in report.input_errors] == ["events[0]@1"]
    auditor = Auditor(KEY)
    audit.read_kafka(
        auditor, "k", "events", 0.05,
        api=(lambda **c: FakeConsumer(parts, stall=True, **c), TopicPartition),
    )  # fmt: skip
    assert "timed out after 0.05s before the end of events[0]" in str(
        auditor.report.input_errors[0]
    )
    with pytest.raises(audit.AuditInputError, match="no topic 'other'"):
        audit.read_kafka(
            Auditor(), "k", "other", 1.0, api=(lambda **c: FakeConsumer(parts), TopicPartition)
        )
