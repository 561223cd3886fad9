"""`pkvm-sim scenarios`: the bundled scenarios, by the name `run`, `audit` and `compare` take."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sim.commands.common import bundled_scenarios, load_all


def register(sub) -> None:
    p = sub.add_parser(
        "scenarios",
        help="list the bundled scenarios with the question each answers",
        epilog="examples:\n  pkvm-sim scenarios\n  pkvm-sim run small-vm   # a bundled one by name",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", metavar="FILE", help="write the list as JSON ('-': stdout)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from sim.scenario import BUNDLED

    paths = bundled_scenarios()
    if not paths:
        print(f"pkvm-sim: no scenario bundled in {BUNDLED}", file=sys.stderr)
        return 2
    scenarios = load_all(paths)
    if args.json:
        rows = [
            {"name": Path(p).stem, "question": s.question, "path": str(p)}
            for p, s in zip(paths, scenarios, strict=True)
        ]
        text = json.dumps(rows, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            Path(args.json).write_text(text)
        return 0
    width = max(len(Path(p).stem) for p in paths)
    for path, scenario in zip(paths, scenarios, strict=True):
        print(f"{Path(path).stem:<{width}}  {scenario.question}")
    return 0
