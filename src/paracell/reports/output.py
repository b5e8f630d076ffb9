"""Checks of output paths, run before the work that fills them.

Modelling a trace for a report or an export can take a while, so a wrong
output path is reported first. The writes themselves stay atomic (a
temporary file renamed into place) and still report their own errors.
"""

from __future__ import annotations

import os
from pathlib import Path

from paracell.errors import ParacellError


def check_output_file(path: Path) -> None:
    """Raise ParacellError unless a file can be created or replaced at ``path``.

    The error names the path and the cause: a missing or non-directory
    parent, no write permission in it, or ``path`` being a directory.
    """
    if path.is_dir():
        raise ParacellError(
            f"{path}: is a directory", hint="give a file name, for example out.json"
        )
    _check_writable_directory(path.parent if str(path.parent) else Path("."), path)


def check_output_dir(path: Path) -> None:
    """Raise ParacellError unless ``path`` is or can become a writable directory."""
    if path.exists():
        if not path.is_dir():
            raise ParacellError(
                f"{path}: exists and is not a directory",
                hint="give a directory for the output, or a new name",
            )
        _check_writable_directory(path, path)
        return
    # mkdir creates the missing parents, so the nearest existing one must
    # be a writable directory.
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    _check_writable_directory(ancestor, path)


def _check_writable_directory(directory: Path, target: Path) -> None:
    if not directory.exists():
        raise ParacellError(
            f"{target}: directory {directory} does not exist",
            hint="create it first or choose another output path",
        )
    if not directory.is_dir():
        raise ParacellError(
            f"{target}: {directory} is not a directory",
            hint="choose another output path",
        )
    # NOTE: os.access checks the real user id, and the directory can change
    # before the write. So the write can still fail, and then reports its
    # own error.
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ParacellError(
            f"{target}: no permission to write in {directory}",
            hint="choose a directory you can write to",
        )
