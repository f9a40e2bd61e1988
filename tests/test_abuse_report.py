"""tests/bench/abuse/report.py ``summary``: medians over repeated abuse runs, per scenario,
rate, duration and VPN (and policy override), runs that were not run left out."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench" / "abuse"))
import report  # noqa: E402


def _rec(kept: float | None, p99: float, *, vpn: str = "jumping", status: str = "",
         policy: str | None = None, new_ms: float | None = 10.0) -> dict[str, Any]:  # fmt: skip
    verdict: dict[str, Any] = {"throughput_kept": kept, "rtt_p99_increase_ms": p99,
                               "ping_loss_pct": 0.0, "rss_growth_kib": 100}  # fmt: skip
    if status:
        verdict = {"status": status}
    r = {"bench": "abuse", "scenario": "valid_mac1_init_flood", "rate": 20000.0,
         "duration_s": 10.0, "vpn": vpn, "verdict": verdict, "sessions_lost": 0,
         "new_client_initiations": 1, "new_client_handshake_ms": new_ms,
         "vpn_version": "v0.0.1" if vpn == "wireguard-go" else "jumping-abc-c"}  # fmt: skip
    if policy:
        r["policy"] = policy
    return r


def _rows(tmp_path: Path, recs: list[dict[str, Any]]) -> list[list[str]]:
    f = tmp_path / "r.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"bench": "other"}\n')
    lines = report.summary(f).splitlines()[2:]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_the_summary_takes_medians_and_judges_goals_by_them(tmp_path: Path) -> None:
    rows = _rows(tmp_path, [
        _rec(0.95, 3.0), _rec(0.70, 9.0), _rec(0.92, 4.0, new_ms=None),
        _rec(None, 0.0, status="not run"),
        _rec(0.80, 1.0, vpn="wireguard-go"),
        _rec(0.50, 1.0, policy="cookie_replies_per_s = 5"),
    ])  # fmt: skip
    assert len(rows) == 3
    wg, jumping, policy = rows
    assert wg[3] == "wireguard-go v0.0.1" and wg[5] == "0.80"
    assert "throughput_kept" not in wg[10] and "rtt_p99_increase_ms" in wg[10]
    assert jumping[3] == "jumping jumping-abc-c" and jumping[4] == "3 (+1 not run)"
    assert jumping[5] == "0.92 (0.70–0.95)"  # the median of three, not their mean (0.86)
    assert jumping[6] == "4.0 (3.0–9.0)"
    assert jumping[9] == "10 (10–10) (1)"  # two completed in 10 ms, one never did
    assert "throughput_kept" in jumping[10] and "rtt_p99_increase_ms" in jumping[10]
    assert policy[3] == "jumping jumping-abc-c [cookie_replies_per_s = 5]"
    assert policy[5] == "0.50"
    assert "throughput_kept" not in policy[10]


def test_two_builds_of_one_vpn_are_rows_of_their_own(tmp_path: Path) -> None:
    before, after = _rec(0.70, 8.0), _rec(0.95, 3.0)
    before["vpn_version"] = "jumping-0ld-c"
    rows = _rows(tmp_path, [before, after, _rec(0.97, 2.0)])
    assert [(r[3], r[4], r[5]) for r in rows] == [
        ("jumping jumping-0ld-c", "1", "0.70"),
        ("jumping jumping-abc-c", "2", "0.96 (0.95–0.97)"),
    ]


def test_a_cell_with_only_runs_that_were_not_run_meets_nothing(tmp_path: Path) -> None:
    (row,) = _rows(tmp_path, [_rec(None, 0.0, status="not run")])
    assert row[4] == "0 (+1 not run)" and row[5] == "–" and row[10] == "none"
