"""`pkvm-sim scenarios`: the bundled scenarios and the question each answers."""

from __future__ import annotations

import argparse
from pathlib import Path

from sim.commands.common import bundled_scenarios, load_all


def register(sub) -> None:
    p = sub.add_parser(
        "scenarios",
        help="list the bundled scenarios with the question each answers",
        epilog="example:\n  pkvm-sim scenarios",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    paths = bundled_scenarios()
    scenarios = load_all(paths)
    width = max(len(Path(p).name) for p in paths)
    for path, scenario in zip(paths, scenarios, strict=True):
        print(f"{Path(path).name:<{width}}  {scenario.question}")
    return 0
