"""Shared pieces of the commands: loading scenarios, running them, dumping results."""

from __future__ import annotations

import json
import sys

from sim.run import RunResult
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


def add_json_argument(p, what: str) -> None:
    """--json FILE, ``-`` for stdout (the other output then goes to stderr)."""
    p.add_argument(
        "--json",
        metavar="FILE",
        help=f"also write {what} as JSON, with provenance ('-': stdout, the rest to stderr)",
    )


def add_set_argument(p) -> None:
    """--set FIELD=VALUE, as `run` and `compare` take it."""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="FIELD=VALUE",
        help="override a scenario field (dotted path, e.g. guest.vcpus=4, costs.tlbi_us=2,"
        " devices[0].vectors=65; repeatable); validated like the file",
    )


def check_json(args) -> None:
    """Refuse an unwritable --json before any simulation (OutputError)."""
    from sim.output import check_file

    if getattr(args, "json", None):
        check_file(args.json, "--json")


def bundled_scenarios() -> list[str]:
    return sorted(str(p) for p in BUNDLED.glob("*.yaml"))


def load_all(paths: list[str], overrides: list[str] | None = None) -> list[Scenario]:
    """Load every scenario (with any --set applied) before running any, so bad input
    leaves nothing behind."""
    from sim.overrides import OverrideError, apply_overrides, parse_override

    scenarios = []
    try:
        parsed = [parse_override(o) for o in overrides or []]
        for path in paths:
            scenarios.append(apply_overrides(load_scenario(path), parsed, str(path)))
    except ScenarioError as exc:
        print("\n".join(f"pkvm-sim: {e}" for e in exc.errors), file=sys.stderr)
        raise SystemExit(2) from None
    except OverrideError as exc:
        print(f"pkvm-sim: {exc}", file=sys.stderr)
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


def add_jobs_argument(p) -> None:
    """``--jobs N``: runs at once, each in a worker process (sim.parallel)."""
    p.add_argument(
        "--jobs",
        type=_positive,
        metavar="N",
        help="runs at once, each in a worker process (default: every core; 1: in this"
        " process); the output is the same for any N",
    )


def _whole_number(text: str, least: int, expected: str) -> int:
    import argparse

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < least:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {n}")
    return n


def nonnegative(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    return _whole_number(text, 0, "0 or more")


def _positive(text: str) -> int:
    return _whole_number(text, 1, "at least 1")


def dump(results: list[RunResult]) -> str:
    return json.dumps([r.model_dump(mode="json") for r in results], indent=2, sort_keys=True)


def results_document(
    results: list[RunResult], scenarios: list[Scenario], overrides: list[str] | None = None
) -> dict:
    """What results.json and `run --json` hold: provenance, then every result."""
    from sim.provenance import provenance

    return {
        "provenance": provenance(scenarios, overrides),
        "results": [r.model_dump(mode="json") for r in results],
    }
