"""The operation stream a memory policy produces, and its op codes.

A policy replaying a trace on a placement emits an ordered list of operations
on modelled guest page frames. The model computes every metric from this list,
and the live replay executes it on a real memory region. Each operation is a
row ``(ts_ns, op, pfn, nr_pages, arg)``: the pages are ``[pfn, pfn + nr_pages)``
of the modelled guest; rows are sorted by ``ts_ns`` (ties keep emission order).

==============  =======================================================
op              meaning
==============  =======================================================
``BASE``        pages allocated and bound before the trace began; no cost
``TOUCH``       the guest allocates these pages and writes them; every
                page not bound takes a secondary fault that binds it (4 KiB)
``FREE``        the guest frees these pages; nothing happens on the host
``BIND``        the host binds the run ahead of use in one call
                (``MADV_POPULATE_WRITE``)
``UNBIND``      the host unbinds the run in one call (``MADV_DONTNEED``)
``FAULT_2M``    a secondary fault that binds the whole 2 MiB frame at ``pfn``
                (host transparent huge pages)
``INSTALL_2M``  the guest asks the host to install these whole 2 MiB frames
                (HyperAlloc); one hypercall per frame, then bound
``RECLAIM_2M``  the host unbinds these whole 2 MiB frames (HyperAlloc)
``CALL``        one guest-to-host notification; ``arg`` is a ``CALL_*`` kind and
                ``nr_pages`` the pages it covers; the BIND/UNBIND rows that
                follow at the same ``ts_ns`` carry it out
==============  =======================================================

Runs of ``FAULT_2M``, ``INSTALL_2M`` and ``RECLAIM_2M`` start on a 2 MiB
boundary and cover whole 2 MiB frames.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

BASE = 0
TOUCH = 1
FREE = 2
BIND = 3
UNBIND = 4
FAULT_2M = 5
INSTALL_2M = 6
RECLAIM_2M = 7
CALL = 8

OP_NAMES = (
    "BASE",
    "TOUCH",
    "FREE",
    "BIND",
    "UNBIND",
    "FAULT_2M",
    "INSTALL_2M",
    "RECLAIM_2M",
    "CALL",
)

# Kinds of CALL (the ``arg`` column).
CALL_HYPERCALL = 0  # the Pager's bind or unbind batch
CALL_REPORT = 1  # one free page report (virtqueue request)
CALL_INFLATE = 2  # one balloon inflation request
CALL_DEFLATE = 3  # one balloon deflation request

CALL_NAMES = ("hypercall", "report", "inflate", "deflate")

PAGE_SIZE = 4096
HUGE_ORDER = 9
HUGE_PAGES = 1 << HUGE_ORDER


@dataclass(frozen=True)
class OpStream:
    """The operations of one policy run, one numpy array per column."""

    ts_ns: np.ndarray  # int64
    op: np.ndarray  # uint8, one of the op codes above
    pfn: np.ndarray  # int64, first modelled page frame
    nr_pages: np.ndarray  # int64
    arg: np.ndarray  # int32, CALL kind; 0 for other ops
    nr_guest_pages: int  # size of the modelled guest-physical space

    def __len__(self) -> int:
        return int(self.ts_ns.size)

    def __iter__(self) -> Iterator[tuple[int, str, int, int, int]]:
        """Yield ``(ts_ns, op_name, pfn, nr_pages, arg)`` rows, for inspection."""
        for i in range(len(self)):
            yield (
                int(self.ts_ns[i]),
                OP_NAMES[int(self.op[i])],
                int(self.pfn[i]),
                int(self.nr_pages[i]),
                int(self.arg[i]),
            )

    def counts(self) -> dict[str, int]:
        """Return the number of rows of each op."""
        found = np.bincount(self.op, minlength=len(OP_NAMES))
        return {name: int(found[i]) for i, name in enumerate(OP_NAMES)}

    def to_records(self) -> list[tuple[int, str, int, int, int]]:
        return list(self)
