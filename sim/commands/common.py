"""Shared pieces of the commands: loading scenarios, running them, dumping results."""

from __future__ import annotations

import json
import sys

from sim.run import RunResult, run
from sim.scenario import BUNDLED, Scenario, ScenarioError, load_scenario


def add_scenario_arguments(p) -> None:
    """SCENARIO and --proposal, as `run` and `audit` take them."""
    from sim.scenario import ALL_PROPOSALS

    p.add_argument(
        "scenario", help="scenario YAML file, or a bundled one by name (pkvm-sim scenarios)"
    )
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
            print("\n".join(f"pkvm-sim: {e}" for e in exc.errors), file=sys.stderr)
            raise SystemExit(2) from None
    return scenarios


def unique_names(paths: list[str], scenarios: list[Scenario]) -> None:
    """Exit 2 if two scenarios share a name (their cells would merge in one report)."""
    from sim.scenario import check_unique_names

    try:
        check_unique_names(paths, scenarios)
    except ScenarioError as exc:
        print("\n".join(f"pkvm-sim: {e}" for e in exc.errors), file=sys.stderr)
        raise SystemExit(2) from None


def run_all(scenarios: list[Scenario], only: list[str] | None = None) -> list[RunResult]:
    from sim.commands.console import progress

    cells = [(s, p) for s in scenarios for p in s.proposals if not only or p in only]
    results = []
    with progress(len(cells), "simulating") as advance:
        for scenario, proposal in cells:
            results.append(run(scenario, proposal))
            advance()
    return results


def dump(results: list[RunResult]) -> str:
    return json.dumps([r.model_dump(mode="json") for r in results], indent=2, sort_keys=True)
