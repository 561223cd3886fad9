"""`pkvm-sim scenarios`: the bundled scenarios and the question each answers."""

from __future__ import annotations

import argparse
from pathlib import Path

from sim.commands.common import add_json_argument, bundled_scenarios, check_json, load_all


def register(sub) -> None:
    p = sub.add_parser(
        "scenarios",
        help="list the bundled scenarios with the question each answers",
        epilog="examples:\n  pkvm-sim scenarios\n"
        "  pkvm-sim scenarios --json - | jq '.scenarios[].name'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_json_argument(p, "each scenario as loaded")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from sim.output import write_json
    from sim.provenance import provenance

    check_json(args)
    paths = bundled_scenarios()
    scenarios = load_all(paths)
    width = max(len(Path(p).name) for p in paths)
    for path, scenario in zip(paths, scenarios, strict=True):
        print(f"{Path(path).name:<{width}}  {scenario.question}")
    if args.json:
        data = provenance(scenarios)
        files = [
            {"file": Path(p).name, "name": s.name, "question": s.question}
            for p, s in zip(paths, scenarios, strict=True)
        ]
        write_json(args.json, {"provenance": data, "scenarios": files})
    return 0
