"""The library's typed errors survive a trip between processes."""

from __future__ import annotations

import pickle

import pytest

from paracell.errors import (
    CaptureError,
    LiveError,
    ModelError,
    ParacellError,
    ProfileError,
    ResultsError,
    TraceFormatError,
)


@pytest.mark.parametrize(
    "error",
    [
        ParacellError("plain", hint="do this"),
        CaptureError("no tracefs"),
        ProfileError("bad unit"),
        ModelError("guest too small"),
        LiveError("over the cap"),
        ResultsError("bad spec", hint="fix it"),
        TraceFormatError("t/x.parquet", "not sorted", column="ts_ns", row=3, value=7),
        TraceFormatError("t/x.parquet", "truncated"),
    ],
)
def test_error_pickle_round_trip(error: ParacellError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.hint == error.hint
    assert copy.__dict__ == error.__dict__
