"""Pair ``raw_syscalls:sys_enter`` with ``sys_exit`` into one row per call."""

from __future__ import annotations

import numpy as np

Columns = dict[str, np.ndarray]


def pair_syscalls(enter: Columns, exit_: Columns) -> Columns:
    """Return one row per ``sys_enter``, sorted by entry time.

    An entry is complete when the next event of the same thread is a
    ``sys_exit`` with the same number; otherwise (``exit_group``, a thread
    killed inside a call, a lost exit, a call still running at the end)
    ``complete`` is false and ``ret`` and ``duration_ns`` are 0. Exits
    without an entry (calls that began before tracing) are dropped. The
    same thread may enter on one CPU and exit on another, so events are
    ordered per thread by time, then by CPU stream position.
    """
    n_in = enter["ts_ns"].size
    n_out = exit_["ts_ns"].size
    ts = np.concatenate([enter["ts_ns"], exit_["ts_ns"]])
    tid = np.concatenate([enter["common_pid"], exit_["common_pid"]]).astype(np.int64)
    nr = np.concatenate([enter["id"], exit_["id"]]).astype(np.int64)
    is_exit = np.concatenate([np.zeros(n_in, bool), np.ones(n_out, bool)])
    seq = np.concatenate([enter["seq"], exit_["seq"]])
    order = np.lexsort((is_exit, seq, ts, tid))
    ts, tid, nr, is_exit = ts[order], tid[order], nr[order], is_exit[order]
    src = order  # index into the concatenation
    nxt = np.arange(1, ts.size + 1)
    nxt[-1:] = 0
    if ts.size:
        paired = (~is_exit) & (np.arange(ts.size) < ts.size - 1) & is_exit[nxt] & \
            (tid[nxt] == tid) & (nr[nxt] == nr)
    else:
        paired = np.zeros(0, bool)
    enter_pos = np.flatnonzero(~is_exit)
    enter_idx = src[enter_pos]  # rows of `enter`
    ok = paired[enter_pos]
    exit_idx = src[nxt[enter_pos]] - n_in
    ret = np.zeros(enter_pos.size, np.int64)
    duration = np.zeros(enter_pos.size, np.int64)
    ret[ok] = exit_["ret"][exit_idx[ok]]
    duration[ok] = exit_["ts_ns"][exit_idx[ok]] - enter["ts_ns"][enter_idx[ok]]
    rows = np.argsort(enter_idx, kind="stable")  # back to entry-time order
    return {
        "ts_ns": enter["ts_ns"][enter_idx[rows]],
        "cpu": enter["cpu"][enter_idx[rows]],
        "tid": enter["common_pid"][enter_idx[rows]],
        "nr": enter["id"][enter_idx[rows]],
        "ret": ret[rows],
        "duration_ns": duration[rows],
        "complete": ok[rows],
    }
