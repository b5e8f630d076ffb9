"""Placeholder for `paracell import-strace` until its module is written."""

from __future__ import annotations

import argparse

from paracell.errors import ParacellError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER)


def run(args: argparse.Namespace) -> int:
    raise ParacellError("this subcommand is not built yet")
