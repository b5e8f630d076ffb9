"""Typed exceptions of the library.

The library raises these; only the command-line front end turns them into a
one-line message and an exit status (2 for bad input or a missing feature).
"""

from __future__ import annotations

from pathlib import Path


class ParacellError(Exception):
    """Base class of every error the tool reports to the user without a traceback."""

    exit_status = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = self.args[0]
        if self.hint:
            text += f" ({self.hint})"
        return text

    def __reduce__(self) -> tuple[object, ...]:
        # The default pickling calls __init__ with self.args alone, which
        # subclasses with other required arguments reject. Sweep workers send
        # these errors back to the parent process, so rebuild from state.
        return (_restore_error, (type(self), self.args, dict(self.__dict__)))


def _restore_error(
    cls: type[ParacellError], args: tuple[object, ...], state: dict[str, object]
) -> ParacellError:
    """Rebuild an error of class ``cls`` from its args and attributes."""
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM turned into an exception, so cleanup code runs.

    The command-line front end exits with 128 plus ``signum``, as a shell
    reports a command ended by that signal.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class TraceFormatError(ParacellError):
    """A trace file is missing, unreadable or holds a value the format forbids.

    ``column`` and ``row`` are ``None`` where the fault is not tied to one
    cell, for example a truncated Parquet file.
    """

    def __init__(
        self,
        path: Path | str,
        reason: str,
        *,
        column: str | None = None,
        row: int | None = None,
        value: object = None,
        hint: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.reason = reason
        self.column = column
        self.row = row
        self.value = value
        where = str(self.path)
        if column is not None:
            where += f": column {column!r}"
        if row is not None:
            where += f", row {row}"
        if value is not None:
            where += f", value {value!r}"
        super().__init__(f"{where}: {reason}", hint)


class CaptureError(ParacellError):
    """Tracing could not start or failed while running."""


class ProfileError(ParacellError):
    """A cost profile names an unknown parameter or gives a value in the wrong unit."""


class ModelError(ParacellError):
    """A model cannot run on the given input: a guest too small for the trace, say."""


class LiveError(ParacellError):
    """The live replay cannot run within the memory cap or on this kernel."""


class ResultsError(ParacellError):
    """The results store or a sweep specification is invalid."""
