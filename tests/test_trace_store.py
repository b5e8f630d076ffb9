"""Trace format: round trip, atomic writes and validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from paracell.errors import TraceFormatError
from paracell.trace import load_trace
from paracell.trace.builder import TraceBuilder


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


def test_manifest_negative_operations(tmp_path):
    trace = small_trace(tmp_path / "t")
    raw = json.loads((trace.path / "manifest.json").read_text())
    raw["workload"]["operations"] = -5
    (trace.path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(TraceFormatError, match="'workload.operations' must not be negative"):
        load_trace(trace.path)
