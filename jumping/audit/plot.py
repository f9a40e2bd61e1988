"""The audit as a picture (``--plot``): one row per session x node, needs matplotlib."""

from __future__ import annotations

from typing import Any

from jumping.audit.engine import TERMINATED, AuditInputError, AuditReport
from jumping.audit.render import _time, _ts_of

_COLORS = {
    "BIRTH": "#b0b0b0", "ATTACHED": "#3c9a3c", "VOLATILE": "#e6c229",
    "DEGRADED": "#e67e22", "RECOVERING": "#c0392b", "TERMINATED": "#202020",
}  # fmt: skip
#: timeline mark -> (marker, color, vertical offset in the row, legend label)
_MARKS = {
    "switch": ("^", "#2e86de", -0.28, "transport switch"),
    "reattach": ("o", "white", 0.28, "reattach ok"),
    "owner": ("s", "#8e44ad", 0.0, "ownership claimed"),
    "release": ("s", "white", 0.0, "ownership released"),
}


#: the outage band: from the last authenticated packet on the old transport to the switch
_OUTAGE: dict[str, Any] = {"facecolor": "none", "edgecolor": "black", "hatch": "////"}


def plot_timeline(report: AuditReport, path: str) -> None:
    """One row per session x node: state bands, outages as felt (hatched, from the switch
    events' ``outage_ms``), switch/reattach markers, violations."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError:
        raise AuditInputError("--plot needs matplotlib: pip install matplotlib") from None
    tracks = [t for t in report.tracks if t.first_ts is not None]
    born: dict[str, int] = {}
    for t in tracks:
        born[t.session_id] = min(born.get(t.session_id, t.first_ts or 0), t.first_ts or 0)
    tracks.sort(key=lambda t: (born[t.session_id], t.session_id, t.attempt, t.first_ts or 0))
    if not tracks:
        raise AuditInputError("--plot: no session events to draw")
    t0 = min(t.first_ts or 0 for t in tracks)
    end = max(t.last_ts for t in tracks)
    end = max(end, max(i.last_ts for i in report.nodes.values()))
    fig, ax = plt.subplots(figsize=(13, 1.6 + 0.55 * len(tracks)))
    flagged = report.flagged()
    for row, t in enumerate(tracks):
        first = t.first_ts or 0
        starts = [(first, "BIRTH")] if not t.bands or t.bands[0][0] > first else []
        bands = starts + t.bands
        last = end if t.terminated_where is None else t.last_ts
        for k, (start, state) in enumerate(bands):
            stop = bands[k + 1][0] if k + 1 < len(bands) else max(last, start)
            width = max(stop - start, (end - t0) * 0.004 if state == TERMINATED else 0)
            ax.barh(row, width / 1000, left=(start - t0) / 1000, color=_COLORS.get(state, "w"))
        for start, stop in t.outages:  # the outage as felt, over the states it spanned
            ax.barh(
                row, max(stop - start, 1) / 1000, left=(start - t0) / 1000, height=0.35,
                **_OUTAGE,
            )  # fmt: skip
        for ts, kind in t.marks:
            if kind in _MARKS:
                m, c, dy, _label = _MARKS[kind]
                ax.plot((ts - t0) / 1000, row + dy, m, color=c, markeredgecolor="black")
        for i in t.rows:
            if i in flagged:
                ax.plot((_ts_of(report.records[i]) - t0) / 1000, row, "X", color="red", ms=11)
    ax.set_yticks(range(len(tracks)))
    ax.set_yticklabels([t.label.replace(t.session_id, t.session_id[:8]) for t in tracks])
    ax.set_ylim(len(tracks) - 0.5, -0.5)
    ax.set_xlabel(f"seconds since {_time(t0)} UTC")
    handles: list[Any] = [Patch(color=c, label=s) for s, c in _COLORS.items()]
    for m, c, _dy, label in _MARKS.values():
        handles.append(
            Line2D([], [], marker=m, color=c, markeredgecolor="black", ls="", label=label)
        )
    handles.append(Patch(label="outage felt", **_OUTAGE))
    handles.append(Line2D([], [], marker="X", color="red", ls="", label="violation"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    ax.set_title("jumping audit: session state per session x node")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
