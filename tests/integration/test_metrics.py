"""The Prometheus endpoint of a running gateway, checked by the real promtool."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from nodes import Pair

from jumping.testing.netns import Topology

pytestmark = pytest.mark.netns

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
    assert "jumping_event_sink_queue_depth" in text
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
