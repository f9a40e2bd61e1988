"""
The reference tables in docs/ say what the code does: states, transitions and reason codes
(docs/protocol.md and docs/events.md against jumping/core/fsm.py), the policy's names,
defaults and bounds (against jumping/core/policy.py, by loading policies at and beyond each
documented bound), and the wire message types (against jumping/core/wire.py).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from jumping.core import fsm, wire
from jumping.core.policy import Policy, PolicyError

DOCS = Path(__file__).resolve().parent.parent / "docs"


def table(doc: str, heading: str, nth: int = 0) -> list[list[str]]:
    """The rows (cells stripped, header and rule dropped) of the ``nth`` table under
    ``heading`` (a ``## `` or ``### `` line) in ``docs/doc``, before the next heading."""
    lines = (DOCS / doc).read_text().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.lstrip("#").strip() == heading)
    except StopIteration:
        raise AssertionError(f"{doc}: no heading {heading!r}") from None
    tables: list[list[list[str]]] = []
    current: list[list[str]] | None = None
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = []
                tables.append(current)
            current.append(cells)
        else:
            current = None
    assert len(tables) > nth, f"{doc} {heading!r}: no table number {nth}"
    rows = tables[nth]
    assert set(rows[1][0]) <= set("-: "), f"{doc} {heading!r}: not a markdown table"
    return rows[2:]


def codes(cell: str) -> list[str]:
    return re.findall(r"`([A-Z_]+)`", cell)


def states(cell: str) -> list[fsm.State]:
    if cell == "any but TERMINATED":
        return [s for s in fsm.State if s is not fsm.State.TERMINATED]
    return [fsm.State(s.strip()) for s in cell.split(",")]


def documented_transitions(doc: str, heading: str) -> dict[tuple[fsm.State, fsm.Reason], fsm.State]:
    legal: dict[tuple[fsm.State, fsm.Reason], fsm.State] = {}
    for row in table(doc, heading):
        target = fsm.State(row[1])
        for source in states(row[0]):
            for code in codes(row[2]):
                key = (source, fsm.Reason(code))
                assert key not in legal, f"{doc}: {key} listed twice"
                legal[key] = target
    return legal


@pytest.mark.parametrize(
    ("doc", "heading"), [("protocol.md", "Transitions"), ("events.md", "State machine")]
)
def test_transition_tables_are_the_fsm(doc: str, heading: str) -> None:
    assert documented_transitions(doc, heading) == fsm.LEGAL


@pytest.mark.parametrize(
    ("doc", "heading"), [("protocol.md", "Reason codes"), ("events.md", "Reason codes")]
)
def test_reason_code_tables_are_the_fsm(doc: str, heading: str) -> None:
    documented = [codes(row[0])[0] for row in table(doc, heading)]
    assert documented == [r.value for r in fsm.Reason]


def test_state_table_is_the_fsm() -> None:
    assert [row[0].strip("`") for row in table("protocol.md", "States")] == [
        s.value for s in fsm.State
    ]


def test_transition_table_is_tested_on_a_changed_table() -> None:
    """The comparison catches a documented row the code lacks (the check can fail)."""
    documented = documented_transitions("protocol.md", "Transitions")
    documented[(fsm.State.TERMINATED, fsm.Reason.HANDSHAKE_OK)] = fsm.State.ATTACHED
    assert documented != fsm.LEGAL


# -- policy -----------------------------------------------------------------------------


def number(text: str) -> float:
    """``500``, ``0.20``, ``2^60``, ``2^64-2^14``."""
    text = text.strip().strip("`")
    total = 0
    for sign, term in re.findall(r"([+-]?)([^+-]+)", text):
        base, _, exp = term.partition("^")
        value = float(base) ** int(exp) if exp else float(base)
        total += -value if sign == "-" else value
    return int(total) if total.is_integer() and "." not in text else total


def policy_rows() -> dict[str, tuple[str, str]]:
    rows = table("protocol.md", "Policy")
    return {row[0].strip("`"): (row[1], row[2]) for row in rows}


def test_policy_table_names_every_setting() -> None:
    assert list(policy_rows()) == [f.name for f in dataclasses.fields(Policy)]


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Policy)])
def test_policy_table_default(name: str) -> None:
    default, _bounds = policy_rows()[name]
    actual = getattr(Policy(), name)
    if isinstance(actual, bool):
        assert default == str(actual).lower()
    elif isinstance(actual, str):
        assert default.strip("`") == actual
    else:
        assert number(default) == actual


def numeric_bounds() -> list[tuple[str, float, float]]:
    out = []
    for name, (_default, bounds) in policy_rows().items():
        m = re.fullmatch(r"(\S+) \.\. (\S+?)(, a power of two)?", bounds)
        if m:
            out.append((name, number(m.group(1)), number(m.group(2))))
    return out


def test_every_numeric_setting_has_documented_bounds() -> None:
    documented = {name for name, _lo, _hi in numeric_bounds()}
    numeric = {
        f.name
        for f in dataclasses.fields(Policy)
        if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)
    }
    assert documented == numeric


def range_problems(name: str, value: float) -> list[str]:
    """The problems the setting's own range check reports (not the cross-field rules)."""
    problems = Policy(**{name: value}).problems()  # type: ignore[arg-type]
    return [p for p in problems if p.startswith((f"{name}: must be in", f"{name}: must be a"))]


@pytest.mark.parametrize(("name", "lo", "hi"), numeric_bounds())
def test_policy_bounds_are_the_code(name: str, lo: float, hi: float) -> None:
    """Both documented ends pass the setting's own check; one step beyond either fails it."""
    step = 1 if isinstance(getattr(Policy(), name), int) else 0.001
    assert range_problems(name, lo) == []
    assert range_problems(name, hi) == []
    below, above = (lo // 2, hi * 2) if name == "replay_window" else (lo - step, hi + step)
    assert range_problems(name, below)
    assert range_problems(name, above)
    with pytest.raises(PolicyError, match=name):
        Policy.from_mapping({name: above})


CROSS_FIELD = {
    "`heartbeat_timeout_ms` must exceed `heartbeat_interval_ms`": {
        "heartbeat_interval_ms": 2000, "heartbeat_timeout_ms": 2000,
    },
    "`dead_after_ms` must be at least `heartbeat_timeout_ms`": {
        "dead_after_ms": 1999, "heartbeat_timeout_ms": 2000,
    },
    "`recovery_window_ms` must be at least `heartbeat_interval_ms`": {
        "recovery_window_ms": 499, "heartbeat_interval_ms": 500,
    },
}  # fmt: skip


def test_cross_field_rules_are_documented_and_enforced() -> None:
    text = " ".join((DOCS / "protocol.md").read_text().split())
    for rule, violation in CROSS_FIELD.items():
        assert rule in text
        with pytest.raises(PolicyError):
            Policy.from_mapping(violation)
    problems = Policy(heartbeat_interval_ms=10**6, heartbeat_timeout_ms=2, dead_after_ms=1,
                      recovery_window_ms=1).problems()  # fmt: skip
    assert len(problems) == len(CROSS_FIELD)


# -- wire -------------------------------------------------------------------------------


def test_message_type_table_is_the_wire() -> None:
    rows = table("protocol.md", "Wire format", 0)
    assert [(int(r[0]), r[1].strip("`")) for r in rows] == [
        (t.value, t.name) for t in wire.MessageType
    ]


def test_control_subtype_table_is_the_wire() -> None:
    rows = table("protocol.md", "Wire format", 1)
    assert [(int(r[0]), r[1].strip("`")) for r in rows] == [(c.value, c.name) for c in wire.Control]


# -- the repository is self-contained -----------------------------------------------------

ROOT = DOCS.parent
OUTSIDE = re.compile(r"\.\./shared|SPEC (§|section)|SPEC\.md")


def shipped_text_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in ("docs", "jumping", "tests", "plugins", "deploy"):
        for p in sorted((ROOT / top).rglob("*")):
            if (
                p.is_file()
                and p.suffix not in {".pyc", ".png", ".jar"}
                and "egg-info" not in str(p)
            ):
                files.append(p)
    return files


def test_nothing_points_outside_the_repository() -> None:
    """No reference to a specification or a harness that a user's clone does not have."""
    found = []
    for p in shipped_text_files():
        try:
            text = p.read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line) and p != Path(__file__).resolve():
                found.append(f"{p.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings."""
    out = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize(
    "doc", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in DOCS.glob("*.md"))]
)
def test_relative_links_resolve(doc: str) -> None:
    source = ROOT / doc
    broken = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", source.read_text()):
        if target.startswith(("http:", "https:", "mailto:")):
            continue
        path = (source.parent / target).resolve() if target else source
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}#{anchor}: no such heading")
    assert not broken, f"{doc}: " + "; ".join(broken)
