"""Runs as independent cells: one (scenario, proposal, seed, cost overrides) each.

A cell depends on its arguments only (the world draws every random number from streams
named after the seed), so cells can run in any order, in this process, in a process pool
or on Dask workers, and give byte-identical results. :func:`run_cell` is top-level so it
pickles; :func:`cells` lists what `run` and `compare` need; :func:`by_cell` groups the
results of several seeds back per (scenario, proposal).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from sim.run import RunResult
from sim.scenario import Scenario

DEFAULT_SEEDS = 8  # seeds per scenario in `run` and `compare`


class Cell(NamedTuple):
    """One run to do. ``costs`` overrides fields of the scenario's cost model."""

    scenario: Scenario
    proposal: str
    seed: int
    costs: tuple[tuple[str, float], ...] = ()


def seeds_of(scenario: Scenario, n: int) -> list[int]:
    """The ``n`` seeds a scenario runs over: its own seed and the ``n - 1`` after it."""
    if n < 1:
        raise ValueError(f"--seeds: expected at least 1, got {n}")
    return list(range(scenario.seed, scenario.seed + n))


def cells(
    scenarios: Iterable[Scenario],
    seeds: int = 1,
    only: list[str] | None = None,
    costs: Mapping[str, float] | None = None,
) -> list[Cell]:
    """Every (scenario, proposal, seed) cell, scenario by scenario, proposals in the
    scenario's order, seeds ascending."""
    overrides = tuple(sorted((costs or {}).items()))
    return [
        Cell(s, p, seed, overrides)
        for s in scenarios
        for p in s.proposals
        if not only or p in only
        for seed in seeds_of(s, seeds)
    ]


def configure(scenario: Scenario, seed: int, costs: Mapping[str, float] = ()) -> Scenario:
    """The scenario with ``seed`` and the cost overrides applied (validated)."""
    update = dict(costs)
    if update:
        model = scenario.costs.model_validate({**scenario.costs.model_dump(), **update})
        scenario = scenario.model_copy(update={"costs": model})
    return scenario if seed == scenario.seed else scenario.model_copy(update={"seed": seed})


def run_cell(
    scenario: Scenario, proposal: str, seed: int, costs: Mapping[str, float] = ()
) -> RunResult:
    """One cell: ``scenario`` under ``proposal`` with ``seed`` (and cost overrides)."""
    from sim.run import run

    return run(configure(scenario, seed, dict(costs)), proposal)


def run_cells(todo: list[Cell], tick: Callable[[], None] = lambda: None) -> list[RunResult]:
    """Run the cells in this process, in order (a pool may map :func:`run_cell` instead)."""
    out = []
    for cell in todo:
        out.append(run_cell(*cell))
        tick()
    return out


def by_cell(results: Iterable[RunResult]) -> dict[tuple[str, str], list[RunResult]]:
    """Results grouped per (scenario, proposal), in first-seen order, seeds ascending."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.scenario, r.proposal), []).append(r)
    return {k: sorted(v, key=lambda r: r.seed) for k, v in groups.items()}


class Spread(NamedTuple):
    """A metric over seeds: the median (the result quoted) and the range."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        vs = list(values)
        return cls(statistics.median(vs), min(vs), max(vs), len(vs))

    @property
    def varies(self) -> bool:
        return self.low != self.high

    def format(self, fmt: Callable[[float], str]) -> str:
        """``median [min-max]``, or the value alone when every seed gave the same."""
        if not self.varies:
            return fmt(self.median)
        return f"{fmt(self.median)} [{fmt(self.low)}-{fmt(self.high)}]"


def spread(rows: list[RunResult], metric: Callable[[RunResult], float]) -> Spread:
    return Spread.of(metric(r) for r in rows)
