"""Aggregated SECURITY_EVENTs through the event pipeline: top source prefixes respect the
configured address privacy, and the events validate against the published schema."""

from __future__ import annotations

import pytest

from jumping.core.outputs import Emit
from jumping.schema import validate
from jumping.service.events import EventPipeline

TOP = [
    {"address": "198.51.100.77/32", "count": 900},
    {"address": "[2001:db8:1:2::]/64", "count": 5},
]


def _emit(privacy: str) -> dict:
    p = EventPipeline(
        "gw1", [], bytes(32), lambda: "1", lambda: 1800000000.0, privacy, bytes(range(32))
    )
    return p.emit(
        Emit(
            "SECURITY_EVENT",
            None,
            0,
            None,
            {
                "violation_type": "MALFORMED_PACKET",
                "count": 1000,
                "window_ms": 10000,
                "top_sources": TOP,
                "other_sources_count": 95,
            },
        )  # fmt: skip
    )


@pytest.mark.parametrize(
    ("privacy", "expected"),
    [
        ("full", ["198.51.100.77/32", "[2001:db8:1:2::]/64"]),
        ("truncated", ["198.51.100.0/24", "2001:db8:1::/48"]),
    ],
)
def test_top_sources_follow_address_privacy(privacy: str, expected: list[str]) -> None:
    event = _emit(privacy)
    assert [t["address"] for t in event["top_sources"]] == expected
    assert [t["count"] for t in event["top_sources"]] == [900, 5]
    assert validate(event) == []


def test_hashed_top_sources_hide_the_address_but_stay_stable() -> None:
    a, b = _emit("hash"), _emit("hash")
    addrs = [t["address"] for t in a["top_sources"]]
    assert addrs == [t["address"] for t in b["top_sources"]]
    assert not any("198.51" in x or "2001" in x for x in addrs)
    assert validate(a) == []
