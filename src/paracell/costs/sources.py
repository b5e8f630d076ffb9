"""Source keys used by cost parameters, with the full reference of each."""

from __future__ import annotations

SOURCES: dict[str, str] = {
    "PVM23": "Huang et al., PVM: Efficient Shadow Paging for Deploying Secure "
    "Containers "
    "in Cloud-native Environment, SOSP 2023, doi 10.1145/3600006.3613158 "
    "(2 x Xeon Platinum 8269CY 2.5 GHz, Linux 4.19, Kata + RunD)",
    "HA25": "Wrenger et al., HyperAlloc, EuroSys 2025, with its public benchmark data "
    "and QEMU device code (Xeon Gold 6252, Linux 6.1, 12-vCPU guest)",
    "LLF23": "Wrenger et al., LLFree, USENIX ATC 2023",
    "LNX": "Linux sources: mm/page_reporting.c, include/linux/page_reporting.h, "
    "mm/page_alloc.c, arch/x86/mm/tlb.c, mm/damon/reclaim.c; "
    "QEMU hw/virtio/virtio-balloon.c",
    "UB20": "Gu et al., UnderBridge, USENIX ATC 2020 (MPK inside a kernel)",
    "ISO20": "Li et al., Iso-UniK, Cybersecurity 2020 (MPK-based system calls)",
    "PC26": "The ParaCell paper, arXiv 2605.20906 (May 2026); headline results only",
    "HERE": "measured on this project's machines (PVM guests, 2 vCPUs) with a small C "
    "loop, December 2026",
    "measured": "measured on the current host by `paracell calibrate`",
    "estimate": "reasoned estimate, not a measurement; see the parameter's reasoning",
}


def describe_source(key: str) -> str:
    """Return the full reference of a source key, or the key itself if unknown."""
    return SOURCES.get(key, key)
