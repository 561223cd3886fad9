"""`pkvm-sim scenarios`: the bundled scenarios, by the name `run`, `audit` and `compare` take."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim.commands.common import add_json_argument, bundled_scenarios, check_json, load_all


def register(sub) -> None:
    p = sub.add_parser(
        "scenarios",
        help="list the bundled scenarios with the question each answers",
        epilog="examples:\n  pkvm-sim scenarios\n"
        "  pkvm-sim run small-vm   # a bundled one by name\n"
        "  pkvm-sim scenarios --json - | jq '.scenarios[].name'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_json_argument(p, "each scenario as loaded")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from sim.output import write_json
    from sim.provenance import provenance
    from sim.scenario import BUNDLED

    check_json(args)
    paths = bundled_scenarios()
    if not paths:
        print(f"pkvm-sim: no scenario bundled in {BUNDLED}", file=sys.stderr)
        return 2
    scenarios = load_all(paths)
    width = max(len(Path(p).stem) for p in paths)
    for path, scenario in zip(paths, scenarios, strict=True):
        print(f"{Path(path).stem:<{width}}  {scenario.question}")
    if args.json:
        data = provenance(scenarios)
        files = [
            {"name": Path(p).stem, "file": str(p), "question": s.question}
            for p, s in zip(paths, scenarios, strict=True)
        ]
        write_json(args.json, {"provenance": data, "scenarios": files})
    return 0
