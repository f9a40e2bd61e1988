"""The Prometheus endpoint of a running gateway, checked by the real promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from nodes import Pair

from jumping.testing.netns import Topology

pytestmark = pytest.mark.netns

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "jumping.json"
_PROMQL_FUNCS = {"sum", "rate", "max", "by", "histogram_quantile", "le", "label_values"}


def exposed_names(text: str) -> set[str]:
    """Every series name a PromQL query may use against this exposition: sample names
    (``_total``, ``_bucket``...) and family names, including families without samples."""
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names.add(fam.name + ("_total" if fam.type == "counter" else ""))
        names.update(s.name for s in fam.samples)
        if fam.type == "histogram":
            names.update(fam.name + x for x in ("_bucket", "_sum", "_count"))
    return names


def dashboard_problems(dashboard: dict, text: str) -> list[str]:
    """Structure of deploy/grafana/jumping.json, and every PromQL expression of it only using
    metrics the real endpoint exposes."""
    import re

    names = exposed_names(text)
    problems = []
    panels = dashboard.get("panels")
    if not (isinstance(dashboard.get("title"), str) and dashboard.get("uid") and panels):
        problems.append("dashboard needs a title, a uid and panels")
    ids = [p.get("id") for p in panels or []]
    if len(set(ids)) != len(ids):
        problems.append(f"duplicate panel ids {ids}")
    for p in panels or []:
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if not p.get("title") or not p.get("type") or "gridPos" not in p:
            problems.append(f"{where}: needs title, type and gridPos")
        if not p.get("targets"):
            problems.append(f"{where}: no query")
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            used = {m for m in re.findall(r"\bjumping_[a-z0-9_]+", expr)}
            if not used:
                problems.append(f"{where}: {expr!r} uses no jumping_ metric")
            problems += [f"{where}: {m} is not exposed by /metrics" for m in sorted(used - names)]
            bare = set(re.findall(r"\b([a-z_]+)\s*\(", expr)) - _PROMQL_FUNCS
            if bare:
                problems.append(f"{where}: unexpected functions {sorted(bare)}")
    return problems


SCRAPE = "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:9477/metrics', timeout=5).read().decode())"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) missing")
def test_metrics_endpoint_passes_promtool(tmp_path: Path) -> None:
    with Topology("jm") as topo:
        cns, gns = topo.ns("c"), topo.ns("g")
        topo.link(cns, "ca", "10.201.1.1/24", gns, "ga", "10.201.1.2/24")
        pair = Pair(
            topo,
            tmp_path,
            cns,
            gns,
            ["10.201.1.2"],
            gw_extra='[metrics]\nlisten = "127.0.0.1:9477"\n',
        )
        try:
            pair.start()
            topo.run(cns, "ping", "-c", "3", "-i", "0.2", "10.99.0.1")
            time.sleep(0.3)
            text = topo.run(gns, "python3", "-c", SCRAPE).stdout
        finally:
            pair.stop()
    assert 'jumping_sessions{node="gw1",state="ATTACHED"} 1.0' in text
    assert 'jumping_transitions_total{node="gw1",reason="HANDSHAKE_OK"} 1.0' in text
    assert "jumping_switch_latency_seconds_bucket" in text
    assert "jumping_switch_outage_seconds_bucket" in text
    assert "jumping_event_sink_queue_depth" in text
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # the Grafana dashboard shipped in deploy/ asks only for what this endpoint serves
    assert dashboard_problems(json.loads(DASHBOARD.read_text()), text) == []
