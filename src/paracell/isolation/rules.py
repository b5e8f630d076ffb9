"""The isolation rules of the model, each of which can be switched off.

A ``Machine`` takes a frozen set of enabled rule names. Every rule here is
the stated defence against at least one attack in ``paracell.isolation.attacks``,
and the test suite shows, rule by rule, that switching it off lets that
attack through.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    name: str
    #: The rule as a sentence: what the system guarantees.
    text: str
    #: Enforcer: the CPU, the gate code, the container kernel or the host.
    enforcer: str


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in [
        Rule(
            "kernel-pkey",
            "Every container-kernel page (data, stacks, per-CPU data, text, gates) "
            "carries the kernel protection key, which every user PKRU access-disables.",
            "container kernel (page tables) and CPU (PKU check)",
        ),
        Rule(
            "gate-entry-check",
            "After its WRPKRU the entry gate reads PKRU back and aborts unless it "
            "equals the kernel value, so kernel code never runs with a PKRU the "
            "caller chose.",
            "gate code",
        ),
        Rule(
            "exit-pkru-check",
            "Every return to user mode (the exit gate after its WRPKRU, and the "
            "host's event return) checks that the installed PKRU access-disables "
            "the kernel key, and kills the thread otherwise.",
            "gate code and host",
        ),
        Rule(
            "xrstor-gate-check",
            "The kernel's only XRSTOR sits in a gate that reads PKRU back, aborts "
            "unless it equals the kernel value, and continues only into fixed "
            "kernel code.",
            "gate code",
        ),
        Rule(
            "loader-scan",
            "The loader rejects executable user bytes that contain WRPKRU.",
            "container kernel (loader)",
        ),
        Rule(
            "scan-every-offset",
            "The scan looks at every byte offset, not only at instruction "
            "boundaries, because a jump may start decoding anywhere.",
            "container kernel (loader)",
        ),
        Rule(
            "scan-across-pages",
            "The scan reads across page boundaries into neighbouring executable "
            "pages, so a sequence split over two pages is found.",
            "container kernel (loader)",
        ),
        Rule(
            "scan-xrstor",
            "The scan also rejects XRSTOR and XRSTORS with a memory operand, "
            "because EDX:EAX is unknown statically and any XRSTOR may load PKRU.",
            "container kernel (loader)",
        ),
        Rule(
            "wx-exclusive",
            "No user mapping is writable and executable at the same time.",
            "container kernel (mmap, mprotect)",
        ),
        Rule(
            "exec-rescan",
            "A page that becomes executable is rescanned, so bytes written while it "
            "was writable cannot hide a PKRU writer.",
            "container kernel (mprotect, pkey_mprotect)",
        ),
        Rule(
            "kernel-range-check",
            "mmap, mprotect, pkey_mprotect and munmap reject ranges outside the user "
            "range, so no user request changes a kernel page's mapping or key.",
            "container kernel",
        ),
        Rule(
            "access-ok",
            "The kernel copies to and from user memory only after checking that the "
            "whole buffer lies in the user range.",
            "container kernel",
        ),
        Rule(
            "pkey-ownership",
            "pkey_alloc never returns the kernel key, and pkey_set, pkey_mprotect "
            "and pkey_free accept only keys the process allocated.",
            "container kernel",
        ),
        Rule(
            "sigreturn-pkru",
            "rt_sigreturn never takes PKRU from the user's signal frame; the "
            "thread keeps the user PKRU the kernel recorded.",
            "container kernel",
        ),
        Rule(
            "return-via-checked-exit",
            "Every kernel-to-user transition (syscall return, signal delivery, "
            "sigreturn, resuming a thread) installs the user PKRU through a checked "
            "exit path, never by a plain jump.",
            "container kernel",
        ),
        Rule(
            "pkru-context-switch",
            "PKRU is per-thread state: a context switch installs the incoming "
            "thread's user PKRU where the exit paths read it.",
            "container kernel (scheduler)",
        ),
        Rule(
            "gate-fixed-percpu",
            "The gates find per-CPU data at a fixed kernel address, never through a "
            "segment base the user can set (arch_prctl(ARCH_SET_GS), WRGSBASE).",
            "gate code",
        ),
        Rule(
            "host-hypercall-pkru",
            "The host serves a hypercall only when PKRU is the kernel value; from "
            "user rights it is an invalid instruction.",
            "host",
        ),
        Rule(
            "pager-ring-kernel-key",
            "The Pager's request ring carries the kernel key, so only the container "
            "kernel writes binding requests; the completion page is read-only in "
            "the container and only the host writes it.",
            "container kernel and host (page tables)",
        ),
    ]
}

ALL_RULES: frozenset[str] = frozenset(RULES)


def validate_rules(names: frozenset[str] | set[str]) -> frozenset[str]:
    """Return ``names`` as a frozenset; raise ``ValueError`` on an unknown name."""
    unknown = set(names) - ALL_RULES
    if unknown:
        raise ValueError(f"unknown isolation rule(s): {', '.join(sorted(unknown))}")
    return frozenset(names)
