"""`paracell isolation`: run the XGate attack suite against the isolation model.

Exit status: 0 when every attack is stopped, 1 when one gets through, 2 on
bad usage (for example an unknown rule name).
"""

from __future__ import annotations

import argparse
import sys

from paracell.cli._common import add_json_argument, print_json
from paracell.errors import ParacellError

MODEL_NOTE = (
    "This is a model: the gates, the container kernel and the CPU's PKU checks "
    "run as a Python interpreter of x86-64 bytes, so no PKU hardware is needed "
    "and nothing executes WRPKRU on this machine."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_json_argument(parser)
    parser.add_argument(
        "--disable",
        action="append",
        default=[],
        metavar="RULE",
        help="switch off an isolation rule (repeatable) to see which attacks it stops",
    )
    parser.add_argument(
        "--list-rules", action="store_true", help="print the rules and exit"
    )


def run(args: argparse.Namespace) -> int:
    from paracell.isolation import ALL_RULES, RULES, run_suite

    unknown = sorted(set(args.disable) - ALL_RULES)
    if unknown:
        raise ParacellError(
            f"--disable: unknown rule {', '.join(unknown)}",
            hint="paracell isolation --list-rules prints the rule names",
        )
    if args.list_rules:
        for rule in RULES.values():
            print(f"{rule.name}: {rule.text} (enforced by {rule.enforcer})")
        return 0
    rules = ALL_RULES - frozenset(args.disable)
    results = run_suite(rules)
    stopped = sum(result.stopped for result in results)
    if args.json:
        print_json(
            {
                "model": True,
                "note": MODEL_NOTE,
                "rules_disabled": sorted(args.disable),
                "attacks_tried": len(results),
                "attacks_stopped": stopped,
                "attacks": [result.to_json() for result in results],
            }
        )
    else:
        out = sys.stdout
        out.write(MODEL_NOTE + "\n")
        if args.disable:
            out.write(f"Rules switched off: {', '.join(sorted(args.disable))}\n")
        out.write(f"\n{len(results)} attacks tried, {stopped} stopped\n\n")
        width = max(len(result.name) for result in results)
        out.write(f"{'attack':<{width}}  stopped  rule\n")
        for result in results:
            stopped_by = result.rule
            if result.backstops:
                stopped_by += f" (backstop: {', '.join(result.backstops)})"
            mark = "yes" if result.stopped else "NO"
            out.write(f"{result.name:<{width}}  {mark:<7}  {stopped_by}\n")
            for violation in result.violations:
                out.write(f"{'':<{width}}    {violation}\n")
        out.write("\nRules:\n")
        for name in sorted({result.rule for result in results}):
            out.write(f"  {name}: {RULES[name].text}\n")
    return 0 if stopped == len(results) else 1
