"""Cost profiles: values the models cannot use are rejected when loading."""

from __future__ import annotations

import pytest

from paracell.costs import load_costs
from paracell.errors import ProfileError

BAD_PROFILES = [
    ('"cpu.clock_ghz" = "0 GHz"', "clock frequency and must be positive"),
    ('"paracell.gate_entry_cycles" = { value = nan, unit = "cycles" }', "not finite"),
    ('"paracell.gate_entry_cycles" = { value = inf, unit = "cycles" }', "not finite"),
    ('"guest.idle_wake_ipi_share" = 5', "must lie in [0, 1]"),
    ('"memory.pager.reserve" = "2.5 pages"', "whole number of pages"),
    ('"memory.damon.max_nr_regions" = 0', "below its minimum 1"),
    ('"memory.llfree.tree_frames" = 0', "below its minimum 1"),
    ('"memory.guest_ram" = "1 KiB"', "below its minimum"),
    ('[params.nested]\n"cpu.clock_ghz" = "2 GHz"', "not [params.nested]"),
    ('[params.cloud]\n"pvm.hypercall" = "1 us"', "unknown deployment [params.cloud]"),
]


@pytest.mark.parametrize(("body", "message"), BAD_PROFILES)
def test_unusable_value_rejected(tmp_path, body, message):
    profile = tmp_path / "p.toml"
    header = "" if body.startswith("[") else "[params]\n"
    profile.write_text(header + body + "\n")
    with pytest.raises(ProfileError) as info:
        load_costs(profile)
    assert message in str(info.value)
    assert str(profile) in str(info.value)


def test_rate_in_bytes_per_second(tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text('[params]\n"memory.balloon.rate" = "1048576 B/s"\n')
    assert load_costs(profile).get("memory.balloon.rate") == 1048576.0


def test_binary_profile_rejected(tmp_path):
    # A real ELF file passed by mistake: its header is not UTF-8.
    profile = tmp_path / "ls.toml"
    profile.write_bytes(open("/bin/ls", "rb").read(4096))
    with pytest.raises(ProfileError, match=r"ls\.toml: not UTF-8 text"):
        load_costs(profile)
