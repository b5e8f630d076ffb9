"""Command-line front end: ``paracell SUBCOMMAND ...``.

Each subcommand lives in its own module, which provides ``add_arguments``
(fills its parser) and ``run`` (takes the parsed arguments, returns the exit
status). Only this module turns library errors into messages and exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from paracell import __version__
from paracell.errors import ParacellError

log = logging.getLogger("paracell")

# (name, module, one-line help), in the order ``paracell --help`` lists them.
SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("compare", "compare", "compare every runtime and memory policy on traces"),
    ("trace", "trace", "record a command and its children through tracefs"),
    ("import-strace", "import_strace", "convert an strace -f -ttt -T log to a trace"),
    ("info", "info", "summarise a trace"),
    ("costs", "costs", "print the cost parameters and their sources"),
    ("latency", "latency", "replay traces through the runtime latency models"),
    ("memory", "memory", "replay allocator events through the memory policies"),
    ("live", "live", "run a memory policy on real host memory"),
    ("calibrate", "calibrate", "measure fault, bind and syscall costs on this host"),
    ("isolation", "isolation", "run the XGate attack suite against the model"),
    ("scan", "scan", "scan ELF files for WRPKRU and XRSTOR byte sequences"),
    ("report", "report", "write a self-contained HTML report"),
    ("export", "export", "export a modelled timeline as Chrome trace-event JSON"),
    ("sweep", "sweep", "evaluate a grid of traces, runtimes, policies and parameters"),
    ("results", "results", "list and query the results store"),
]


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with one sub-parser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="paracell",
        description="What secure-container designs cost on a real workload: "
        "capture traces, replay them through runtime and memory models, and "
        "run the memory replay on real host memory.",
    )
    parser.add_argument(
        "--version", action="version", version=f"paracell {__version__}"
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="level of log messages written to standard error (default: WARNING)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="hide progress bars and log messages"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name, help_text in SUBCOMMANDS:
        module = importlib.import_module(f"paracell.cli.{module_name}")
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)
    return parser


def _configure_logging(level: str, quiet: bool) -> None:
    # main() may run many times in one process (tests, notebooks): replace the
    # handler of the previous call, whose stream may since have been closed.
    for handler in [h for h in log.handlers if getattr(h, "_paracell_cli", False)]:
        log.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("paracell: %(levelname)s: %(message)s"))
    handler._paracell_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.ERROR if quiet else getattr(logging, level))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _configure_logging(args.log_level, args.quiet)
    try:
        status = args.func(args)
    except ParacellError as exc:
        print(f"paracell: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt as exc:
        print("paracell: interrupted", file=sys.stderr)
        # SIGINT (2) unless the interrupt names the signal that caused it.
        return 128 + getattr(exc, "signum", 2)
    except BrokenPipeError:
        # The reader of our output went away (for example `| head`).
        return 0
    return int(status or 0)
