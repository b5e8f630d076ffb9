"""`paracell memory` end to end: tables, JSON, plots, the Pager sweep and bad input."""

from __future__ import annotations

import json

from memory_support import S, write

from paracell.cli import main
from paracell.trace.builder import TraceBuilder


def small_trace(tmp_path):
    b = TraceBuilder(name="cli-small", cpu_count=2)
    for i in range(200):
        b.alloc(S + i * 1000, pfn=0x8000 + i, cpu=i % 2)
    for i in range(150):
        b.free(2 * S + i * 1000, pfn=0x8000 + i, cpu=i % 2)
    b.alloc(3 * S, pfn=0x20000, order=9)
    return write(b, tmp_path, 6)


def test_json_output_has_every_policy(tmp_path, capsys):
    trace = small_trace(tmp_path)
    assert main(["memory", str(trace.path), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["modelled"] is True
    entry = document["traces"]["cli-small"]
    assert set(entry) >= {
        "static",
        "thp",
        "fpr",
        "balloon",
        "damon",
        "hyperalloc",
        "pager",
        "savings",
        "trace",
    }
    assert entry["pager"]["placement"] == "buddy"
    assert entry["pager"]["secondary_faults"] == 0


def test_table_names_placement_and_says_modelled(tmp_path, capsys):
    trace = small_trace(tmp_path)
    assert (
        main(["memory", str(trace.path), "--policy", "pager", "--policy", "hyperalloc"])
        == 0
    )
    out = capsys.readouterr().out
    assert "modelled, not measured" in out
    assert "llfree" in out
    assert "static" not in out.split("savings")[0]


def test_forced_placement_and_plot(tmp_path, capsys):
    trace = small_trace(tmp_path)
    plot = tmp_path / "footprint.png"
    assert (
        main(
            [
                "memory",
                str(trace.path),
                "--placement",
                "trace",
                "--plot",
                str(plot),
                "--json",
            ]
        )
        == 0
    )
    entry = json.loads(capsys.readouterr().out)["traces"]["cli-small"]
    assert {entry[p]["placement"] for p in ("static", "hyperalloc", "pager")} == {
        "trace"
    }
    assert plot.stat().st_size > 10_000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pager_sweep_table_and_plot(tmp_path, capsys):
    trace = small_trace(tmp_path)
    plot = tmp_path / "sweep.png"
    assert (
        main(
            ["memory", str(trace.path), "--policy", "pager", "--sweep-plot", str(plot)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Pager sweep" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_guest_ram_option(tmp_path, capsys):
    trace = small_trace(tmp_path)
    assert (
        main(
            [
                "memory",
                str(trace.path),
                "--guest-ram",
                "64MiB",
                "--vcpus",
                "1",
                "--policy",
                "static",
                "--json",
            ]
        )
        == 0
    )
    entry = json.loads(capsys.readouterr().out)["traces"]["cli-small"]
    assert entry["static"]["guest_bytes"] == 64 << 20
    assert entry["static"]["vcpus"] == 1


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    trace = small_trace(tmp_path)
    assert main(["memory", str(trace.path), "--guest-ram", "lots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("paracell: error: --guest-ram 'lots' is not a size")
    assert "Traceback" not in err
    b = TraceBuilder(name="cli-big", cpu_count=1)
    for i in range(3):
        b.alloc(S + i, pfn=i * 1024, order=10)
    big = write(b, tmp_path, 2)
    assert (
        main(["memory", str(big.path), "--guest-ram", "8MiB", "--policy", "static"])
        == 2
    )
    err = capsys.readouterr().err
    assert "cannot place" in err
    assert "--guest-ram" in err
    assert main(["memory", str(tmp_path / "missing")]) == 2
    assert "trace not found" in capsys.readouterr().err


def test_same_names_kept_apart(tmp_path, capsys):
    trace = small_trace(tmp_path)
    plot = tmp_path / "fp.png"
    argv = ["memory", str(trace.path), str(trace.path), "--json", "--plot", str(plot)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert sorted(document["traces"]) == ["cli-small", "cli-small-2"]
    assert (tmp_path / "fp-cli-small.png").stat().st_size > 0
    assert (tmp_path / "fp-cli-small-2.png").stat().st_size > 0
    assert f"wrote {tmp_path / 'fp-cli-small-2.png'}" in captured.err


def test_bad_plot_path_rejected_before_work(tmp_path, capsys):
    trace = small_trace(tmp_path)
    for target, message in [
        (tmp_path / "fp.txt", "unsupported plot format '.txt'"),
        (tmp_path / "missing" / "fp.png", "does not exist"),
    ]:
        assert main(["memory", str(trace.path), "--plot", str(target)]) == 2
        err = capsys.readouterr().err
        assert message in err
        assert "Traceback" not in err


def test_damon_on_short_trace_is_explained(tmp_path, capsys):
    trace = small_trace(tmp_path)
    assert main(["memory", str(trace.path), "--json", "--policy", "damon"]) == 0
    notes = json.loads(capsys.readouterr().out)["traces"]["cli-small"]["notes"]
    assert any("damon reclaims nothing" in note for note in notes)
