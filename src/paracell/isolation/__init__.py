"""XGate isolation: a model of ParaCell's single address space, and an ELF scanner.

The model (``Machine``) has pages with permissions and protection keys, a
vCPU with the real PKRU layout, gate code at fixed addresses executed byte by
byte, a container kernel and a host. ``run_suite`` runs the named attacks
against it; every isolation rule in ``RULES`` can be switched off to show
which attack it stops. No PKU hardware is needed: this is a model.

``paracell.isolation.scanner`` scans real ELF files for the byte sequences
(WRPKRU, XRSTOR, XRSTORS) that the model's loader rejects.
"""

from __future__ import annotations

from paracell.isolation.attacks import (
    ATTACKS,
    Attack,
    AttackResult,
    run_attack,
    run_suite,
)
from paracell.isolation.machine import VIOLATION_KINDS, Machine, Violation
from paracell.isolation.patterns import PatternHit, WriterKind, find_pkru_writers
from paracell.isolation.rules import ALL_RULES, RULES, Rule
from paracell.isolation.userland import User

__all__ = [
    "ALL_RULES",
    "ATTACKS",
    "Attack",
    "AttackResult",
    "Machine",
    "PatternHit",
    "RULES",
    "Rule",
    "User",
    "VIOLATION_KINDS",
    "Violation",
    "WriterKind",
    "find_pkru_writers",
    "run_attack",
    "run_suite",
]
