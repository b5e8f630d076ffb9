"""Cost and policy parameters of the memory models.

Times are in ns, sizes in bytes or 4 KiB pages. Names start with ``memory.``;
the part after it names the policy or allocator the value belongs to. A value
of 0 for ``memory.buddy.pcp_batch``, ``memory.buddy.pcp_high`` and
``memory.vcpus`` means "derive it", as the description of each says.
"""

from __future__ import annotations

from paracell.costs.table import Param

_US = 1_000.0
_MS = 1_000_000.0
_S = 1_000_000_000.0
_MIB = float(1 << 20)
_GIB = float(1 << 30)

_COSTS: list[Param] = [
    Param(
        "memory.first_touch_bound",
        1.9 * _US,
        "ns",
        "HERE",
        "first write to an anonymous page inside a PVM guest when the host "
        "already backs the guest-physical page (guest fault only)",
        note="paid by every policy alike; the model charges only the difference "
        "to memory.first_touch_unbound as overhead",
    ),
    Param(
        "memory.first_touch_unbound",
        9.4 * _US,
        "ns",
        "HERE",
        "first write to an anonymous page inside a PVM guest when the host does "
        "not back the guest-physical page yet (guest fault plus secondary fault)",
    ),
    Param(
        "memory.populate_write_per_page",
        0.84 * _US,
        "ns",
        "HERE",
        "host cost per 4 KiB page of a batched bind with MADV_POPULATE_WRITE "
        "(512 MiB in one call)",
    ),
    Param(
        "memory.dontneed_per_page",
        0.09 * _US,
        "ns",
        "HERE",
        "host cost per 4 KiB page of a batched unbind with MADV_DONTNEED "
        "(512 MiB in one call)",
    ),
    Param(
        "memory.hypercall",
        0.54 * _US,
        "ns",
        "PVM23",
        "round trip of one guest-to-host call that carries a bind or unbind "
        "batch (PVM hypercall, bare metal; 0.48 us nested)",
    ),
    Param(
        "memory.report_notify",
        3.79 * _US,
        "ns",
        "PVM23",
        "virtqueue notification of one free-page report or balloon request "
        "(port I/O exit of a hardware VM, bare metal)",
    ),
    Param(
        "memory.thp_fault",
        0.44 * _MS,
        "ns",
        "estimate",
        "secondary fault that makes the host back a whole 2 MiB frame",
        low=0.2 * _MS,
        high=1.0 * _MS,
        reasoning="zeroing 2 MiB dominates: 512 pages at the 0.84 us per page of "
        "MADV_POPULATE_WRITE (HERE) is 0.43 ms, plus one 7.5 us fault; HA25 "
        "installs a 2 MiB frame in about 0.5 ms",
    ),
    Param(
        "memory.hyperalloc.install",
        0.5 * _MS,
        "ns",
        "HA25",
        "HyperAlloc install of one 2 MiB frame, hypercall included "
        "(3.93 GiB/s in HA25's data)",
    ),
    Param(
        "memory.hyperalloc.reclaim",
        5.7 * _US,
        "ns",
        "HA25",
        "HyperAlloc host-side reclaim of one touched 2 MiB frame (344.8 GiB/s)",
    ),
    Param(
        "memory.balloon.per_page",
        4.0 * _US,
        "ns",
        "HA25",
        "virtio-balloon inflation cost per 4 KiB page, guest and host "
        "(0.95 GiB/s in HA25's data)",
    ),
]

_GUEST: list[Param] = [
    Param(
        "memory.guest_ram",
        4 * _GIB,
        "bytes",
        "estimate",
        "RAM of the modelled guest for the buddy and LLFree placements",
        low=1 * _GIB,
        high=64 * _GIB,
        reasoning="a secure container gets a small VM; 4 GiB holds the agent "
        "workloads' peaks of a few hundred MiB with room to spare, and HA25 "
        "used 16 GiB guests for builds",
        minimum=4 * _MIB,
    ),
    Param(
        "memory.base_footprint",
        0.0,
        "bytes",
        "estimate",
        "memory the guest had allocated and bound before the trace began; "
        "counted as allocated and bound for every policy",
        low=0.0,
        high=512 * _MIB,
        reasoning="the trace cannot show pages allocated before it started; 0 "
        "reports only what the traced workload adds, a booted guest kernel "
        "would add about 100-200 MiB to every policy alike",
    ),
    Param(
        "memory.vcpus",
        0.0,
        "count",
        "estimate",
        "guest vCPUs that trace CPUs are folded onto (cpu mod vcpus); 0 means "
        "the trace's CPU count",
        low=1.0,
        high=64.0,
        reasoning="one vCPU per CPU the workload ran on keeps the per-CPU "
        "allocator state of the capture",
        integer=True,
    ),
    Param(
        "memory.buddy.pcp_batch",
        0.0,
        "pages",
        "LNX",
        "pages moved per per-CPU list refill or drain; 0 derives it from the "
        "guest size as zone_batchsize() in mm/page_alloc.c does (63 for 4 GiB)",
    ),
    Param(
        "memory.buddy.pcp_high",
        0.0,
        "pages",
        "LNX",
        "per-CPU list size that triggers a drain; 0 derives it as "
        "zone_highsize() does: the zone's low watermark split over the vCPUs, "
        "at least 4 batches",
    ),
    Param(
        "memory.llfree.tree_frames",
        8.0,
        "count",
        "LLF23",
        "2 MiB frames per LLFree tree, the unit a CPU reserves "
        "(TREE_HUGE in LLFree's Rust code)",
        minimum=1,
        integer=True,
    ),
]

_FPR: list[Param] = [
    Param(
        "memory.fpr.delay",
        2.0 * _S,
        "ns",
        "LNX",
        "delay from a free of a large block to the next reporting pass "
        "(PAGE_REPORTING_DELAY)",
    ),
    Param(
        "memory.fpr.capacity",
        32.0,
        "count",
        "LNX",
        "free blocks per report (PAGE_REPORTING_CAPACITY)",
        minimum=1,
        integer=True,
    ),
    Param(
        "memory.fpr.order",
        9.0,
        "count",
        "LNX",
        "smallest buddy order reported (pageblock order, 2 MiB on x86-64)",
        integer=True,
    ),
    Param(
        "memory.fpr.budget_divisor",
        16.0,
        "count",
        "LNX",
        "reports per pass and order are limited to nr_free / (capacity x this), "
        "rounded up",
        minimum=1,
        integer=True,
    ),
]

_BALLOON: list[Param] = [
    Param(
        "memory.balloon.period",
        1.0 * _S,
        "ns",
        "estimate",
        "interval at which the balloon controller recomputes its target",
        low=0.1 * _S,
        high=10.0 * _S,
        reasoning="host agents that drive virtio-balloon from guest statistics "
        "poll about once a second; faster polling only helps while inflation "
        "keeps up at its rate limit",
    ),
    Param(
        "memory.balloon.headroom",
        128 * _MIB,
        "bytes",
        "estimate",
        "free memory the controller leaves the guest: target = guest RAM - "
        "(allocated + headroom)",
        low=32 * _MIB,
        high=1 * _GIB,
        reasoning="enough to absorb a second of ordinary growth without an "
        "out-of-memory deflation; smaller saves memory and costs deflations",
    ),
    Param(
        "memory.balloon.rate",
        0.95 * _GIB,
        "bytes/s",
        "HA25",
        "inflation rate limit of virtio-balloon",
    ),
    Param(
        "memory.balloon.chunk",
        256.0,
        "pages",
        "LNX",
        "pages per balloon request and per deflation on out-of-memory "
        "(VIRTIO_BALLOON_ARRAY_PFNS_MAX, VIRTIO_BALLOON_OOM_NR_PAGES in "
        "drivers/virtio/virtio_balloon.c)",
        minimum=1,
    ),
]

_DAMON: list[Param] = [
    Param(
        "memory.damon.min_age",
        120.0 * _S,
        "ns",
        "LNX",
        "time without access after which DAMON_RECLAIM pages a region out "
        "(min_age in mm/damon/reclaim.c)",
    ),
    Param(
        "memory.damon.aggr_interval",
        100.0 * _MS,
        "ns",
        "LNX",
        "DAMON aggregation interval, the step at which regions are judged",
    ),
    Param(
        "memory.damon.sample_interval",
        5.0 * _MS,
        "ns",
        "LNX",
        "DAMON sampling interval; recorded for completeness, the model judges "
        "accesses exactly at each aggregation step",
    ),
    Param(
        "memory.damon.quota",
        128 * _MIB,
        "bytes",
        "LNX",
        "bytes DAMON_RECLAIM may page out per quota interval",
    ),
    Param(
        "memory.damon.quota_interval",
        1.0 * _S,
        "ns",
        "LNX",
        "quota reset interval of DAMON_RECLAIM",
    ),
    Param(
        "memory.damon.max_nr_regions",
        1000.0,
        "count",
        "LNX",
        "upper bound of DAMON monitoring regions; the model uses fixed regions "
        "of guest RAM / this",
        minimum=1,
        integer=True,
    ),
]

_HYPERALLOC: list[Param] = [
    Param(
        "memory.hyperalloc.period",
        5.0 * _S,
        "ns",
        "HA25",
        "period of the host's automatic reclaim of free 2 MiB frames "
        "(LL_RETRY_INTERVAL in HyperAlloc's QEMU device)",
    ),
]

_PAGER: list[Param] = [
    Param(
        "memory.pager.use_refill",
        1.0,
        "count",
        "estimate",
        "1: bind each per-CPU list refill in one call as it happens; 0: bind "
        "only at allocations",
        low=0.0,
        high=1.0,
        reasoning="the refill is the batch point Linux already has "
        "(mm_page_alloc_zone_locked with percpu_refill=1); it binds up to one "
        "pcp batch ahead of use per vCPU",
        integer=True,
    ),
    Param(
        "memory.pager.bind_batch",
        32.0,
        "pages",
        "estimate",
        "pages bound per call at an allocation outside a refill: the "
        "allocation plus the pages the allocator will hand out next",
        low=1.0,
        high=512.0,
        reasoning="half a pcp batch (63 on a 4 GiB guest): the hypercall "
        "(0.54 us) becomes small against 32 x 0.84 us of populate, while "
        "ahead-bound pages stay under 128 KiB per vCPU",
    ),
    Param(
        "memory.pager.unbind_batch",
        64.0,
        "pages",
        "estimate",
        "freed pages collected beyond the reserve before one unbind call",
        low=1.0,
        high=4096.0,
        reasoning="at 0.09 us per page of MADV_DONTNEED, 64 pages make the "
        "0.54 us call about 10 % of the work, and 256 KiB of delay-bounded "
        "waste is small against footprints of 100 MiB and more",
    ),
    Param(
        "memory.pager.unbind_delay",
        100.0 * _MS,
        "ns",
        "estimate",
        "longest time a freed page stays bound before it is unbound, reserve included",
        low=0.0,
        high=2.0 * _S,
        reasoning="agent bursts free and reallocate within tens of ms; 100 ms "
        "catches that churn and is 20x shorter than free page reporting's "
        "2 s delay",
    ),
    Param(
        "memory.pager.reserve",
        256.0,
        "pages",
        "estimate",
        "most recently freed pages kept bound when a batch is unbound, to absorb reuse",
        low=0.0,
        high=4096.0,
        reasoning="about one pcp batch (63 pages) per vCPU of a 4-vCPU guest; "
        "pcp lists hand out the most recently freed pages first, so these are "
        "the pages most likely to come back",
    ),
]

MEMORY_PARAMS: list[Param] = [
    *_COSTS,
    *_GUEST,
    *_FPR,
    *_BALLOON,
    *_DAMON,
    *_HYPERALLOC,
    *_PAGER,
]
