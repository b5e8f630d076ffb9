"""The attack suite: every attack is stopped, and each rule is shown to matter."""

from __future__ import annotations

import json

import pytest

from paracell.cli import main
from paracell.isolation import ALL_RULES, ATTACKS, RULES, run_attack, run_suite
from paracell.isolation.attacks import Attack

ATTACK_IDS = [attack.name for attack in ATTACKS]


def test_suite_stops_every_attack() -> None:
    results = run_suite()
    assert len(results) == len(ATTACKS)
    through = [
        (r.name, [str(v) for v in r.violations]) for r in results if not r.stopped
    ]
    assert through == []


def test_every_rule_stops_some_attack() -> None:
    named = {attack.rule for attack in ATTACKS}
    assert named == set(RULES)


def test_required_attacks_are_present() -> None:
    names = set(ATTACK_IDS)
    required = {
        "kernel-page-read",
        "kernel-page-write",
        "entry-gate-wrpkru-jump",
        "exit-gate-wrpkru-jump",
        "wrpkru-unaligned",
        "wrpkru-across-instructions",
        "wrpkru-across-pages",
        "xrstor-in-user-code",
        "xrstor-gate-crafted-state",
        "mprotect-kernel-page",
        "pkey-mprotect-kernel-page",
        "jit-rwx-wrpkru",
        "jit-mprotect-wrpkru",
        "forged-sigframe",
        "other-thread-pkru",
        "signal-handler-kernel-rights",
        "pager-ring-forge",
    }
    assert required <= names


@pytest.mark.parametrize("attack", ATTACKS, ids=ATTACK_IDS)
def test_attack_stopped_with_all_rules(attack: Attack) -> None:
    result = run_attack(attack)
    assert result.stopped, [str(v) for v in result.violations]


@pytest.mark.parametrize("attack", ATTACKS, ids=ATTACK_IDS)
def test_attack_gets_through_without_its_rule(attack: Attack) -> None:
    rules = ALL_RULES - {attack.rule} - set(attack.backstops)
    result = run_attack(attack, rules)
    assert not result.stopped
    assert result.violations


BACKSTOPPED = [attack for attack in ATTACKS if attack.backstops]


@pytest.mark.parametrize("attack", BACKSTOPPED, ids=[a.name for a in BACKSTOPPED])
def test_rule_alone_stops_backstopped_attack(attack: Attack) -> None:
    result = run_attack(attack, ALL_RULES - set(attack.backstops))
    assert result.stopped, [str(v) for v in result.violations]
    assert attack.rule in result.enforced


@pytest.mark.parametrize("attack", BACKSTOPPED, ids=[a.name for a in BACKSTOPPED])
def test_backstop_alone_stops_backstopped_attack(attack: Attack) -> None:
    result = run_attack(attack, ALL_RULES - {attack.rule})
    assert result.stopped, [str(v) for v in result.violations]
    assert set(attack.backstops) <= set(result.enforced)


def test_enforcement_names_the_rule() -> None:
    enforced_rules = {
        "kernel-page-read": "kernel-pkey",
        "entry-gate-wrpkru-jump": "gate-entry-check",
        "exit-gate-wrpkru-jump": "exit-pkru-check",
        "xrstor-gate-crafted-state": "xrstor-gate-check",
        "wrpkru-unaligned": "loader-scan",
        "jit-rwx-wrpkru": "wx-exclusive",
        "kernel-pointer-argument": "access-ok",
        "user-hypercall": "host-hypercall-pkru",
        "pager-ring-forge": "pager-ring-kernel-key",
    }
    by_name = {attack.name: attack for attack in ATTACKS}
    for name, rule in enforced_rules.items():
        assert rule in run_attack(by_name[name]).enforced, name


def test_isolation_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["isolation", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["model"] is True
    assert document["attacks_tried"] == len(ATTACKS)
    assert document["attacks_stopped"] == len(ATTACKS)
    for entry in document["attacks"]:
        assert entry["stopped"] is True
        assert entry["rule"] in RULES
        assert entry["name"] in ATTACK_IDS


def test_isolation_cli_text_says_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["isolation"]) == 0
    out = capsys.readouterr().out
    assert "This is a model" in out
    assert f"{len(ATTACKS)} attacks tried, {len(ATTACKS)} stopped" in out


def test_isolation_cli_fails_when_rule_disabled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["isolation", "--json", "--disable", "exit-pkru-check"]) == 1
    document = json.loads(capsys.readouterr().out)
    through = {a["name"] for a in document["attacks"] if not a["stopped"]}
    assert "exit-gate-wrpkru-jump" in through
    assert document["attacks_stopped"] == document["attacks_tried"] - len(through)


def test_isolation_cli_rejects_unknown_rule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["isolation", "--disable", "no-such-rule"]) == 2
    assert "unknown rule no-such-rule" in capsys.readouterr().err
