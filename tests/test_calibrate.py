"""`paracell calibrate`: measurements on this host and the cost profile they make."""

from __future__ import annotations

import json
import tomllib

import pytest

from paracell.cli import main
from paracell.costs import default_costs, load_costs, write_profile
from paracell.errors import LiveError
from paracell.live import calibrate, open_region_count

MIB = 1 << 20
# A cap of 192 MiB gives a large batch of 128 MiB, enough to show the
# per-page cost of one big call and quick enough for a test.
CAP = 192 * MIB


@pytest.fixture(scope="module")
def result():
    return calibrate(repeats=3, max_rss_bytes=CAP)


def test_every_measurement_present(result):
    keys = set(result.by_key())
    expected = {
        "syscall_getppid",
        "first_touch_backed",
        "first_touch_fresh",
        "second_touch",
        "populate_write_1",
        "populate_write_16",
        "populate_write_512",
        "populate_write_large",
        "dontneed_1",
        "dontneed_16",
        "dontneed_512",
        "dontneed_large",
    }
    assert expected <= keys
    for m in result.measurements:
        assert len(m.values) == 3, m.key
        assert m.median > 0, m.key
        assert m.spread["min"] <= m.median <= m.spread["max"], m.key
    assert open_region_count() == 0


def test_large_batch_sized_from_cap(result):
    large = result.by_key()["populate_write_large"]
    assert large.extra["batch_pages"] == (CAP - 64 * MIB) // 4096
    assert any("to stay under --max-rss" in note for note in result.notes)


def test_orderings_hold(result):
    m = {k: v.median for k, v in result.by_key().items()}
    # A store to a resident page is far cheaper than any fault.
    assert m["second_touch"] * 10 < m["first_touch_backed"]
    # One call per 512 pages spreads the system call over them.
    assert m["populate_write_512"] < m["populate_write_1"]
    assert m["dontneed_512"] < m["dontneed_1"]


def test_mapped_parameters_exist(result):
    table = default_costs()
    entries = result.profile_entries()
    names = {e["name"] for e in entries}
    assert {
        "memory.first_touch_bound",
        "memory.populate_write_per_page",
        "memory.dontneed_per_page",
    } <= names
    for entry in entries:
        assert entry["name"] in table
        assert entry["source"] == "measured"
        assert result.kernel_release in entry["note"]
    unmapped = result.to_dict()["unmapped"]
    assert "syscall_getppid" in unmapped
    assert "second_touch" in unmapped


def test_profile_round_trip(result, tmp_path):
    path = tmp_path / "host.toml"
    write_profile(path, result.meta(), result.profile_entries())
    document = tomllib.loads(path.read_text())
    assert document["meta"]["kernel_release"] == result.kernel_release
    costs = load_costs(path)
    backed = result.by_key()["first_touch_backed"].median
    assert costs.get("memory.first_touch_bound") == pytest.approx(backed, rel=1e-3)
    assert costs.param("memory.first_touch_bound").source == "measured"
    large = result.by_key()["dontneed_large"].median
    assert costs.get("memory.dontneed_per_page") == pytest.approx(large, rel=1e-3)


def test_here_comparison(result):
    doc = result.to_dict()["measurements"]
    assert doc["syscall_getppid"]["here"] == [65.0, 70.0]
    assert doc["first_touch_backed"]["here"] == [1900.0, 1900.0]
    assert doc["first_touch_backed"]["relative_to_here"] is not None


def test_too_small_cap_rejected():
    with pytest.raises(LiveError, match="too small"):
        calibrate(repeats=3, max_rss_bytes=32 * MIB)


def test_too_few_repeats_rejected():
    with pytest.raises(LiveError, match="at least 3"):
        calibrate(repeats=1)


def test_cli_writes_profile_and_json(tmp_path, capsys):
    path = tmp_path / "calibrated.toml"
    status = main(
        [
            "calibrate",
            "-o",
            str(path),
            "--json",
            "--repeats",
            "3",
            "--max-rss",
            "192MiB",
        ]
    )
    assert status == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["profile"] == str(path)
    assert "populate_write_large" in doc["measurements"]
    assert load_costs(path).param("memory.populate_write_per_page").source == "measured"


def test_cli_bad_output_dir(tmp_path, capsys):
    status = main(["calibrate", "-o", str(tmp_path / "missing" / "x.toml")])
    assert status == 2
    assert "does not exist" in capsys.readouterr().err
