"""
Figures of one abuse run (abuse-matrix.sh writes the raw files into its run directory) and
the side-by-side table of many runs.

    report.py run --dir RUN_DIR --vpn jumping --scenario junk_100k_sources --rate 20000 --duration 10
        one JSON line: per phase (``base``: the generator into the blackhole namespace,
        ``atk``: into the gateway) ping loss and RTT, iperf3 Gbit/s, the gateway's RSS and
        CPU, the rate delivered at the veth; then the goals (docs/security.md)
    report.py table results.jsonl
        a markdown table, Jumping beside wireguard-go, one row per scenario, rate, duration
    report.py summary results.jsonl
        the same runs repeated (abuse-full.sh REPEAT): per scenario, rate, duration and VPN
        the number of runs, the median and range of each goal's figure and the goals the
        medians meet; one 10 s run's throughput kept is good to about +-0.15 on a 2-core
        machine (docs/benchmarks.md), a median of several is what to judge by
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any

GOALS = {"ping_loss_pct": 0.0, "rtt_p99_increase_ms": 5.0, "throughput_kept": 0.90,
         "rss_growth_kib": 2048, "sessions_lost": 0}  # fmt: skip


def _q(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


_REPLY = re.compile(r"^\[([0-9.]+)\] .*icmp_seq=(\d+) ttl=\d+ time=([0-9.]+) ms(?! \(DUP)", re.M)
_NO_ANSWER = re.compile(r"^\[([0-9.]+)\] no answer yet for icmp_seq=(\d+)", re.M)


def ping_figures(path: Path, t0: float, t1: float) -> dict[str, Any]:
    """Loss and RTT of the requests sent between ``t0`` and ``t1`` (epoch seconds: while the
    generator ran), from ``ping -D -O`` output (a receive timestamp on each line; a line for
    each request unanswered when the next one is sent)."""
    text = path.read_text() if path.exists() else ""
    rtt: dict[int, float] = {}
    sent_at: dict[int, float] = {}
    for m in _REPLY.finditer(text):
        seq, ms = int(m.group(2)), float(m.group(3))
        if seq not in rtt:
            rtt[seq] = ms
            sent_at[seq] = float(m.group(1)) - ms / 1000
    for m in _NO_ANSWER.finditer(text):
        sent_at.setdefault(int(m.group(2)), float(m.group(1)))
    window = [q for q, t in sent_at.items() if t0 <= t <= t1]
    if not window:
        return {"sent": 0, "received": 0, "loss_pct": None, "rtt_p50_ms": None,
                "rtt_p99_ms": None, "rtt_max_ms": None, "max_outage_ms": None}  # fmt: skip
    lo, hi = min(window), max(window)
    seqs = range(lo, hi + 1)
    rtts = [rtt[q] for q in seqs if q in rtt]
    answered = [sent_at[q] for q in seqs if q in rtt]
    gaps = [b - a for a, b in zip(answered, answered[1:], strict=False)]
    return {
        "sent": len(seqs), "received": len(rtts),
        "loss_pct": round(100.0 * (len(seqs) - len(rtts)) / len(seqs), 3),
        "rtt_p50_ms": _q(rtts, 0.50), "rtt_p99_ms": _q(rtts, 0.99),
        "rtt_max_ms": max(rtts) if rtts else None,
        "max_outage_ms": round(max(gaps) * 1000, 1) if gaps else None,
    }  # fmt: skip


def iperf_figures(path: Path) -> dict[str, Any]:
    try:
        end = json.loads(path.read_text())["end"]
        return {"gbps": round(end["sum_received"]["bits_per_second"] / 1e9, 4),
                "retransmits": end["sum_sent"].get("retransmits")}  # fmt: skip
    except (OSError, ValueError, KeyError):
        return {"gbps": None, "retransmits": None}


def counters(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def rss_samples(path: Path) -> list[float]:
    if not path.exists():
        return []
    return [
        float(line.split()[1]) for line in path.read_text().splitlines() if len(line.split()) == 2
    ]


def events(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def metrics(path: Path) -> dict[str, float]:
    """Prometheus text exposition -> {'name{labels}': value} (labels minus node)."""
    out: dict[str, float] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        key = re.sub(r'node="[^"]*",?', "", key).replace(",}", "}").replace("{}", "")
        try:
            out[key] = float(value)
        except ValueError:
            pass
    return out


def handshake(path: Path, exclude: set[int]) -> dict[str, Any]:
    """The first client port that sends an initiation (not one of ``exclude``): how long
    until its handshake response arrived, how many initiations and cookie replies."""
    pkts = events(path)
    port = next((p["local_port"] for p in pkts if p["dir"] == "out" and p["type"] == 1
                 and p["local_port"] not in exclude), None)  # fmt: skip
    if port is None:
        return {"new_client_handshake_ms": None, "new_client_initiations": 0}
    mine = [p for p in pkts if p["local_port"] == port]
    t0 = next(p["t"] for p in mine if p["dir"] == "out" and p["type"] == 1)
    resp = next((p["t"] for p in mine if p["dir"] == "in" and p["type"] == 2), None)
    return {
        "new_client_handshake_ms": round((resp - t0) * 1000, 2) if resp is not None else None,
        "new_client_initiations": sum(p["dir"] == "out" and p["type"] == 1 for p in mine),
        "new_client_cookie_replies": sum(p["dir"] == "in" and p["type"] == 3 for p in mine),
    }


def phase(d: Path, name: str, rate: float, clk_tck: float = 100.0) -> dict[str, Any]:
    c = counters(d / f"{name}.counters")
    gen = {}
    try:
        gen = json.loads((d / f"{name}.gen.json").read_text())
    except (OSError, ValueError):
        pass
    elapsed = gen.get("elapsed_s") or c.get("wall1", 0) - c.get("wall0", 0) or 1.0
    target = "bx" if name == "base" else "gx"
    delivered = c.get(f"{target}_rx1", 0) - c.get(f"{target}_rx0", 0)
    rss = rss_samples(d / f"{name}.rss")
    wall = (c.get("wall1", 0) - c.get("wall0", 0)) or 1.0
    out = {
        "ping": ping_figures(d / f"{name}.ping", c.get("wall0", 0), c.get("wall1", 0)),
        "iperf": iperf_figures(d / f"{name}.iperf.json"),
        "generator_pps": gen.get("rate_pps"),
        "delivered_pps": round(delivered / elapsed),
        "delivered_fraction": round(delivered / (rate * elapsed), 3) if rate else None,
        "gw_udp_rcvbuf_errors": c.get("rcvbuf1", 0) - c.get("rcvbuf0", 0),
        "gw_tx_to_attacker": c.get("gx_tx1", 0) - c.get("gx_tx0", 0),
        "gw_cpu_pct": round(100 * (c.get("cpu1", 0) - c.get("cpu0", 0)) / clk_tck / wall, 1),
        "rss_start_kib": c.get("rss0"),
        "rss_growth_kib": round(max(rss) - c["rss0"]) if rss and "rss0" in c else None,
        "rss_end_kib": rss[-1] if rss else None,
    }
    return out


def run_record(a: argparse.Namespace) -> dict[str, Any]:
    d = Path(a.dir)
    base, atk = phase(d, "base", a.rate), phase(d, "atk", a.rate)
    c = counters(d / "atk.counters")
    t0_ms, t1_ms = c.get("wall0", 0) * 1000, c.get("wall1", 0) * 1000
    rec: dict[str, Any] = {
        "bench": "abuse", "vpn": a.vpn, "vpn_version": a.vpn_version, "scenario": a.scenario,
        "rate": a.rate, "duration_s": a.duration, "iperf": bool(a.iperf), "run_dir": str(d),
        "base": base, "atk": atk,
    }  # fmt: skip
    if a.vpn == "jumping":
        # policy overrides of this run (vpn-jumping.sh JUMPING_POLICY): runs under another
        # policy are another row of the summary
        rec["policy"] = os.environ.get("JUMPING_POLICY") or None
        gw = events(d / "jumping-gateway-events.jsonl")
        late = [e for e in gw if e.get("ts_ms", 0) >= t0_ms]
        sec: dict[str, dict[str, int]] = {}
        for e in late:
            if e.get("event_type") == "SECURITY_EVENT":
                s = sec.setdefault(e["violation_type"], {"events": 0, "count": 0})
                s["events"] += 1
                s["count"] += e.get("count", 0)
        rec["security_events"] = sec
        rec["security_events_before_attack"] = sum(
            e.get("event_type") == "SECURITY_EVENT" and c.get("wall0", 0) * 1000 - 60_000
            <= e.get("ts_ms", 0) < t0_ms for e in gw)  # fmt: skip
        # until the harness stops the gateway (its shutdown terminates the session as
        # OPERATOR_TERMINATED: not a session the attack took)
        changes = [e for e in late if e.get("event_type") == "SESSION_STATE_CHANGE"
                   and e.get("ts_ms", 0) <= t1_ms + 15_000
                   and e.get("reason_code") != "OPERATOR_TERMINATED"]  # fmt: skip
        rec["sessions_lost"] = sum(e.get("new_state") == "TERMINATED" for e in changes)
        rec["session_state_changes"] = [(e.get("previous_state"), e.get("new_state"),
                                         e.get("reason_code")) for e in changes]  # fmt: skip
        m0, m1 = metrics(d / "metrics0.txt"), metrics(d / "metrics1.txt")
        rec["gateway_drops"] = {
            k[len('jumping_drops_total{reason="'):-2]: m1[k] - m0.get(k, 0)
            for k in m1 if k.startswith("jumping_drops_total{") and m1[k] - m0.get(k, 0)
        }  # fmt: skip
        rec["cookies_required_at_end"] = m1.get("jumping_cookies_required")
        rec["handshake_load_at_end"] = m1.get("jumping_handshake_load")
        rec["handshake_queue"] = {
            r: m1.get(f'jumping_handshake_queue_total{{result="{r}"}}', 0)
            - m0.get(f'jumping_handshake_queue_total{{result="{r}"}}', 0)
            for r in ("queued", "served", "dropped")
        }  # fmt: skip
        rec["handshake_queue"]["max_depth"] = m1.get('jumping_handshake_queue_depth{which="max"}')
    else:
        hs0 = (d / "wg-hs0.txt").read_text().split() if (d / "wg-hs0.txt").exists() else []
        hs1 = (d / "wg-hs1.txt").read_text().split() if (d / "wg-hs1.txt").exists() else []
        rec["security_events"] = None  # wireguard-go has no security event stream
        rec["sessions_lost"] = None
        rec["established_peer_rehandshook"] = hs0 != hs1 if hs0 and hs1 else None
    if (d / "hs.jsonl").exists():
        excl = (
            {int(p) for p in (d / "hs.exclude").read_text().split()}
            if (d / "hs.exclude").exists()
            else set()
        )
        rec.update(handshake(d / "hs.jsonl", excl))
    rec["verdict"] = verdict(rec)
    return rec


def verdict(rec: dict[str, Any]) -> dict[str, Any]:
    atk, base = rec["atk"], rec["base"]
    frac = atk["delivered_fraction"]
    if frac is not None and (frac < 0.9 or (base["delivered_fraction"] or 0) < 0.9):
        return {"status": "not run", "why": f"delivered {frac} of nominal at the gateway, "
                f"{base['delivered_fraction']} into the blackhole (< 0.9)"}  # fmt: skip
    v: dict[str, Any] = {}
    v["ping_loss_pct"] = atk["ping"]["loss_pct"]
    p99a, p99b = atk["ping"]["rtt_p99_ms"], base["ping"]["rtt_p99_ms"]
    v["rtt_p99_increase_ms"] = (
        round(p99a - p99b, 2) if p99a is not None and p99b is not None else None
    )
    ga, gb = atk["iperf"]["gbps"], base["iperf"]["gbps"]
    v["throughput_kept"] = round(ga / gb, 3) if ga and gb else None
    v["rss_growth_kib"] = atk["rss_growth_kib"]
    v["sessions_lost"] = rec.get("sessions_lost")
    met = {
        "ping_loss_pct": v["ping_loss_pct"] is not None and v["ping_loss_pct"] <= 0,
        "rtt_p99_increase_ms": v["rtt_p99_increase_ms"] is not None and v["rtt_p99_increase_ms"] <= 5,
        "throughput_kept": v["throughput_kept"] is not None and v["throughput_kept"] >= 0.9,
        "rss_growth_kib": v["rss_growth_kib"] is not None and v["rss_growth_kib"] <= 2048,
        "sessions_lost": v["sessions_lost"] in (0, None),
    }  # fmt: skip
    if not rec.get("iperf"):
        del met["throughput_kept"]  # no iperf3 in this run: not a goal missed
    v["met"] = [k for k, ok in met.items() if ok]
    v["missed"] = [k for k, ok in met.items() if not ok]
    v["status"] = "met" if not v["missed"] else "missed " + ", ".join(v["missed"])
    return v


# ---------------------------------------------------------------------------- table
def _fmt(x: Any, nd: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _cell(r: dict[str, Any]) -> list[str]:
    v, atk = r["verdict"], r["atk"]
    if v.get("status") == "not run":
        return ["not run (" + _fmt(atk["delivered_fraction"], 2) + " delivered)"] + [""] * 9
    sec = r.get("security_events")
    sec_s = "–" if sec is None else (", ".join(f"{k} {s['count']}/{s['events']}ev"
                                               for k, s in sorted(sec.items())) or "none")  # fmt: skip
    p = atk["ping"]
    rss0 = atk["rss_start_kib"]
    peak = (
        rss0 + v["rss_growth_kib"] if rss0 is not None and v["rss_growth_kib"] is not None else None
    )
    return [
        _fmt(atk["delivered_pps"], 0), _fmt(v["ping_loss_pct"], 2),
        f"{_fmt(p['rtt_p50_ms'], 2)} / {_fmt(p['rtt_p99_ms'], 2)} / {_fmt(p['rtt_max_ms'], 1)}",
        _fmt(v["rtt_p99_increase_ms"], 2),
        f"{_fmt(rss0 / 1024 if rss0 else None, 1)} → {_fmt(peak / 1024 if peak else None, 1)}",
        _fmt(v["rss_growth_kib"] / 1024 if v["rss_growth_kib"] is not None else None, 2),
        _fmt(atk["gw_cpu_pct"], 0), _fmt(v.get("throughput_kept"), 2), sec_s, _new_client(r),
    ]  # fmt: skip


def _new_client(r: dict[str, Any]) -> str:
    """The second client's handshake during the flood: ms (initiations sent, cookie replies
    received); "none" if it never completed."""
    if "new_client_initiations" not in r:
        return "–"
    ms = r.get("new_client_handshake_ms")
    return (f"{_fmt(ms, 1) if ms is not None else 'none'} ({r['new_client_initiations']} init, "
            f"{r.get('new_client_cookie_replies', 0)} cookie)")  # fmt: skip


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "–"
    if b == 0:
        return "–" if a == 0 else "∞"
    return f"{a / b:.2f}"


def _ratios(j: dict[str, Any], w: dict[str, Any]) -> list[str]:
    """Jumping / wireguard-go per figure (RTT columns: p50 / p99 / max)."""
    if "not run" in (j["verdict"].get("status"), w["verdict"].get("status")):
        return ["not run"] + [""] * 9
    pj, pw = j["atk"]["ping"], w["atk"]["ping"]
    rtt = " / ".join(_ratio(pj[k], pw[k]) for k in ("rtt_p50_ms", "rtt_p99_ms", "rtt_max_ms"))
    return ["", "", rtt, "", "", _ratio(j["verdict"]["rss_growth_kib"], w["verdict"]["rss_growth_kib"]),
            _ratio(j["atk"]["gw_cpu_pct"], w["atk"]["gw_cpu_pct"]),
            _ratio(j["verdict"].get("throughput_kept"), w["verdict"].get("throughput_kept")), "", ""]  # fmt: skip


def table(path: Path) -> str:
    recs = [json.loads(line) for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("bench") == "abuse"]  # fmt: skip
    keys: list[tuple[str, float, float]] = []
    for r in recs:
        k = (r["scenario"], r["rate"], r["duration_s"])
        if k not in keys:
            keys.append(k)
    cols = ["delivered pkt/s", "ping loss %", "RTT p50 / p99 / max ms", "p99 +ms vs base",
            "RSS MiB start → peak", "RSS +MiB", "gw CPU %", "tput kept",
            "SECURITY_EVENTs (count/events)", "new client handshake ms"]  # fmt: skip
    head = "| scenario | rate | s | VPN | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (4 + len(cols))]
    for k in keys:
        by_vpn: dict[str, dict[str, Any]] = {}
        for vpn in ("wireguard-go", "jumping"):
            rs = [
                r
                for r in recs
                if (r["scenario"], r["rate"], r["duration_s"]) == k and r["vpn"] == vpn
            ]
            for r in rs:
                by_vpn[vpn] = r
                name = f"{vpn} {r.get('vpn_version', '')}".strip()
                lines.append(f"| {k[0]} | {int(k[1]) or 'max'} | {int(k[2])} | {name} | "
                             + " | ".join(_cell(r)) + " |")  # fmt: skip
        if len(by_vpn) == 2:
            lines.append(f"| {k[0]} | | | ratio J/wg | "
                         + " | ".join(_ratios(by_vpn["jumping"], by_vpn["wireguard-go"])) + " |")  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------------------- summary
#: per figure of the summary: where it is in a record, and whether higher is better
_FIGURES = (
    ("throughput_kept", lambda r: r["verdict"].get("throughput_kept")),
    ("rtt_p99_increase_ms", lambda r: r["verdict"].get("rtt_p99_increase_ms")),
    ("ping_loss_pct", lambda r: r["verdict"].get("ping_loss_pct")),
    ("rss_growth_kib", lambda r: r["verdict"].get("rss_growth_kib")),
    ("new_client_handshake_ms", lambda r: r.get("new_client_handshake_ms")),
)


def _median_range(xs: list[float], nd: int) -> str:
    if not xs:
        return "–"
    m = statistics.median(xs)
    if len(xs) == 1:
        return _fmt(float(m), nd)
    return f"{_fmt(float(m), nd)} ({_fmt(float(min(xs)), nd)}–{_fmt(float(max(xs)), nd)})"


def summary(path: Path) -> str:
    """Medians over repeated runs: one row per scenario, rate, duration and VPN (runs that
    were not run, < 90 % delivered, are counted apart and not in the figures)."""
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    recs = [r for r in recs if r.get("bench") == "abuse"]
    groups: dict[tuple[str, float, float, str], list[dict[str, Any]]] = {}
    for r in recs:
        # the build that ran (vpn_version: jumping-<commit>-<c|py>, a jumping@DIR checkout
        # beside this one is a row of its own) and its policy override
        vpn = r["vpn"] + (f" {r['vpn_version']}" if r.get("vpn_version") else "")
        vpn += f" [{r['policy']}]" if r.get("policy") else ""
        groups.setdefault((r["scenario"], r["rate"], r["duration_s"], vpn), []).append(r)
    head = ("| scenario | rate | s | VPN | runs | tput kept | p99 +ms | ping loss % | RSS +KiB | "
            "new client ms (never) | goals the medians meet |")  # fmt: skip
    lines = [head, "|" + "---|" * 11]
    order = sorted(groups, key=lambda k: (k[1], k[2], k[0], not k[3].startswith("wireguard-go")))
    for k in order:
        rs = groups[k]
        ran = [r for r in rs if r["verdict"].get("status") != "not run"]
        cols: dict[str, list[float]] = {}
        for name, get in _FIGURES:
            cols[name] = [float(x) for x in (get(r) for r in ran) if x is not None]
        never = sum(1 for r in ran if "new_client_initiations" in r
                    and r.get("new_client_handshake_ms") is None)  # fmt: skip
        med = {n: statistics.median(xs) for n, xs in cols.items() if xs}
        met = []
        for goal, bound in GOALS.items():
            if goal == "sessions_lost":
                ok = all(r.get("sessions_lost") in (0, None) for r in ran) and bool(ran)
            elif goal not in med:
                continue
            elif goal == "throughput_kept":
                ok = med[goal] >= bound
            else:
                ok = med[goal] <= bound
            if ok:
                met.append(goal)
        runs = f"{len(ran)}" + (f" (+{len(rs) - len(ran)} not run)" if len(rs) > len(ran) else "")
        lines.append(
            f"| {k[0]} | {int(k[1])} | {int(k[2])} | {k[3]} | {runs} | "
            f"{_median_range(cols['throughput_kept'], 2)} | "
            f"{_median_range(cols['rtt_p99_increase_ms'], 1)} | "
            f"{_median_range(cols['ping_loss_pct'], 2)} | "
            f"{_median_range(cols['rss_growth_kib'], 0)} | "
            f"{_median_range(cols['new_client_handshake_ms'], 0)} ({never}) | "
            f"{', '.join(met) or 'none'} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--dir", required=True)
    r.add_argument("--vpn", required=True)
    r.add_argument("--vpn-version", default="")
    r.add_argument("--scenario", required=True)
    r.add_argument("--rate", type=float, required=True)
    r.add_argument("--duration", type=float, required=True)
    r.add_argument("--iperf", type=int, default=0, help="1: iperf3 ran in both phases")
    t = sub.add_parser("table")
    t.add_argument("results")
    m = sub.add_parser("summary")
    m.add_argument("results")
    a = ap.parse_args()
    if a.cmd == "run":
        print(json.dumps(run_record(a)))
    elif a.cmd == "summary":
        print(summary(Path(a.results)))
    else:
        print(table(Path(a.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
