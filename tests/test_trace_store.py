"""Trace format: round trip, atomic writes and validation errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from paracell.errors import TraceFormatError
from paracell.trace import load_trace
from paracell.trace.builder import TraceBuilder
from paracell.trace.store import check_output, write_trace


def small_trace(path: Path):
    b = TraceBuilder(name="small")
    b.syscall(1_000, nr=39, duration_ns=200)
    b.syscall(500, nr=0, duration_ns=50)
    b.alloc(700, pfn=0x1000, order=0)
    b.free(900, pfn=0x1000, order=0)
    return b.write(path)


def test_round_trip_sorts_rows(tmp_path):
    trace = small_trace(tmp_path / "t")
    loaded = load_trace(tmp_path / "t", validate=True)
    assert loaded.manifest.event_counts == {
        "syscalls": 2,
        "mm_page_alloc": 1,
        "mm_page_free": 1,
    }
    assert list(loaded.column("syscalls", "ts_ns")) == [500, 1_000]
    assert list(loaded.column("syscalls", "nr")) == [0, 39]
    assert trace.content_hash() == loaded.content_hash()


def test_missing_kind_is_empty_table(tmp_path):
    trace = small_trace(tmp_path / "t")
    assert not trace.has("page_fault_user")
    assert trace.table("page_fault_user").num_rows == 0


def test_existing_output_rejected(tmp_path):
    small_trace(tmp_path / "t")
    with pytest.raises(TraceFormatError, match="already exists"):
        small_trace(tmp_path / "t")


def test_failed_write_leaves_nothing(tmp_path):
    b = TraceBuilder()
    b.syscall(10, nr=5000)  # out of range: validation fails while writing
    with pytest.raises(TraceFormatError, match="column 'nr', row 0, value 5000"):
        b.write(tmp_path / "t")
    assert list(tmp_path.iterdir()) == []


def test_missing_manifest(tmp_path):
    small_trace(tmp_path / "t")
    (tmp_path / "t" / "manifest.json").unlink()
    with pytest.raises(TraceFormatError, match="manifest.json: manifest is missing"):
        load_trace(tmp_path / "t")


def test_truncated_parquet(tmp_path):
    trace = small_trace(tmp_path / "t")
    file = trace.path / "syscalls.parquet"
    file.write_bytes(file.read_bytes()[:-20])
    with pytest.raises(
        TraceFormatError, match="syscalls.parquet: not a readable Parquet"
    ):
        load_trace(trace.path, validate=True)


def test_unsorted_timestamps(tmp_path):
    trace = small_trace(tmp_path / "t")
    file = trace.path / "syscalls.parquet"
    table = pq.read_table(file)
    ts = table.column("ts_ns").to_pylist()[::-1]
    table = table.set_column(0, "ts_ns", pa.array(ts, pa.int64()))
    pq.write_table(table, file)
    with pytest.raises(
        TraceFormatError,
        match=r"column 'ts_ns', row 1, value 500: timestamps are not sorted",
    ):
        load_trace(trace.path, validate=True)


def test_wrong_column_type(tmp_path):
    trace = small_trace(tmp_path / "t")
    file = trace.path / "syscalls.parquet"
    table = pq.read_table(file)
    idx = table.column_names.index("nr")
    table = table.set_column(idx, "nr", table.column("nr").cast(pa.string()))
    pq.write_table(table, file)
    with pytest.raises(
        TraceFormatError, match="column 'nr': has type string, expected int32"
    ):
        load_trace(trace.path, validate=True)


def test_manifest_bad_field(tmp_path):
    trace = small_trace(tmp_path / "t")
    raw = json.loads((trace.path / "manifest.json").read_text())
    raw["workload"]["kind"] = "batch"
    (trace.path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(
        TraceFormatError,
        match="manifest.json, value 'batch': field 'workload.kind' must be one of server, agent",
    ):
        load_trace(trace.path)


def hidden_entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_force_keeps_foreign_directory(tmp_path):
    target = tmp_path / "important"
    target.mkdir()
    (target / "thesis.txt").write_text("precious")
    with pytest.raises(TraceFormatError, match="has no manifest.json") as info:
        small_trace_overwrite(target)
    assert str(target) in str(info.value)
    assert (target / "thesis.txt").read_text() == "precious"
    assert hidden_entries(tmp_path) == []


def test_force_keeps_file(tmp_path):
    target = tmp_path / "notes"
    target.write_text("precious")
    with pytest.raises(TraceFormatError, match="is not a directory"):
        small_trace_overwrite(target)
    assert target.read_text() == "precious"
    assert hidden_entries(tmp_path) == []


def test_force_keeps_symlink(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "link"
    target.symlink_to(tmp_path / "real")
    with pytest.raises(TraceFormatError, match="symbolic link"):
        small_trace_overwrite(target)
    assert target.is_symlink()


def test_force_keeps_extra_files_in_trace(tmp_path):
    small_trace(tmp_path / "t")
    (tmp_path / "t" / "README").write_text("my notes")
    with pytest.raises(TraceFormatError, match="contains 'README'"):
        small_trace_overwrite(tmp_path / "t")
    assert (tmp_path / "t" / "README").exists()


def test_force_keeps_other_json(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    (target / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(TraceFormatError, match="so the output is no trace"):
        small_trace_overwrite(target)
    assert (target / "manifest.json").exists()


def test_force_replaces_trace(tmp_path):
    small_trace(tmp_path / "t")
    b = TraceBuilder(name="second")
    b.syscall(5, nr=1)
    trace = b.write(tmp_path / "t", overwrite=True)
    assert trace.name == "second"
    assert trace.manifest.event_counts == {"syscalls": 1}
    assert hidden_entries(tmp_path) == []


def test_force_replaces_empty_directory(tmp_path):
    (tmp_path / "t").mkdir()
    trace = small_trace_overwrite(tmp_path / "t")
    assert trace.manifest.event_counts["syscalls"] == 2
    assert hidden_entries(tmp_path) == []


def test_output_under_a_file_rejected(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(TraceFormatError, match="is not a directory"):
        small_trace(tmp_path / "file" / "sub" / "t")


def test_event_before_start_rejected(tmp_path):
    b = TraceBuilder(start_ts_ns=1_000)
    b.syscall(500, nr=0)
    with pytest.raises(TraceFormatError, match="before the manifest's start_ts_ns"):
        b.write(tmp_path / "t")
    assert list(tmp_path.iterdir()) == []


def test_load_checks_start(tmp_path):
    trace = small_trace(tmp_path / "t")
    raw = json.loads((trace.path / "manifest.json").read_text())
    raw["start_ts_ns"] = 600
    (trace.path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(
        TraceFormatError,
        match=r"syscalls.parquet: column 'ts_ns', row 0, value 500: event is before",
    ):
        load_trace(trace.path, validate=True)


def small_trace_overwrite(path: Path):
    b = TraceBuilder(name="small")
    b.syscall(1_000, nr=39, duration_ns=200)
    b.syscall(500, nr=0, duration_ns=50)
    return b.write(path, overwrite=True)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 256 KiB tmpfs mounted for the test (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
        check=True,
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def big_syscalls_table(nr_rows: int) -> pa.Table:
    """Random values, so Parquet cannot compress them much."""
    rng = np.random.default_rng(7)
    b = TraceBuilder()
    b.with_kinds("syscalls")
    schema = b.tables()["syscalls"].schema
    columns = {
        "ts_ns": np.sort(rng.integers(0, 1 << 40, nr_rows)),
        "cpu": rng.integers(0, 2, nr_rows),
        "pid": rng.integers(1, 1 << 22, nr_rows),
        "tid": rng.integers(1, 1 << 22, nr_rows),
        "nr": rng.integers(0, 400, nr_rows),
        "ret": rng.integers(-(1 << 40), 1 << 40, nr_rows),
        "duration_ns": rng.integers(0, 1 << 30, nr_rows),
        "complete": rng.integers(0, 2, nr_rows).astype(bool),
    }
    return pa.Table.from_arrays(
        [pa.array(columns[f.name]).cast(f.type) for f in schema], schema=schema
    )


def test_full_file_system_reported(tiny_tmpfs):
    """ENOSPC while writing: one error naming the path; the old trace survives."""
    old = small_trace(tiny_tmpfs / "t")
    old_hash = old.content_hash()
    b = TraceBuilder()
    with pytest.raises(TraceFormatError, match="No space left on device") as info:
        write_trace(
            tiny_tmpfs / "t",
            b.manifest(end_ts_ns=1 << 41),
            {"syscalls": big_syscalls_table(200_000)},
            overwrite=True,
        )
    assert str(tiny_tmpfs / "t") in str(info.value)
    assert load_trace(tiny_tmpfs / "t", validate=True).content_hash() == old_hash
    assert hidden_entries(tiny_tmpfs) == []


def test_read_only_file_system_reported(tiny_tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    with pytest.raises(TraceFormatError, match="Read-only file system"):
        check_output(tiny_tmpfs / "sub" / "t", overwrite=False)


def test_manifest_negative_operations(tmp_path):
    trace = small_trace(tmp_path / "t")
    raw = json.loads((trace.path / "manifest.json").read_text())
    raw["workload"]["operations"] = -5
    (trace.path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(
        TraceFormatError, match="'workload.operations' must not be negative"
    ):
        load_trace(trace.path)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (".", "the current directory or one of its ancestors"),
        ("..", "the current directory or one of its ancestors"),
        ("sub/..", "the current directory or one of its ancestors"),
        ("sub/../..", "the current directory or one of its ancestors"),
        ("sub/x/..", "must end in a directory name"),
        ("/", "the current directory or one of its ancestors"),
    ],
)
def test_output_cwd_or_ancestor_rejected(tmp_path, monkeypatch, target, reason):
    """A trace replaces its target by rename, which cannot replace these."""
    (tmp_path / "sub" / "x").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(TraceFormatError, match=reason) as info:
            check_output(Path(target), overwrite=overwrite)
        assert str(info.value).startswith(str(Path(target)))


def test_output_symlink_to_cwd_rejected(tmp_path, monkeypatch):
    (tmp_path / "here").symlink_to(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TraceFormatError, match="the current directory"):
        check_output(Path("here"), overwrite=True)


def test_output_mount_point_rejected(tiny_tmpfs):
    with pytest.raises(TraceFormatError, match="output is a mount point"):
        check_output(tiny_tmpfs, overwrite=True)
    # A new directory on that file system is fine.
    check_output(tiny_tmpfs / "t", overwrite=False)
