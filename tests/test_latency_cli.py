"""`paracell costs` and `paracell latency` through the command line."""

from __future__ import annotations

import json

import pytest
from latency_helpers import COSTS, expected_syscall

from paracell.cli import main
from paracell.costs import SOURCES
from paracell.models.latency.sensitivity import varied_parameters
from paracell.trace.builder import TraceBuilder

END_NS = 5_000_000
# One low and one high setting per estimate that a latency path reads.
NR_SETTINGS = 2 * len(varied_parameters(COSTS))


@pytest.fixture
def trace_dir(tmp_path):
    b = TraceBuilder(name="cli-trace", operations=5)
    b.syscall(1_000, nr=39)
    b.syscall(2_000, nr=1, ret=64)
    b.page_fault(3_000, 0x1000)
    b.alloc(4_000, pfn=10, order=0)
    b.switch(5_000, prev_pid=1, next_pid=0)
    b.write(tmp_path / "trace", end_ts_ns=END_NS)
    return tmp_path / "trace"


@pytest.fixture
def profile(tmp_path):
    path = tmp_path / "fast-switcher.toml"
    path.write_text(
        '[meta]\ndescription = "test"\n\n'
        "[params]\n"
        '"pvm.switcher_roundtrip" = "1 us"\n\n'
        "[params.nested]\n"
        '"runv.exit" = { value = 20.0, unit = "us", source = "measured" }\n'
    )
    return path


def run_json(capsys, argv):
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return json.loads(captured.out)


def test_costs_table_lists_parameters(capsys):
    assert main(["costs"]) == 0
    out = capsys.readouterr().out
    for param in COSTS:
        assert param.name in out
    assert "estimate" in out
    assert "[30 .. 70]" in out  # the range of paracell.gate_entry_cycles
    assert "Sources:" in out
    assert SOURCES["PVM23"].split(",")[0] in out


def test_costs_name_filter(capsys):
    assert main(["costs", "--name", "paracell."]) == 0
    out = capsys.readouterr().out
    assert "paracell.gate_entry_cycles" in out
    assert "pvm.hypercall" not in out


def test_costs_json(capsys):
    document = run_json(capsys, ["costs", "--json"])
    rows = {(r["name"], r["deployment"]): r for r in document["parameters"]}
    assert len(rows) == len(COSTS)
    hypercall = rows[("pvm.hypercall", "nested")]
    assert hypercall["value"] == pytest.approx(480.0)
    assert hypercall["unit"] == "ns"
    assert hypercall["source"] == "PVM23"
    estimate = rows[("paracell.shadow_share", "any")]
    assert (estimate["low"], estimate["high"]) == (0.25, 1.0)
    assert estimate["reasoning"]
    assert set(document["sources"]) >= {"PVM23", "HERE", "estimate"}


def test_costs_profile_override(capsys, profile):
    document = run_json(capsys, ["costs", "--json", "--profile", str(profile)])
    rows = {(r["name"], r["deployment"]): r for r in document["parameters"]}
    for deployment in ("bare-metal", "nested"):
        row = rows[("pvm.switcher_roundtrip", deployment)]
        assert row["value"] == pytest.approx(1000.0)
        assert row["source"] == "measured"
        assert "set by profile" in row["note"]
    assert rows[("runv.exit", "nested")]["value"] == pytest.approx(20_000.0)
    assert rows[("runv.exit", "bare-metal")]["value"] == pytest.approx(460.0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('"pvm.nope" = "1 us"', "unknown parameter 'pvm.nope'"),
        ('"pvm.hypercall" = "3 pages"', "unit 'pages' is not a ns unit"),
        ('"paracell.shadow_share" = "2 us"', "unit 'us' is not a ratio unit"),
        ('"pvm.hypercall" = 3', "give a value with its unit"),
    ],
)
@pytest.mark.parametrize("command", ["costs", "latency"])
def test_bad_profile_exits_2(capsys, tmp_path, trace_dir, line, message, command):
    path = tmp_path / "bad.toml"
    path.write_text(f"[params]\n{line}\n")
    argv = [command, "--profile", str(path)]
    if command == "latency":
        argv.insert(1, str(trace_dir))
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("paracell: error: ")
    assert str(path) in lines[0]
    assert message in lines[0]


def test_latency_tables(capsys, trace_dir):
    assert main(["latency", str(trace_dir)]) == 0
    out = capsys.readouterr().out
    assert "Modelled, not measured" in out
    assert "cli-trace" in out
    for label in ("runc", "RunV", "PVM", "ParaCell"):
        assert label in out
    for cls in ("syscall", "fault", "first_touch", "pager_bind", "io", "idle"):
        assert cls in out
    assert "Overhead by class, bare-metal" in out
    assert "Overhead by class, nested" in out
    assert "57 %" in out
    assert "88 %" in out
    assert "Sensitivity" not in out


def test_latency_json(capsys, trace_dir):
    document = run_json(capsys, ["latency", str(trace_dir), "--json"])
    assert document["modelled"] is True
    (entry,) = document["traces"]
    assert entry["trace"] == "cli-trace"
    assert entry["path"] == str(trace_dir)
    results = entry["results"]
    pvm = results["pvm"]["bare-metal"]
    assert pvm["native_ns"] == END_NS
    assert pvm["by_class"]["syscall"]["overhead_ns"] == pytest.approx(
        2 * expected_syscall("pvm", "bare-metal")
    )
    assert pvm["per_operation_ns"] == pytest.approx(pvm["total_ns"] / 5)
    assert set(results["reductions"]) == {"paracell_vs_pvm", "paracell_vs_runv"}


def test_latency_filters(capsys, trace_dir):
    argv = [
        "latency",
        str(trace_dir),
        "--json",
        "--runtime",
        "pvm",
        "--runtime",
        "paracell",
        "--deployment",
        "nested",
    ]
    results = run_json(capsys, argv)["traces"][0]["results"]
    assert set(results) == {"pvm", "paracell", "reductions"}
    assert set(results["pvm"]) == {"nested"}
    assert set(results["reductions"]) == {"paracell_vs_pvm"}


def test_latency_profile_changes_results(capsys, trace_dir, profile):
    argv = ["latency", str(trace_dir), "--json", "--runtime", "pvm"]
    default = run_json(capsys, argv)["traces"][0]["results"]["pvm"]
    changed = run_json(capsys, [*argv, "--profile", str(profile)])
    changed = changed["traces"][0]["results"]["pvm"]
    for deployment in ("bare-metal", "nested"):
        before = default[deployment]["by_class"]["syscall"]["overhead_ns"]
        after = changed[deployment]["by_class"]["syscall"]["overhead_ns"]
        assert after == pytest.approx(2 * 1000.0)
        assert after > before


def test_latency_sensitivity_table(capsys, trace_dir):
    assert main(["latency", str(trace_dir), "--sensitivity"]) == 0
    out = capsys.readouterr().out
    assert "Sensitivity" in out
    assert "paracell.shadow_share" in out
    assert "runv.ept_violation (nested)" in out
    assert "(defaults)" in out
    summary = next(line for line in out.splitlines() if "a ranking." in line)
    assert summary in (
        f"None of the {NR_SETTINGS} settings changes a ranking.",
        *(
            f"{n} of {NR_SETTINGS} settings change a ranking."
            for n in range(1, NR_SETTINGS + 1)
        ),
    )


def test_latency_sensitivity_json(capsys, trace_dir):
    document = run_json(capsys, ["latency", str(trace_dir), "--json", "--sensitivity"])
    sens = document["traces"][0]["sensitivity"]
    estimates = [
        p
        for p in COSTS
        if p.is_estimate
        and p.name.split(".")[0] in ("host", "runv", "pvm", "paracell", "io", "guest")
    ]
    assert len(sens["variations"]) == 2 * len(estimates) == NR_SETTINGS
    first = sens["variations"][0]
    assert first["bound"] == "low"
    assert set(first["ranking"]) == {"bare-metal", "nested"}
    assert set(first["reductions"]) == {"paracell_vs_pvm", "paracell_vs_runv"}
    assert sens["default"]["ranking"]["nested"][0] == "runc"


def test_latency_missing_trace_exits_2(capsys, tmp_path):
    assert main(["latency", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "trace not found" in err[0]


def test_latency_rejects_unknown_runtime(capsys, trace_dir):
    with pytest.raises(SystemExit) as exit_info:
        main(["latency", str(trace_dir), "--runtime", "gvisor"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'gvisor'" in capsys.readouterr().err
