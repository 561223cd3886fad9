"""Shared pieces of the commands: loading scenarios, running them, dumping results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sim.run import RunResult
from sim.scenario import Scenario, ScenarioError, load_scenario

BUNDLED = Path(__file__).resolve().parents[2] / "scenarios"


def add_scenario_arguments(p) -> None:
    """SCENARIO and --proposal, as `run` and `audit` take them."""
    from sim.scenario import ALL_PROPOSALS

    p.add_argument("scenario", help="scenario YAML file")
    p.add_argument(
        "--proposal",
        action="append",
        choices=ALL_PROPOSALS,
        metavar="P",
        help="only this proposal (repeatable; default: the scenario's list)",
    )


def bundled_scenarios() -> list[str]:
    return sorted(str(p) for p in BUNDLED.glob("*.yaml"))


def load_all(paths: list[str]) -> list[Scenario]:
    """Load every scenario before running any, so bad input leaves nothing behind."""
    scenarios = []
    for path in paths:
        try:
            scenarios.append(load_scenario(path))
        except ScenarioError as exc:
            print(f"pkvm-sim: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    return scenarios


def run_all(
    scenarios: list[Scenario], only: list[str] | None = None, seeds: int = 1
) -> list[RunResult]:
    """Every (scenario, proposal, seed) cell (sim.cells), each an independent run."""
    from sim.cells import cells, run_cells
    from sim.commands.console import progress

    todo = cells(scenarios, seeds, only)
    with progress(len(todo), "simulating") as advance:
        return run_cells(todo, advance)


def add_seeds_argument(p, default: int) -> None:
    """``--seeds N``: run each scenario over seeds scenario.seed .. scenario.seed+N-1."""
    p.add_argument(
        "--seeds",
        type=_positive,
        default=default,
        metavar="N",
        help=f"seeds per scenario, from the scenario's own seed up (default {default});"
        " tables quote the median with min-max",
    )


def nonnegative(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    import argparse

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {n}")
    return n


def _positive(text: str) -> int:
    import argparse

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {n}")
    return n


def dump(results: list[RunResult]) -> str:
    return json.dumps([r.model_dump(mode="json") for r in results], indent=2, sort_keys=True)
