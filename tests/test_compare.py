"""paracell compare: both models on each trace, as tables, JSON and files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paracell.cli import main
from paracell.trace import shipped_trace_paths
from paracell.trace.builder import TraceBuilder

RUNTIMES = ("runc", "runv", "pvm", "paracell")
DEPLOYMENTS = ("bare-metal", "nested")
POLICIES = ("static", "thp", "fpr", "balloon", "damon", "hyperalloc", "pager")


@pytest.fixture(scope="module")
def redis() -> Path:
    return next(p for p in shipped_trace_paths() if p.name == "redis")


def run_json(capsys, *argv: str) -> dict:
    assert main(["compare", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_has_both_models(capsys, redis):
    document = run_json(capsys, str(redis))
    (entry,) = document["traces"]
    assert entry["name"] == "redis"
    assert document["modelled"] is True
    for runtime in RUNTIMES:
        for deployment in DEPLOYMENTS:
            result = entry["latency"][runtime][deployment]
            assert result["total_ns"] == result["native_ns"] + result["overhead_ns"]
            assert result["by_class"]
            assert result["relative_to_runc"] > 0
    for policy in POLICIES:
        metrics = entry["memory"][policy]
        assert metrics["peak_footprint_bytes"] >= metrics["mean_footprint_bytes"] > 0
        assert 0 <= metrics["waste_fraction"] < 1


def test_latency_uses_memory_model_counts(capsys, redis):
    entry = run_json(capsys, str(redis))["traces"][0]
    faults = entry["memory"]["static"]["secondary_faults"]
    by_class = entry["latency"]["runv"]["bare-metal"]["by_class"]
    assert by_class["first_touch"]["count"] == pytest.approx(faults)
    assert any("first-touch faults" in note for note in entry["notes"])


def test_tables_printed(capsys, redis):
    assert main(["compare", str(redis)]) == 0
    out = capsys.readouterr().out
    assert "Latency: modelled total time" in out
    assert "Memory: modelled footprint" in out
    for label in ("runc", "RunV", "PVM", "ParaCell", *POLICIES):
        assert label in out
    assert "not measured" in out


def test_same_names_kept_apart(capsys, redis, tmp_path):
    out = tmp_path / "out"
    document = run_json(capsys, "--out", str(out), str(redis), str(redis))
    assert [t["name"] for t in document["traces"]] == ["redis", "redis-2"]
    assert (out / "footprint-redis.png").stat().st_size > 0
    assert (out / "footprint-redis-2.png").stat().st_size > 0
    assert (
        json.loads((out / "compare.json").read_text())["traces"][1]["name"] == "redis-2"
    )
    assert "redis-2" in (out / "compare.txt").read_text()
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_syscall_only_trace_skips_memory(capsys, tmp_path):
    b = TraceBuilder(name="imported")
    for i in range(20):
        b.syscall(1_000 * i, nr=0, duration_ns=500)
    trace = b.write(tmp_path / "t")
    entry = run_json(capsys, str(trace.path))["traces"][0]
    assert entry["memory"] == {}
    assert any("memory model skipped" in n for n in entry["notes"])
    assert any("has no page faults" in n for n in entry["notes"])
    assert entry["latency"]["runc"]["bare-metal"]["overhead_ns"] == 0


def test_lost_events_reported(capsys, tmp_path):
    b = TraceBuilder(name="lossy")
    b.syscall(0, nr=0)
    b.alloc(10, pfn=100)
    b.free(20, pfn=100)
    manifest = b.manifest()
    manifest.lost_events = {"total": 30}
    from paracell.trace import write_trace

    trace = write_trace(tmp_path / "t", manifest, b.tables())
    entry = run_json(capsys, str(trace.path))["traces"][0]
    assert any("30 events" in n and "lost" in n for n in entry["notes"])


def test_unwritable_out_is_one_line_error(capsys, redis, tmp_path):
    target = tmp_path / "file"
    target.write_text("not a directory")
    assert main(["compare", "--out", str(target / "sub"), str(redis)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("paracell: error:")
    assert "Traceback" not in err


def test_compare_bad_out_fails_before_modelling(tmp_path, capsys):
    from paracell.cli import main
    from paracell.trace import shipped_trace_paths

    blocker = tmp_path / "file"
    blocker.write_text("")
    redis = next(p for p in shipped_trace_paths() if p.name == "redis")
    status = main(["compare", str(redis), "--out", str(blocker / "out")])
    captured = capsys.readouterr()
    assert status == 2
    assert "is not a directory" in captured.err
    # Nothing was modelled or printed before the error.
    assert captured.out == ""
