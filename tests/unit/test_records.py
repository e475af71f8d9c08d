"""records.jsonl writer: bounded, rotated, and a full disk drops and counts instead of raising."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pdmv2.agent.records import RecordWriter


def line(i: int) -> str:
    return json.dumps({"i": i, "pad": "x" * 80}) + "\n"


def test_rotation_bounds_every_file_and_keeps_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    w = RecordWriter(path, max_bytes=8192, files=3)
    for i in range(2000):
        w.write(line(i))
        if i % 50 == 0:
            w.flush()
    w.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["records.jsonl", "records.jsonl.1", "records.jsonl.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 8192
        assert (p.stat().st_mode & 0o777) == 0o600
        for text in p.read_text().splitlines():
            json.loads(text)
    newest = [json.loads(t)["i"] for t in path.read_text().splitlines()]
    assert newest[-1] == 1999
    assert w.rotations > 0 and w.dropped == 0 and w.written == 2000


def test_single_file_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    w = RecordWriter(path, max_bytes=4096, files=1)
    for i in range(500):
        w.write(line(i))
        w.flush()
    w.close()
    assert [p.name for p in tmp_path.iterdir()] == ["records.jsonl"]
    assert path.stat().st_size <= 4096


def test_existing_large_file_is_rotated_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text("old\n" * 5000)
    w = RecordWriter(path, max_bytes=4096, files=2)
    w.write(line(1))
    w.close()
    assert path.read_text() == line(1)
    assert (tmp_path / "records.jsonl.1").read_text().startswith("old\n")


def test_full_disk_drops_and_counts_never_raises(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    path = tmp_path / "records.jsonl"
    path.symlink_to("/dev/full")  # every write: ENOSPC
    w = RecordWriter(path, max_bytes=1 << 20, files=2)
    for i in range(100):
        w.write(line(i))
    w.flush()
    for i in range(10):
        w.write(line(i))
    w.close()
    assert w.dropped == 110 and w.written == 0 and w.errors >= 2


def test_unwritable_directory_drops_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "gone" / "records.jsonl"  # the directory does not exist: open fails
    w = RecordWriter(path, max_bytes=1 << 20, files=2)
    w.write(line(0))
    w.flush()
    assert w.dropped == 1
    path.parent.mkdir()
    w.write(line(1))
    w.close()
    assert w.written == 1 and path.read_text() == line(1)


def test_bad_bounds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        RecordWriter(tmp_path / "r", max_bytes=10)
    with pytest.raises(ValueError):
        RecordWriter(tmp_path / "r", files=0)


def test_small_bound_loses_nothing_without_explicit_flushes(tmp_path: Path) -> None:
    w = RecordWriter(tmp_path / "records.jsonl", max_bytes=65536, files=2)
    for i in range(3000):
        w.write(line(i))
    w.close()
    assert w.dropped == 0 and w.written == 3000 and w.rotations > 0
