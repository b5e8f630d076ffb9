"""Malformed inputs through the CLI: one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from paracell.trace.builder import TraceBuilder


def paracell(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paracell", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def good_trace(path: Path) -> Path:
    b = TraceBuilder(name="small")
    for i in range(20):
        b.syscall(1000 + i * 100, nr=0, tid=7)
        b.alloc(1000 + i * 100 + 10, pfn=5000 + i, order=0, tid=7)
    b.free(5000, pfn=5000)
    b.with_kinds("mm_page_free")
    b.write(path)
    return path


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], *parts: str
) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for part in parts:
        assert part in lines[0]


def test_truncated_parquet(tmp_path: Path) -> None:
    trace = good_trace(tmp_path / "t")
    file = trace / "syscalls.parquet"
    file.write_bytes(file.read_bytes()[:100])
    assert_one_line_error(
        paracell("info", str(trace)), str(file), "not a readable Parquet"
    )


def test_wrong_column_type(tmp_path: Path) -> None:
    trace = good_trace(tmp_path / "t")
    file = trace / "syscalls.parquet"
    table = pq.read_table(file)
    nr_index = table.schema.get_field_index("nr")
    table = table.set_column(
        nr_index, "nr", pa.array([str(v) for v in table.column("nr").to_pylist()])
    )
    pq.write_table(table, file)
    assert_one_line_error(
        paracell("info", str(trace)), str(file), "'nr'", "expected int32"
    )


def test_unsorted_timestamps(tmp_path: Path) -> None:
    trace = good_trace(tmp_path / "t")
    file = trace / "mm_page_alloc.parquet"
    table = pq.read_table(file)
    ts = table.column("ts_ns").to_pylist()
    ts[3], ts[4] = ts[4], ts[3]
    table = table.set_column(0, "ts_ns", pa.array(ts, pa.int64()))
    pq.write_table(table, file)
    assert_one_line_error(
        paracell("info", str(trace)), str(file), "row 4", "not sorted"
    )


def test_missing_manifest(tmp_path: Path) -> None:
    trace = good_trace(tmp_path / "t")
    (trace / "manifest.json").unlink()
    assert_one_line_error(paracell("info", str(trace)), "manifest.json", "missing")


def test_manifest_count_mismatch(tmp_path: Path) -> None:
    trace = good_trace(tmp_path / "t")
    manifest = json.loads((trace / "manifest.json").read_text())
    manifest["event_counts"]["syscalls"] = 99
    (trace / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(paracell("info", str(trace)), "syscalls.parquet", "99")


def test_garbled_strace_log(tmp_path: Path) -> None:
    log = tmp_path / "bad.log"
    log.write_text(
        "100 1700000000.000000 getpid() = 100 <0.000001>\n"
        "100 1700000000.000100 ge@@tpid(\x01 garbage\n"
    )
    result = paracell("import-strace", str(log), "-o", str(tmp_path / "t"))
    assert_one_line_error(result, f"{log}:2", "ge@@tpid")
    assert not (tmp_path / "t").exists()


def test_unknown_event_kind(tmp_path: Path) -> None:
    result = paracell(
        "trace", "-o", str(tmp_path / "t"), "--events", "syscalls,nope", "--", "true"
    )
    assert_one_line_error(result, "'nope'")


def test_trace_without_command(tmp_path: Path) -> None:
    assert_one_line_error(paracell("trace", "-o", str(tmp_path / "t")), "no command")


def test_info_on_good_trace(tmp_path: Path) -> None:
    trace = good_trace(tmp_path / "t")
    result = paracell("info", "--json", str(trace))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["pages_allocated"] == 20
    assert doc["pages_freed"] == 1
    assert doc["peak_allocated_bytes"] == 20 * 4096
    assert doc["syscalls"][0]["name"] == "read"
    assert doc["syscalls"][0]["count"] == 20


def test_info_text_on_shipped_trace() -> None:
    from paracell.trace import shipped_trace_paths

    path = next(
        p for p in shipped_trace_paths() if (p / "mm_page_alloc.parquet").exists()
    )
    result = paracell("info", str(path))
    assert result.returncode == 0, result.stderr
    assert "peak allocated:" in result.stdout
    assert "system calls:" in result.stdout
