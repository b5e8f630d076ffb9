"""The latency model's modelled timeline as Chrome trace-event JSON.

The output is the JSON object format of the Trace Event Format: complete
events (``"ph": "X"``) with ``ts`` and ``dur`` in microseconds as floats,
plus metadata events (``"ph": "M"``) naming the process and thread. Perfetto
and chrome://tracing open it.

The timeline is one modelled clock, so every slice goes on one track and the
slices follow each other without gaps: their durations add up to the
modelled total. Timestamps start at 0 at the trace's first event.

Merging: a busy trace has millions of slices (a native stretch between two
events, then the overhead of the event), more than the viewers handle. When
the timeline has more than ``max_events`` slices, it is cut into windows of
``window_ns``. Within a window, the slices of each class are merged into one
slice, laid back to back in class order (native first). Each merged slice
keeps the exact sum of the durations it replaces, so every window starts
and ends where its first and last slice did, and the per-class and total
durations are unchanged. Only the order of slices inside a window is lost.
``max_events`` is an exact bound on the slices written, so it must be at
least the number of event classes in the timeline.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paracell import __version__
from paracell.errors import ParacellError

log = logging.getLogger("paracell.reports")

# An event takes about 115 bytes of JSON, so this default keeps a file under
# about 30 MB, which a browser-based viewer loads in one tab.
DEFAULT_MAX_EVENTS = 250_000
PID = 1
TID = 1


@dataclass
class ChromeSlices:
    """Slices ready to write: times in ns from the trace start, class per slice."""

    start_ns: np.ndarray
    dur_ns: np.ndarray
    class_id: np.ndarray
    cpu: np.ndarray
    tid: np.ndarray
    nr_merged: np.ndarray
    class_names: tuple[str, ...]
    window_ns: int
    nr_input_slices: int
    total_ns: int


def merge_windows(
    start_ns: np.ndarray,
    dur_ns: np.ndarray,
    class_id: np.ndarray,
    window_ns: int,
    origin_ns: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge slices per window and class.

    Return (start_ns, dur_ns, class_id, nr_merged, source), where ``source``
    is the index of one input slice of each output slice (the only one when
    ``nr_merged`` is 1). Slices must be in time order and contiguous. A slice
    belongs to the window in which it starts. Durations are integers, so the
    sums are exact.
    """
    if start_ns.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty.astype(class_id.dtype), empty, empty
    window = (start_ns - origin_ns) // window_ns
    nr_classes = int(class_id.max()) + 1
    key = window * nr_classes + class_id.astype(np.int64)
    # Windows are in time order, so sorting by key groups by window and puts
    # the classes of each window in class order. The sort is stable, but only
    # sums are taken within a group, so the order inside does not matter.
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    first = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    dur = np.add.reduceat(dur_ns[order], first)
    nr_merged = np.diff(np.r_[first, sorted_key.size])
    out_class = (sorted_key[first] % nr_classes).astype(class_id.dtype)
    out_window = sorted_key[first] // nr_classes
    # Each window starts where its first input slice started.
    window_first = np.flatnonzero(np.r_[True, window[1:] != window[:-1]])
    window_start = dict(
        zip(window[window_first].tolist(), start_ns[window_first].tolist(), strict=True)
    )
    group_first = np.flatnonzero(np.r_[True, out_window[1:] != out_window[:-1]])
    starts = np.empty(dur.size, dtype=np.int64)
    offsets = np.cumsum(dur) - dur
    for g, begin in enumerate(group_first):
        end = group_first[g + 1] if g + 1 < group_first.size else dur.size
        base = window_start[int(out_window[begin])]
        starts[begin:end] = base + offsets[begin:end] - offsets[begin]
    return starts, dur.astype(np.int64), out_class, nr_merged, order[first]


def _auto_window_ns(
    start_ns: np.ndarray,
    class_id: np.ndarray,
    origin_ns: int,
    total_ns: int,
    max_events: int,
) -> int:
    # Start from a window that would give about max_events / 2 windows and
    # double it until the merged slices fit.
    window_ns = max(1, math.ceil(2 * total_ns / max_events))
    nr_classes = int(class_id.max()) + 1 if class_id.size else 1
    while True:
        key = ((start_ns - origin_ns) // window_ns) * nr_classes + class_id
        nr_out = int(np.unique(key).size)
        # One window spanning the whole trace is as far as merging can go.
        if nr_out <= max_events or window_ns > total_ns:
            return window_ns
        window_ns *= 2


def prepare_slices(
    timeline: Any, window_ns: int | None = None, max_events: int = DEFAULT_MAX_EVENTS
) -> ChromeSlices:
    """Return the timeline's slices, merged into windows when there are too many.

    ``timeline`` is a :class:`paracell.models.latency.Timeline`. With
    ``window_ns``, the slices are always merged at that width. Without it,
    they are merged only when there are more than ``max_events``. The width
    is then the smallest power-of-two multiple of a base width that fits.
    Raise ParacellError when the result has more than ``max_events``
    slices: a given ``window_ns`` too narrow, or fewer than one slice per
    event class.
    """
    start_ns = np.asarray(timeline.start_ns, dtype=np.int64)
    dur_ns = np.asarray(timeline.dur_ns, dtype=np.int64)
    class_id = np.asarray(timeline.class_id, dtype=np.int64)
    cpu = np.asarray(timeline.cpu, dtype=np.int64)
    tid = np.asarray(timeline.tid, dtype=np.int64)
    origin_ns = int(start_ns[0]) if start_ns.size else 0
    total_ns = int(timeline.total_ns)
    nr_input = int(start_ns.size)
    if window_ns is None and nr_input > max_events:
        window_ns = _auto_window_ns(start_ns, class_id, origin_ns, total_ns, max_events)
    if window_ns:
        starts, durs, classes, nr_merged, source = merge_windows(
            start_ns, dur_ns, class_id, int(window_ns), origin_ns
        )
        # A merged slice has no single CPU or thread; -1 marks that, as it
        # marks native slices in the timeline.
        alone = nr_merged == 1
        cpu = np.where(alone, cpu[source], -1)
        tid = np.where(alone, tid[source], -1)
        log.info(
            "merged %d slices into %d in windows of %d ns",
            nr_input,
            starts.size,
            window_ns,
        )
    else:
        starts, durs, classes = start_ns, dur_ns, class_id
        nr_merged = np.ones(nr_input, dtype=np.int64)
        window_ns = 0
    if starts.size > max_events:
        raise ParacellError(
            f"the timeline needs {starts.size:,} slices, more than the maximum "
            f"of {max_events:,}",
            hint=_too_many_slices_hint(class_id, window_ns, max_events),
        )
    return ChromeSlices(
        start_ns=starts - origin_ns,
        dur_ns=durs,
        class_id=classes,
        cpu=cpu,
        tid=tid,
        nr_merged=nr_merged,
        class_names=tuple(timeline.class_names),
        window_ns=int(window_ns),
        nr_input_slices=nr_input,
        total_ns=total_ns,
    )


def min_slices(timeline: Any) -> int:
    """Return the fewest slices merging can make: one per event class present."""
    return int(np.unique(np.asarray(timeline.class_id)).size)


def _too_many_slices_hint(class_id: np.ndarray, window_ns: int, max_events: int) -> str:
    nr_classes = int(np.unique(class_id).size)
    if max_events < nr_classes:
        return (
            f"merging keeps one slice per event class and this timeline has "
            f"{nr_classes}, so allow at least {nr_classes} slices"
        )
    return f"widen the merge window of {window_ns} ns or allow more slices"


def _ns_to_us(value_ns: int) -> str:
    # repr of a float is the shortest text that reads back as the same double.
    return repr(value_ns / 1000.0)


def _event_lines(slices: ChromeSlices, native_name: str) -> Iterator[str]:
    names = [json.dumps(n) for n in slices.class_names]
    categories = [
        json.dumps("native" if n == native_name else "overhead")
        for n in slices.class_names
    ]
    starts = slices.start_ns.tolist()
    durs = slices.dur_ns.tolist()
    classes = slices.class_id.tolist()
    cpus = slices.cpu.tolist()
    tids = slices.tid.tolist()
    merged = slices.nr_merged.tolist()
    for i in range(len(starts)):
        if merged[i] > 1:
            args = f'{{"merged_slices":{merged[i]}}}'
        elif cpus[i] >= 0:
            args = f'{{"cpu":{cpus[i]},"tid":{tids[i]}}}'
        else:
            args = "{}"
        yield (
            f'{{"ph":"X","name":{names[classes[i]]},"cat":{categories[classes[i]]},'
            f'"ts":{_ns_to_us(starts[i])},"dur":{_ns_to_us(durs[i])},'
            f'"pid":{PID},"tid":{TID},"args":{args}}}'
        )


def write_chrome_trace(
    path: Path,
    slices: ChromeSlices,
    *,
    trace_name: str,
    runtime: str,
    deployment: str,
    native_name: str = "native",
    start_ts_ns: int = 0,
) -> int:
    """Write the slices as Chrome trace-event JSON; return the number of X events.

    The file is written to a temporary name and renamed into place, so a
    reader never sees half a file.
    """
    metadata = [
        {
            "ph": "M",
            "name": "process_name",
            "pid": PID,
            "args": {"name": f"{trace_name}: {runtime} {deployment} (modelled)"},
        },
        {
            "ph": "M",
            "name": "thread_name",
            "pid": PID,
            "tid": TID,
            "args": {"name": "modelled time"},
        },
    ]
    other = {
        "tool": f"paracell {__version__}",
        "trace": trace_name,
        "runtime": runtime,
        "deployment": deployment,
        "modelled": True,
        "total_ns": slices.total_ns,
        "trace_start_ts_ns": start_ts_ns,
        "input_slices": slices.nr_input_slices,
        "merge_window_ns": slices.window_ns,
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write('{"displayTimeUnit":"ns","otherData":')
            f.write(json.dumps(other))
            f.write(',"traceEvents":[\n')
            for event in metadata:
                f.write(json.dumps(event))
                f.write(",\n")
            count = 0
            for line in _event_lines(slices, native_name):
                if count:
                    f.write(",\n")
                f.write(line)
                count += 1
            f.write("\n]}\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count
