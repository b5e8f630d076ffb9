"""Sweeps: spec checks, cell ids, a real Dask cluster, interruption and resume."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from paracell.errors import ResultsError
from paracell.reports.store import ResultsStore, to_json
from paracell.reports.sweep import (
    Cell,
    LinearValues,
    cell_id_for,
    check_grid_size,
    count_cells,
    evaluate_cell,
    expand_cells,
    iter_cells,
    load_sweep_traces,
    read_spec,
)
from paracell.trace import shipped_trace_paths

# 4 shipped traces x 4 runtimes x 2 deployments x 7 grid points = 224 cells.
GRID_SPEC = """
name = "grid"
traces = ["shipped"]

[latency]
runtimes = ["runc", "runv", "pvm", "paracell"]
deployments = ["bare-metal", "nested"]

[[params]]
name = "paracell.gate_entry_cycles"
values = [30, 55, 80, 110, 140, 170, 200]
"""

# Memory cells on every shipped trace: 4 traces x 3 policies x 2 placements
# x 2 grid points = 48 cells, from a few ms to about a second each.
MEMORY_SPEC = """
name = "memory-grid"
traces = ["shipped"]

[memory]
policies = ["fpr", "hyperalloc", "pager"]
placements = ["default", "buddy"]

[[params]]
name = "memory.pager.reserve"
values = ["128 pages", "512 pages"]
"""


def _write_spec(directory: Path, text: str, name: str = "spec.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def _sweep_command(spec: Path, results: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "paracell",
        "sweep",
        str(spec),
        "--results",
        str(results),
        "--json",
        *extra,
    ]


def _stored_cells(results: Path) -> list[tuple[str, str]]:
    if not (results / "paracell.sqlite").exists():
        return []
    with ResultsStore(results) as store:
        _, rows = store.query(
            "SELECT cell_id, result_json FROM runs WHERE cell_id IS NOT NULL"
        )
    return rows


@pytest.fixture(scope="module")
def dask_scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a two-process dask.distributed cluster on loopback; yield its address."""
    import dask
    from distributed import LocalCluster

    # Keep the cluster's scratch files under pytest's temporary directory.
    scratch = str(tmp_path_factory.mktemp("dask"))
    with dask.config.set({"temporary-directory": scratch}):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            local_directory=scratch,
        )
        try:
            yield cluster.scheduler_address
        finally:
            cluster.close()


def test_spec_expands_to_grid(tmp_path: Path) -> None:
    spec = read_spec(_write_spec(tmp_path, GRID_SPEC))
    cells = expand_cells(spec)
    assert len(spec.trace_paths) == 4
    assert len(cells) == 4 * 4 * 2 * 7
    assert len({c.cell_id for c in cells}) == len(cells)
    gate_values = {c.values[0][2] for c in cells}
    assert gate_values == {30.0, 55.0, 80.0, 110.0, 140.0, 170.0, 200.0}


def test_cell_id_is_stable_and_sensitive() -> None:
    axes = {"runtime": "pvm", "deployment": "nested"}
    base = cell_id_for("h" * 64, "latency", axes, [("pvm.hypercall", "nested", 480.0)])
    same = cell_id_for(
        "h" * 64, "latency", dict(axes), [("pvm.hypercall", "nested", 480)]
    )
    assert base == same
    assert base != cell_id_for(
        "g" * 64, "latency", axes, [("pvm.hypercall", "nested", 480.0)]
    )
    assert base != cell_id_for(
        "h" * 64, "latency", axes, [("pvm.hypercall", "nested", 481.0)]
    )
    assert base != cell_id_for(
        "h" * 64, "latency", {"runtime": "runv", "deployment": "nested"}, []
    )
    assert base != cell_id_for(
        "h" * 64, "latency", axes, [("pvm.hypercall", "nested", 480.0)], "9.9.9"
    )


def test_profile_and_grid_value_share_cell_id(tmp_path: Path) -> None:
    profile = _write_spec(
        tmp_path,
        '[params]\n"paracell.gate_entry_cycles" = "80 cycles"\n',
        "profile.toml",
    )
    via_profile = read_spec(
        _write_spec(
            tmp_path,
            'traces = ["shipped"]\nprofile = "profile.toml"\n'
            '[latency]\nruntimes = ["pvm"]\n',
            "a.toml",
        )
    )
    via_grid = read_spec(
        _write_spec(
            tmp_path,
            'traces = ["shipped"]\n[latency]\nruntimes = ["pvm"]\n'
            '[[params]]\nname = "paracell.gate_entry_cycles"\nvalues = [80]\n',
            "b.toml",
        )
    )
    assert profile.exists()
    ids_profile = {c.cell_id for c in expand_cells(via_profile)}
    ids_grid = {c.cell_id for c in expand_cells(via_grid)}
    assert ids_profile == ids_grid


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('traces = ["shipped"]\n', "neither [latency] nor [memory]"),
        ('traces = ["shipped"]\nbogus = 1\n[latency]\n', "unknown field(s) bogus"),
        ('traces = ["nope"]\n[latency]\n', "traces[0]': no trace matches 'nope'"),
        ('[latency]\nruntimes = ["xen"]\n', "unknown value 'xen'"),
        ('[memory]\nplacements = ["random"]\n', "unknown value 'random'"),
        (
            '[latency]\n[[params]]\nname = "no.such"\nvalues = [1]\n',
            "unknown parameter",
        ),
        (
            '[latency]\n[[params]]\nname = "runv.exit"\nvalues = ["3 GiB"]\n',
            "params[0].values[0]: unit 'GiB' is not a ns unit",
        ),
        (
            '[latency]\n[[params]]\nname = "runv.exit"\nvalues = [1]\nrange = {}\n',
            "exactly one of 'values' or 'range'",
        ),
        ("[latency\n", "invalid TOML"),
    ],
)
def test_bad_spec_names_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ResultsError) as caught:
        read_spec(_write_spec(tmp_path, text))
    assert message in str(caught.value)
    assert str(tmp_path / "spec.toml") in str(caught.value)


def test_range_values_in_canonical_unit(tmp_path: Path) -> None:
    spec = read_spec(
        _write_spec(
            tmp_path,
            '[latency]\n[[params]]\nname = "runv.exit"\ndeployment = "nested"\n'
            'range = { start = "5 us", stop = "10 us", num = 3 }\n',
        )
    )
    assert spec.axes[0].values == (5000.0, 7500.0, 10000.0)
    assert spec.axes[0].keys == (("runv.exit", "nested"),)


def test_cli_bad_spec_exit_2(tmp_path: Path) -> None:
    spec = _write_spec(tmp_path, "[latency]\nruntimes = []\n")
    done = subprocess.run(
        _sweep_command(spec, tmp_path / "results"), capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "latency.runtimes" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_dask_sweep_runs_every_cell_once(tmp_path: Path, dask_scheduler: str) -> None:
    spec = _write_spec(tmp_path, GRID_SPEC)
    results = tmp_path / "results"
    done = subprocess.run(
        _sweep_command(spec, results, "--scheduler", dask_scheduler),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["nr_cells"] == 224
    assert summary["nr_computed"] == 224
    stored = _stored_cells(results)
    assert len(stored) == 224
    assert len({cell_id for cell_id, _ in stored}) == 224
    again = subprocess.run(
        _sweep_command(spec, results, "--scheduler", dask_scheduler),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["nr_computed"] == 0
    assert len(_stored_cells(results)) == 224


def _interrupt_midway(command: list[str], results: Path, total: int, sig: int) -> None:
    """Start a sweep and send it ``sig`` once a third of its cells are stored."""
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    nr_stored = 0
    try:
        while time.monotonic() < deadline and process.poll() is None:
            nr_stored = len(_stored_cells(results))
            if nr_stored >= total // 3:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the sweep ended before it could be interrupted"
        process.send_signal(sig)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def _assert_equal_to_direct_runs(results: Path, spec_path: Path) -> None:
    cells = {c.cell_id: c for c in expand_cells(read_spec(spec_path))}
    stored = _stored_cells(results)
    ids = [cell_id for cell_id, _ in stored]
    assert len(ids) == len(set(ids)), "a cell is stored more than once"
    assert set(ids) == set(cells)
    for cell_id, result_json in stored:
        direct = json.loads(to_json(evaluate_cell(cells[cell_id])))
        assert json.loads(result_json) == direct, cells[cell_id].describe()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_dask_sweep_resumes_after_interrupt(
    tmp_path: Path, dask_scheduler: str, sig: int
) -> None:
    spec = _write_spec(tmp_path, GRID_SPEC)
    results = tmp_path / "results"
    command = _sweep_command(spec, results, "--scheduler", dask_scheduler)
    _interrupt_midway(command, results, 224, sig)
    nr_after_interrupt = len(_stored_cells(results))
    assert 0 < nr_after_interrupt < 224
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["nr_skipped"] == nr_after_interrupt
    assert summary["nr_computed"] == 224 - nr_after_interrupt
    _assert_equal_to_direct_runs(results, spec)


def _processes_with_marker(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_local_pool_killed_leaves_no_workers(tmp_path: Path) -> None:
    spec = _write_spec(tmp_path, MEMORY_SPEC)
    results = tmp_path / "results"
    marker = f"PARACELL_TEST_SWEEP={uuid.uuid4().hex}"
    name, value = marker.split("=")
    env = dict(os.environ, **{name: value})
    command = _sweep_command(spec, results, "--workers", "2")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(_stored_cells(results)) < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        workers = [pid for pid in _processes_with_marker(marker) if pid != process.pid]
        assert workers, "the local pool started no worker processes"
        process.kill()
        process.wait()
        assert len(_stored_cells(results)) < 48, "the sweep finished before the kill"
        deadline = time.monotonic() + 10
        while _processes_with_marker(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_with_marker(marker) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["nr_computed"] > 0
    _assert_equal_to_direct_runs(results, spec)


def test_cell_describe_names_axes() -> None:
    cell = Cell(
        cell_id="x",
        kind="latency",
        trace_path="/t",
        trace_hash="h",
        trace_name="redis",
        runtime="pvm",
        deployment="nested",
        policy=None,
        placement=None,
        profile=None,
        values=(("runv.exit", "nested", 5000.0),),
    )
    assert cell.describe() == "redis latency pvm/nested (runv.exit[nested]=5000)"
    assert cell.axes() == {
        "kind": "latency",
        "runtime": "pvm",
        "deployment": "nested",
        "values": [["runv.exit", "nested", 5000.0]],
    }


def test_empty_latency_table_selects_model_runtimes(tmp_path: Path) -> None:
    from paracell.models import latency

    spec = read_spec(_write_spec(tmp_path, "[latency]\n"))
    assert spec.runtimes == list(latency.RUNTIMES)
    assert spec.deployments == ["bare-metal", "nested"]
    assert spec.trace_paths == [p.resolve() for p in shipped_trace_paths()]


def test_rejected_cells_do_not_stop_sweep(tmp_path: Path) -> None:
    from paracell.trace.builder import TraceBuilder

    builder = TraceBuilder(name="no-allocator-events")
    for i in range(20):
        builder.syscall(ts_ns=1_000 * (i + 1), nr=39)
    builder.write(tmp_path / "bare")
    redis = next(p for p in shipped_trace_paths() if p.name == "redis")
    spec = _write_spec(
        tmp_path,
        f'traces = ["bare", "{redis}"]\n[memory]\npolicies = ["pager", "fpr"]\n',
    )
    results = tmp_path / "results"
    command = _sweep_command(spec, results, "--workers", "1")
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 2
    assert "2 of 4 cells failed" in first.stderr
    assert "no-allocator-events" in first.stderr
    assert "Traceback" not in first.stderr
    assert len(_stored_cells(results)) == 2
    # A rerun tries only the failed cells again.
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2
    assert "2 of 2 cells failed" in again.stderr
    assert len(_stored_cells(results)) == 2


def test_binary_spec_rejected(tmp_path: Path) -> None:
    spec = tmp_path / "ls.toml"
    spec.write_bytes(Path("/bin/ls").read_bytes()[:4096])
    with pytest.raises(ResultsError, match=r"ls\.toml: not UTF-8 text"):
        read_spec(spec)


def test_corrupt_trace_fails_its_cells_cleanly(tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(_redis_path(), broken)
    parquet = broken / "mm_page_alloc.parquet"
    parquet.write_bytes(parquet.read_bytes()[: parquet.stat().st_size // 2])
    spec = _write_spec(tmp_path, 'traces = ["broken"]\n[memory]\npolicies = ["fpr"]\n')
    command = _sweep_command(spec, tmp_path / "results", "--workers", "1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "1 of 1 cells failed" in result.stderr
    assert "mm_page_alloc.parquet" in result.stderr


def _redis_path() -> Path:
    return next(p for p in shipped_trace_paths() if p.name == "redis")


def _huge_range_spec(directory: Path, num: int) -> Path:
    return _write_spec(
        directory,
        f'name = "huge"\ntraces = ["{_redis_path()}"]\n[latency]\n'
        '[[params]]\nname = "runv.exit"\n'
        f'range = {{ start = "1 us", stop = "5 us", num = {num} }}\n',
    )


def test_huge_range_is_counted_not_built(tmp_path: Path) -> None:
    spec = read_spec(_huge_range_spec(tmp_path, 100_000_000))
    traces = load_sweep_traces(spec)
    [axis] = spec.axes
    assert len(axis.values) == 100_000_000
    assert axis.values[0] == 1000.0
    assert axis.values[-1] == 5000.0
    assert count_cells(spec, traces) == 100_000_000 * 4 * 2
    with pytest.raises(ResultsError) as caught:
        check_grid_size(spec, traces, 100_000)
    message = str(caught.value)
    assert "800,000,000 cells" in message
    assert "1 trace x 100,000,000 grid points x 8 model cells per point" in message
    assert "--max-cells" in message
    first = list(itertools.islice(iter_cells(spec, traces), 9))
    assert [c.values[0][2] for c in first[:8]] == [1000.0] * 8
    assert first[8].values[0][2] == pytest.approx(1000.00004)


def test_cli_huge_grid_rejected_exit_2(tmp_path: Path) -> None:
    spec = _huge_range_spec(tmp_path, 100_000_000)
    results = tmp_path / "results"
    for extra in ([], ["--dry-run"]):
        done = subprocess.run(
            _sweep_command(spec, results, *extra),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert "800,000,000 cells" in done.stderr
        assert "Traceback" not in done.stderr
    # The dry run still prints the size and the first cells.
    document = json.loads(done.stdout)
    assert document["nr_cells"] == 800_000_000
    assert document["nr_stored"] is None
    assert len(document["first_cells"]) == 5
    assert not results.exists()


def test_cli_max_cells_option(tmp_path: Path) -> None:
    spec = _write_spec(tmp_path, GRID_SPEC)
    results = tmp_path / "results"
    rejected = subprocess.run(
        _sweep_command(spec, results, "--max-cells", "223"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rejected.returncode == 2
    assert "the grid has 224 cells" in rejected.stderr
    assert "more than the maximum of 223" in rejected.stderr
    assert not results.exists()
    accepted = subprocess.run(
        _sweep_command(spec, results, "--max-cells", "224", "--dry-run"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["nr_cells"] == 224
    bad = subprocess.run(
        _sweep_command(spec, results, "--max-cells", "0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "cell count 0 is less than 1" in bad.stderr


def test_dry_run_counts_stored_cells(tmp_path: Path) -> None:
    spec_path = _write_spec(tmp_path, GRID_SPEC)
    results = tmp_path / "results"
    cells = expand_cells(read_spec(spec_path))
    with ResultsStore(results) as store:
        for cell in cells[:3]:
            store.add_runs([_record_for(cell)])
    command = _sweep_command(spec_path, results, "--dry-run")
    command.remove("--json")
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "sweep grid: 224 cells (4 traces x 7 grid points x 8 model cells per "
        "point), 3 already stored"
    )
    assert lines[1].split()[0] == cells[0].cell_id[:12]
    assert lines[-1] == "  ... and 219 more"


def _record_for(cell: Cell) -> Any:
    from paracell.reports.store import RunRecord

    return RunRecord(command="sweep", result={"x": 1}, cell_id=cell.cell_id)


def test_iter_cells_matches_product_order(tmp_path: Path) -> None:
    spec = read_spec(
        _write_spec(
            tmp_path,
            f'traces = ["{_redis_path()}"]\n[memory]\npolicies = ["pager"]\n'
            '[[params]]\nname = "memory.pager.reserve"\n'
            'values = ["128 pages", "256 pages"]\n'
            '[[params]]\nname = "memory.balloon.chunk"\n'
            "range = { start = 64, stop = 256, num = 3 }\n",
        )
    )
    points = [tuple(v for _, _, v in c.values) for c in iter_cells(spec)]
    expected = list(itertools.product(spec.axes[0].values, spec.axes[1].values))
    assert points == expected
    assert len(points) == count_cells(spec, load_sweep_traces(spec))


def test_same_trace_twice_counted_once(tmp_path: Path) -> None:
    spec = read_spec(
        _write_spec(
            tmp_path,
            f'traces = ["shipped", "{_redis_path()}"]\n[latency]\n'
            'runtimes = ["pvm"]\ndeployments = ["nested"]\n',
        )
    )
    assert len(spec.trace_paths) == 4
    traces = load_sweep_traces(spec)
    assert len(traces) == 4
    cells = expand_cells(spec, traces)
    assert len(cells) == count_cells(spec, traces) == 4
    assert len({c.cell_id for c in cells}) == 4


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            '[[params]]\nname = "runv.exit"\nvalues = [1]\n'
            '[[params]]\nname = "runv.exit"\ndeployment = "nested"\nvalues = [2]\n',
            "params[1]: runv.exit [nested] is already set by params[0]",
        ),
        (
            '[[params]]\nname = "runv.exit"\n'
            "range = { start = 1, stop = 1.0000000000000002, num = 3 }\n",
            "params[0].range.num: 3 values between 1 and 1 ns are closer than a "
            "double can tell apart",
        ),
    ],
    ids=["overlapping-axes", "range-too-fine"],
)
def test_spec_rejects_repeated_cells(tmp_path: Path, params: str, message: str) -> None:
    with pytest.raises(ResultsError) as caught:
        read_spec(_write_spec(tmp_path, "[latency]\n" + params))
    assert message in str(caught.value)


def test_range_with_equal_ends_is_one_value(tmp_path: Path) -> None:
    spec = read_spec(
        _write_spec(
            tmp_path,
            '[latency]\n[[params]]\nname = "runv.exit"\n'
            'range = { start = "2 us", stop = "2 us", num = 5 }\n',
        )
    )
    assert list(spec.axes[0].values) == [2000.0]


def test_linear_values_sequence() -> None:
    values = LinearValues(0.0, 10.0, 6)
    assert len(values) == 6
    assert values[1] == 2.0
    assert values[-1] == 10.0
    assert values[1:3] == [2.0, 4.0]
    assert values == (0.0, 2.0, 4.0, 6.0, 8.0, 10.0)
    assert values != (0.0, 2.0)
    with pytest.raises(IndexError):
        values[6]


def test_scheduler_help_uses_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    from paracell.cli import main

    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "tcp://127.0.0.1:8786" in help_text
    assert "10.0.0." not in help_text
    assert "--max-cells N" in help_text


@pytest.mark.parametrize("address", ["notaurl", "tcp://127.0.0.1", "tcp://host:port"])
def test_malformed_scheduler_rejected_at_once(tmp_path: Path, address: str) -> None:
    spec = _write_spec(tmp_path, GRID_SPEC)
    command = _sweep_command(spec, tmp_path / "results", "--scheduler", address)
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "invalid address" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "results").exists()
