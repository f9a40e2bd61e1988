"""The on-disk spool (jumping/spool.py): what is appended is read back in order, survives a
reopen (a crash) until it is committed, a torn tail is cut off, the bound holds on either
side, and what is dropped is counted with its seq ranges."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from jumping.spool import SegmentLog, SpoolError, parse_size

BOOT = "ab" * 16


def rec(i: int, size: int = 100) -> tuple[bytes, int, str, int]:
    payload = json.dumps({"seq": i, "boot_id": BOOT, "pad": "x" * size}).encode()
    return payload, 1_800_000_000_000 + i, BOOT, i


def seqs(records: list[tuple[int, bytes, int]]) -> list[int]:
    return [json.loads(p)["seq"] for _n, p, _ts in records]


def spool(tmp: Path, **kw: object) -> SegmentLog:
    opts: dict[str, object] = {"max_bytes": 64 * 1024, "segment_bytes": 4096, **kw}
    s = SegmentLog(str(tmp / "spool"), **opts)  # type: ignore[arg-type]
    s.open()
    return s


def test_append_read_commit_and_reopen_delivers_only_what_was_not_committed(
    tmp_path: Path,
) -> None:
    s = spool(tmp_path)
    assert s.append(rec(i) for i in range(100)) == 100
    got = s.read(60)
    assert seqs(got) == list(range(60)) and [n for n, _p, _t in got] == list(range(60))
    assert got[0][2] == 1_800_000_000_000
    s.commit(40)
    assert s.backlog == 60
    s.close()  # or a crash: the commit position is on disk at the latest at close
    s = spool(tmp_path)
    assert s.backlog == 60
    assert seqs(s.read(1000)) == list(range(40, 100))
    assert s.append([rec(100)]) == 1
    assert seqs(s.read(10)) == [100]
    s.commit(101)
    assert s.backlog == 0
    assert len(list((tmp_path / "spool").glob("*.seg"))) == 1  # delivered segments deleted
    s.close()


def test_a_torn_tail_is_cut_off_at_open(tmp_path: Path) -> None:
    s = spool(tmp_path, segment_bytes=1 << 20, max_bytes=4 << 20)
    s.append(rec(i) for i in range(10))
    s.close()
    seg = sorted((tmp_path / "spool").glob("*.seg"))[-1]
    with open(seg, "ab") as f:
        f.write(b"\x00\x00\x01\x00garbage")  # a frame header promising 256 bytes, then a crash
    s = spool(tmp_path, segment_bytes=1 << 20, max_bytes=4 << 20)
    assert seqs(s.read(100)) == list(range(10))
    s.append([rec(10)])
    assert seqs(s.read(100)) == [10]
    s.close()


def test_rewind_reads_again_from_the_commit(tmp_path: Path) -> None:
    s = spool(tmp_path)
    s.append(rec(i) for i in range(200))
    assert seqs(s.read(150))[-1] == 149
    s.commit(70)
    s.rewind()
    assert seqs(s.read(5)) == [70, 71, 72, 73, 74]
    s.close()


def test_full_drop_newest_keeps_what_was_accepted_and_records_the_gap(tmp_path: Path) -> None:
    s = spool(tmp_path)
    n = s.append(rec(i) for i in range(2000))
    assert 0 < n < 2000 and s.dropped_full == 2000 - n
    assert s.used_bytes <= s.max_bytes
    assert s.losses.take() == [(BOOT, n, 1999, 2000 - n)]
    assert not s.has_room
    got = s.read(10_000)
    assert seqs(got) == list(range(n))
    s.commit(got[-1][0] + 1)
    assert s.has_room and s.backlog == 0
    s.close()


def test_full_drop_oldest_deletes_the_oldest_segments_and_records_them(tmp_path: Path) -> None:
    s = spool(tmp_path, full="drop_oldest")
    assert s.append(rec(i) for i in range(2000)) == 2000
    assert s.used_bytes <= s.max_bytes and s.dropped_full > 0
    lost = s.losses.take()
    assert lost[0][1] == 0 and sum(r[3] for r in lost) == s.dropped_full
    got = seqs(s.read(10_000))
    assert got == list(range(s.dropped_full, 2000))
    s.close()


def test_bad_directory_bad_sizes_and_a_second_user_are_one_line_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    s = SegmentLog(str(blocker / "spool"))
    with pytest.raises(SpoolError, match=r"spool .*/file/spool: cannot use it: Not a directory"):
        s.open()
    with pytest.raises(ValueError, match="at most half its bound"):
        SegmentLog(str(tmp_path), max_bytes=1 << 20, segment_bytes=1 << 20)
    with pytest.raises(ValueError, match="fsync must be one of interval, always, never"):
        SegmentLog(str(tmp_path), fsync="sometimes")
    with pytest.raises(ValueError, match="full must be one of drop_newest, drop_oldest"):
        SegmentLog(str(tmp_path), full="block")
    assert parse_size("spool_max_bytes", "256MiB", 1) == 256 << 20
    assert parse_size("spool_max_bytes", 4096, 1) == 4096
    for bad in ("lots", -1, True, "12 parsecs"):
        with pytest.raises(ValueError, match="spool_max_bytes must be a size"):
            parse_size("spool_max_bytes", bad, 1)
    a = spool(tmp_path)
    with pytest.raises(SpoolError, match="in use by another process"):
        spool(tmp_path)
    a.close()
    if os.geteuid() == 0:
        return  # root writes anywhere: the unwritable case needs another user
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(SpoolError, match="Permission denied"):
        SegmentLog(str(ro / "spool")).open()
