"""Results store: round trip, read-only queries, crash safety, concurrent writers."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from paracell.cli import main
from paracell.errors import ResultsError
from paracell.reports.store import ResultsStore, RunRecord, flatten_metrics


def test_flatten_metrics_paths_and_filtering() -> None:
    result = {
        "paracell": {
            "bare-metal": {"total_ns": 10, "by_class": {"syscall": {"count": 3}}}
        },
        "label": "text",
        "flag": True,
        "missing": None,
        "nan": float("nan"),
        "series": [1.5, 2.5],
    }
    flat = dict(flatten_metrics(result))
    assert flat == {
        "paracell/bare-metal/total_ns": 10.0,
        "paracell/bare-metal/by_class/syscall/count": 3.0,
        "series/0": 1.5,
        "series/1": 2.5,
    }


def test_store_round_trip(tmp_path: Path) -> None:
    result = {"runc": {"bare-metal": {"total_ns": 1000.0, "overhead_ns": 0.0}}}
    with ResultsStore(tmp_path) as store:
        run_id = store.add_run(
            RunRecord(
                command="latency",
                result=result,
                params={"options": {"runtimes": ["runc"]}},
                trace_name="demo",
                trace_hash="ab" * 32,
            )
        )
        columns, rows = store.query(
            "SELECT key, value FROM metrics WHERE run_id = ? ORDER BY key", (run_id,)
        )
        assert columns == ["key", "value"]
        assert rows == [
            ("runc/bare-metal/overhead_ns", 0.0),
            ("runc/bare-metal/total_ns", 1000.0),
        ]
        _, runs = store.query(
            "SELECT command, trace_name, result_json, tool_version FROM runs"
        )
    assert len(runs) == 1
    assert runs[0][0] == "latency"
    assert runs[0][1] == "demo"
    assert json.loads(runs[0][2]) == result
    assert runs[0][3]


def test_query_cannot_modify_store(tmp_path: Path) -> None:
    with ResultsStore(tmp_path) as store:
        store.add_run(RunRecord(command="memory", result={"x": 1}))
        with pytest.raises(ResultsError, match="query failed"):
            store.query("DELETE FROM runs")
        _, rows = store.query("SELECT count(*) FROM runs")
        assert rows == [(1,)]
        # Writes still work after a rejected query.
        store.add_run(RunRecord(command="memory", result={"x": 2}))
        _, rows = store.query("SELECT count(*) FROM runs")
        assert rows == [(2,)]


@pytest.mark.parametrize(
    ("sql", "denied"),
    [
        ("ATTACH '{outside}/evil.db' AS e", "ATTACH of"),
        ("VACUUM INTO '{outside}/copy.db'", "ATTACH of"),
        ("PRAGMA journal_mode = DELETE", "PRAGMA journal_mode = DELETE"),
        ("PRAGMA user_version = 7", "PRAGMA user_version = 7"),
        ("CREATE TEMP TABLE t (x)", "INSERT on sqlite_temp_master"),
        ("BEGIN", "BEGIN (a transaction)"),
        ("DETACH main", "DETACH"),
        ("DELETE FROM runs", "DELETE on runs"),
    ],
)
@pytest.mark.parametrize("readonly", [True, False], ids=["readonly", "writable"])
def test_query_creates_and_changes_nothing(
    tmp_path: Path, sql: str, denied: str, readonly: bool
) -> None:
    results = tmp_path / "results"
    outside = tmp_path / "outside"
    outside.mkdir()
    with ResultsStore(results) as store:
        store.add_run(RunRecord(command="memory", result={"x": 1}))
    with ResultsStore(results, readonly=readonly) as store:
        with pytest.raises(ResultsError) as caught:
            store.query(sql.format(outside=outside))
        message = str(caught.value)
        assert message.startswith("query failed: the statement does not only read")
        assert f"(SQLite asked for {denied}" in message
        assert "\n" not in message
        _, rows = store.query("SELECT count(*) FROM runs")
        assert rows == [(1,)]
        _, mode = store.query("PRAGMA journal_mode")
        assert mode == [("wal",)]
        _, version = store.query("PRAGMA user_version")
        assert version == [(0,)]
    assert list(outside.iterdir()) == []


def test_query_allows_reads(tmp_path: Path) -> None:
    with ResultsStore(tmp_path) as store:
        store.add_run(RunRecord(command="memory", result={"x": 1, "y": 2}))
    with ResultsStore(tmp_path, readonly=True) as store:
        columns, rows = store.query("PRAGMA table_info(metrics)")
        assert "name" in columns
        assert [r[1] for r in rows] == ["run_id", "key", "value"]
        _, rows = store.query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
            "WHERE i < 3) SELECT sum(i) FROM n"
        )
        assert rows == [(6,)]
        _, rows = store.query(
            "SELECT json_extract(result_json, '$.y') FROM runs WHERE command = ?",
            ("memory",),
        )
        assert rows == [(2,)]
        with pytest.raises(ResultsError, match="function load_extension"):
            store.query("SELECT load_extension('/nonexistent')")


def test_readonly_store_in_readonly_directory(tmp_path: Path) -> None:
    with ResultsStore(tmp_path) as store:
        store.add_run(RunRecord(command="memory", result={"x": 1}))
    # The last writer removes the -wal and -shm files when it closes.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paracell.sqlite"]
    command = [
        sys.executable,
        "-m",
        "paracell",
        "results",
        "--results",
        str(tmp_path),
        "--query",
        "SELECT count(*) AS n FROM runs",
        "--json",
    ]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is needed to drop root's write override")
        command = ["setpriv", "--bounding-set=-dac_override", *command]
    tmp_path.chmod(0o555)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        tmp_path.chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"n": 1}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paracell.sqlite"]


def test_readonly_store_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="results store not found"):
        ResultsStore(tmp_path, readonly=True)
    assert list(tmp_path.iterdir()) == []


def test_cli_query_attach_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    ResultsStore(results).close()
    evil = tmp_path / "evil.db"
    sql = f"ATTACH '{evil}' AS e"
    assert main(["results", "--results", str(results), "--query", sql]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "ATTACH of" in err
    assert "Traceback" not in err
    assert not evil.exists()


def test_duplicate_cell_stored_once(tmp_path: Path) -> None:
    with ResultsStore(tmp_path) as store:
        first = RunRecord(command="sweep", result={"v": 1}, cell_id="c1")
        again = RunRecord(command="sweep", result={"v": 1}, cell_id="c1")
        assert store.add_runs([first]) == 1
        assert store.add_runs([again], skip_existing_cells=True) == 0
        with pytest.raises(ResultsError, match="failed to save"):
            store.add_run(RunRecord(command="sweep", result={"v": 1}, cell_id="c1"))
        _, rows = store.query("SELECT count(*) FROM runs WHERE cell_id = 'c1'")
    assert rows == [(1,)]


def test_not_a_database_is_reported(tmp_path: Path) -> None:
    (tmp_path / "paracell.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ResultsError, match="cannot open the results store"):
        ResultsStore(tmp_path)


_WRITER = textwrap.dedent(
    """
    import sys
    from paracell.reports.store import ResultsStore, RunRecord
    results_dir, nr_leaves, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    result = {}
    for i in range(nr_leaves):
        result.setdefault(f"g{i // 100}", {})[f"m{i}"] = float(i)
    store = ResultsStore(results_dir)
    i = 0
    while True:
        run_id = f"{label}-{i}"
        print("begin", run_id, flush=True)
        store.add_run(RunRecord(command="latency", result=result, run_id=run_id))
        print("done", run_id, flush=True)
        i += 1
    """
)


def _check_store_consistent(results_dir: Path) -> dict[str, int]:
    """Assert every stored run has all its metrics; return run id -> nr_metrics."""
    with ResultsStore(results_dir) as store:
        assert store.integrity_check() == "ok"
        _, rows = store.query(
            "SELECT r.run_id, r.nr_metrics, count(m.key) FROM runs r "
            "LEFT JOIN metrics m ON m.run_id = r.run_id GROUP BY r.run_id"
        )
    for run_id, nr_metrics, counted in rows:
        assert counted == nr_metrics, (
            f"run {run_id} has {counted} of {nr_metrics} metrics"
        )
    return {run_id: nr_metrics for run_id, nr_metrics, _ in rows}


@pytest.mark.slow
def test_sigkill_mid_write_leaves_no_partial_run(tmp_path: Path) -> None:
    nr_leaves = 150_000
    rng = random.Random(20261201)
    interrupted_inside = 0
    for attempt in range(6):
        writer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WRITER,
                str(tmp_path),
                str(nr_leaves),
                f"w{attempt}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        # Let one run finish to learn how long a write takes here, then kill
        # the writer at a random point inside the next one.
        started = {}
        finished = {}
        while len(finished) < 1:
            verb, run_id = writer.stdout.readline().split()
            (started if verb == "begin" else finished)[run_id] = time.monotonic()
        first = f"w{attempt}-0"
        write_s = finished[first] - started[first]
        verb, in_flight = writer.stdout.readline().split()
        assert verb == "begin"
        time.sleep(rng.uniform(0.05, 0.9) * write_s)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        stored = _check_store_consistent(tmp_path)
        assert stored[first] == nr_leaves
        if in_flight in stored:
            assert stored[in_flight] == nr_leaves
        else:
            interrupted_inside += 1
    # At least some kills must have landed inside a transaction, or the test
    # proved nothing about partial writes.
    assert interrupted_inside >= 2


_CONCURRENT_WRITER = textwrap.dedent(
    """
    import sys
    from paracell.reports.store import ResultsStore, RunRecord
    results_dir, label, nr_runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    result = {f"m{i}": float(i) for i in range(2000)}
    with ResultsStore(results_dir) as store:
        for i in range(nr_runs):
            record = RunRecord(command="sweep", result=result, cell_id=f"{label}-{i}")
            store.add_run(record)
    """
)


def test_concurrent_writers_all_land(tmp_path: Path) -> None:
    ResultsStore(tmp_path).close()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT_WRITER, str(tmp_path), f"p{n}", "20"]
        )
        for n in range(4)
    ]
    for writer in writers:
        assert writer.wait(timeout=300) == 0
    stored = _check_store_consistent(tmp_path)
    assert len(stored) == 80
    assert set(stored.values()) == {2000}


def test_cli_results_list_query_and_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ResultsStore(tmp_path) as store:
        run_id = store.add_run(
            RunRecord(
                command="memory", result={"pager": {"peak_footprint_bytes": 4096}}
            )
        )
    assert main(["results", "--results", str(tmp_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in listed] == [run_id]
    sql = "SELECT value FROM metrics WHERE key = 'pager/peak_footprint_bytes'"
    assert main(["results", "--results", str(tmp_path), "--query", sql, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"value": 4096.0}]
    assert main(["results", "--results", str(tmp_path), "--show", run_id[:8]]) == 0
    shown = capsys.readouterr().out
    assert "peak_footprint_bytes" in shown
    assert main(["results", "--results", str(tmp_path)]) == 0
    assert run_id in capsys.readouterr().out


def test_cli_results_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["results", "--results", str(tmp_path / "none")]) == 2
    assert "results store not found" in capsys.readouterr().err
    ResultsStore(tmp_path).close()
    assert main(["results", "--results", str(tmp_path), "--query", "SELEC oops"]) == 2
    assert "query failed" in capsys.readouterr().err


def test_results_env_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PARACELL_RESULTS", str(tmp_path))
    with ResultsStore(tmp_path) as store:
        store.add_run(RunRecord(command="compare", result={"a": 1}))
    assert main(["results", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1


def test_save_run_records_options_and_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from paracell.cli.results import record_run
    from paracell.reports.saving import add_save_arguments
    from paracell.trace import load_trace, shipped_trace_paths

    profile = tmp_path / "profile.toml"
    profile.write_text('[params.nested]\n"runv.exit" = "9 us"\n')
    parser = argparse.ArgumentParser()
    add_save_arguments(parser)
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--runtime", action="append")
    args = parser.parse_args(
        [
            "--save",
            "--results",
            str(tmp_path),
            "--profile",
            str(profile),
            "--runtime",
            "pvm",
        ]
    )
    trace = load_trace(shipped_trace_paths()[0])
    run_id = record_run(args, "latency", trace, {"pvm": {"nested": {"total_ns": 5}}})
    assert run_id is not None
    assert run_id in capsys.readouterr().err
    with ResultsStore(tmp_path) as store:
        _, rows = store.query(
            "SELECT params_json, trace_hash, trace_name FROM runs WHERE run_id = ?",
            (run_id,),
        )
    params = json.loads(rows[0][0])
    assert rows[0][1] == trace.content_hash()
    assert rows[0][2] == trace.name
    assert params["options"] == {"profile": str(profile), "runtime": ["pvm"]}
    assert params["overrides"] == [
        {
            "name": "runv.exit",
            "deployment": "nested",
            "value": 9000.0,
            "unit": "ns",
            "source": "measured",
        }
    ]
    args.save = False
    assert record_run(args, "latency", trace, {"x": 1}) is None


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("latency", []),
        ("memory", []),
        ("compare", []),
        ("live", ["--policy", "pager"]),
    ],
)
def test_model_command_save_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, extra: list[str]
) -> None:
    from paracell.trace import load_trace, shipped_trace_paths

    redis = next(p for p in shipped_trace_paths() if p.name == "redis")
    argv = [command, str(redis), *extra, "--json", "--save", "--results", str(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)
    assert "saved run" in captured.err
    with ResultsStore(tmp_path) as store:
        _, rows = store.query("SELECT command, trace_hash, nr_metrics FROM runs")
    assert len(rows) == 1
    assert rows[0][0] == command
    assert rows[0][1] == load_trace(redis).content_hash()
    assert rows[0][2] > 10


def test_store_in_readonly_directory_names_cause(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    command = [
        sys.executable,
        "-c",
        "import sys\n"
        "from paracell.errors import ResultsError\n"
        "from paracell.reports.store import ResultsStore\n"
        "try:\n"
        "    ResultsStore(sys.argv[1])\n"
        "except ResultsError as exc:\n"
        "    print(exc)\n",
        str(locked),
    ]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is needed to drop root's write override")
        command = ["setpriv", "--bounding-set=-dac_override", *command]
    locked.chmod(0o555)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert "cannot open the results store" in done.stdout
    assert f"check that you can write to {locked}" in done.stdout
    assert "not a paracell results database" not in done.stdout


def test_cli_results_negative_limit(tmp_path: Path) -> None:
    ResultsStore(tmp_path).close()
    with pytest.raises(SystemExit) as info:
        main(["results", "--results", str(tmp_path), "--limit", "-1"])
    assert info.value.code == 2


def test_save_target_checked_before_modelling(tmp_path, capsys):
    from paracell.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    trace = tmp_path / "no-such-trace"
    # The store check comes before the trace is read, so the missing trace is
    # never reached: the error names the results path.
    status = main(["latency", "--save", "--results", str(blocker / "r"), str(trace)])
    assert status == 2
    err = capsys.readouterr().err
    assert str(blocker / "r") in err
    assert "Traceback" not in err
