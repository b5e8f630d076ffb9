"""Malformed inputs through the CLI: one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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


def test_strace_timestamp_out_of_range(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_text("1 99999999999999999999.000001 getpid() = 1 <0.000001>\n")
    result = paracell("import-strace", "-o", str(tmp_path / "o"), str(log))
    assert_one_line_error(result, f"{log}:1", "timestamp is out of range")
    assert not (tmp_path / "o").exists()


def test_strace_only_unknown_calls(tmp_path: Path) -> None:
    log = tmp_path / "odd.log"
    log.write_text("1 1700000000.000001 frobnicate(1) = 0 <0.000001>\n")
    result = paracell("import-strace", "-o", str(tmp_path / "o"), str(log))
    assert_one_line_error(result, "no known x86-64 system calls", "frobnicate")
    assert not (tmp_path / "o").exists()


def test_import_force_keeps_foreign_directory(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("1 1700000000.000001 getpid() = 1 <0.000001>\n")
    target = tmp_path / "important"
    target.mkdir()
    (target / "thesis.txt").write_text("precious\n")
    result = paracell("import-strace", "--force", "-o", str(target), str(log))
    assert_one_line_error(result, str(target), "--force replaces only")
    assert (target / "thesis.txt").read_text() == "precious\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_trace_force_keeps_foreign_directory(tmp_path: Path) -> None:
    """Checked before the command runs, with or without root."""
    target = tmp_path / "important"
    target.mkdir()
    (target / "thesis.txt").write_text("precious\n")
    marker = tmp_path / "ran"
    result = paracell("trace", "--force", "-o", str(target), "--", "touch", str(marker))
    assert_one_line_error(result, str(target), "--force replaces only")
    assert (target / "thesis.txt").read_text() == "precious\n"
    assert not marker.exists()


@pytest.mark.parametrize("target", [".", "..", "/", "/proc"])
def test_trace_output_not_replaceable(tmp_path: Path, target: str) -> None:
    """The cwd, its ancestors and mount points are rejected before anything runs."""
    work = tmp_path / "empty"
    work.mkdir()
    marker = tmp_path / "ran"
    result = subprocess.run(
        [sys.executable, "-m", "paracell", "trace", "--force", "-o", target]
        + ["--", "touch", str(marker)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=work,
    )
    assert_one_line_error(result, f"error: {target}: output ", "-o ./trace")
    assert not marker.exists()
    assert list(work.iterdir()) == []


def test_trace_output_in_proc(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = paracell("trace", "-o", "/proc/foo", "--", "touch", str(marker))
    assert_one_line_error(result, "/proc/foo", "cannot create entries in /proc")
    assert not marker.exists()


def test_trace_output_on_read_only_fs(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only tmpfs")
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mount_point)],
        check=True,
    )
    try:
        marker = tmp_path / "ran"
        out = mount_point / "sub" / "t"
        result = paracell("trace", "-o", str(out), "--", "touch", str(marker))
        assert_one_line_error(result, str(out), "Read-only file system")
        assert not marker.exists()
        log = tmp_path / "run.log"
        log.write_text("1 1700000000.000001 getpid() = 1 <0.000001>\n")
        result = paracell("import-strace", "-o", str(out), str(log))
        assert_one_line_error(result, str(out), "Read-only file system")
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.mark.tracefs
def test_trace_output_on_full_fs(tmp_path: Path) -> None:
    """The run is recorded, then the write fails: one line, nothing left behind."""
    if os.geteuid() != 0:
        pytest.skip("needs root to trace and to mount a tmpfs")
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount_point)],
        check=True,
    )
    try:
        out = mount_point / "t"
        result = paracell("trace", "-o", str(out), "--", "ls", "-R", "/usr/lib")
        assert_one_line_error(result, str(out), "No space left on device")
        assert list(mount_point.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.mark.tracefs
def test_trace_without_events_warns(tmp_path: Path) -> None:
    """`true` creates no task, so a task_newtask-only capture records nothing."""
    if os.geteuid() != 0:
        pytest.skip("needs root to trace")
    result = paracell(
        "trace", "-o", str(tmp_path / "t"), "--events", "task_newtask", "--", "true"
    )
    assert result.returncode == 0, result.stderr
    assert "warning: the capture recorded no events at all" in result.stderr


def test_trace_empty_event_selection(tmp_path: Path) -> None:
    for value in ("", " , "):
        result = paracell(
            "trace", "-o", str(tmp_path / "t"), "--events", value, "--", "true"
        )
        assert_one_line_error(result, "selects nothing", "syscalls")
    assert not (tmp_path / "t").exists()


def test_trace_operations_sources_exclusive(tmp_path: Path) -> None:
    count = tmp_path / "count"
    count.write_text("7\n")
    result = paracell(
        "trace",
        "-o",
        str(tmp_path / "t"),
        "--operations",
        "5",
        "--operations-from",
        str(count),
        "--",
        "true",
    )
    assert result.returncode == 2, result.stderr
    assert "not allowed with argument" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "t").exists()


def run_as_nobody(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in a forked child that dropped root; return (status, stderr)."""
    from paracell.cli import build_parser, main

    build_parser()  # imports every subcommand while the files are readable
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_fd)
            sys.stderr = os.fdopen(write_fd, "w")
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            status = main(argv)
            sys.stderr.flush()
            os._exit(status)
        except BaseException as exc:  # reported through the pipe
            os.write(write_fd, f"child failed: {exc!r}".encode())
        finally:
            os._exit(99)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        stderr = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), stderr


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory user nobody can enter (pytest's tmp_path is root-only)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to user nobody")
    path = Path(tempfile.mkdtemp(prefix="paracell-nobody-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for p in [path, *path.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(path)


def test_info_unreadable_directory(world_dir: Path) -> None:
    trace = good_trace(world_dir / "t")
    trace.chmod(0o000)
    status, stderr = run_as_nobody(["info", str(trace)])
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert str(trace) in lines[0]
    assert "cannot read the trace directory (Permission denied)" in lines[0]


def test_info_unreadable_manifest(world_dir: Path) -> None:
    trace = good_trace(world_dir / "t")
    (trace / "manifest.json").chmod(0o000)
    status, stderr = run_as_nobody(["info", str(trace)])
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "manifest.json: cannot read the manifest (Permission denied)" in lines[0]
    assert "JSON" not in lines[0]


def test_info_unreadable_event_file(world_dir: Path) -> None:
    trace = good_trace(world_dir / "t")
    (trace / "syscalls.parquet").chmod(0o000)
    status, stderr = run_as_nobody(["info", str(trace)])
    assert status == 2, stderr
    assert "syscalls.parquet: cannot read (Permission denied)" in stderr
    assert "Traceback" not in stderr
