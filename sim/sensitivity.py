"""Do the conclusions survive their cost estimates?

Every cost in :class:`sim.costs.CostModel` marked as an estimate carries a plausible range
(``CostModel.ranges()``). Costs enter the simulation as SimPy timeouts (``World.charge``),
not as post-hoc multipliers: a dearer trap moves every later event, so exposure windows,
which commands a migration finds queued and so the ITS downtime can change. So each
point of the design is a full re-simulation: the defaults, each estimate at its low and
at its high end with the others at their defaults (one at a time, for the tornado), and
a Latin hypercube over all of them at once (``scipy.stats.qmc.LatinHypercube``, seeded;
each coordinate mapped log-uniformly onto [low, high], since the ranges span orders of
magnitude).

A conclusion is an explicit statement about one scenario that holds under the default
costs, derived from the default run: "A has less ITS downtime than B" (each pair that
differs), the ranking by ITS downtime (ties kept as ties), "A exposes more secret bytes
to the host's stage-2 than B" and the same for DMA reach. Each is then evaluated on every
point of the design and reported as holding across the whole range or not, with the
points where it fails.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from sim.cells import Cell, run_cells
from sim.costs import CostModel, CostRange
from sim.run import RunResult
from sim.scenario import Scenario

# The pair the thread argues about: serialization through the VMM against sharing the
# tables with an enlightened guest.
KEY_PAIR = ("userspace-serialization", "share-enlightened-guest")
REL_TIE = 1e-9  # values this close (relative) are equal: ties, not an order

Kind = Literal["default", "low", "high", "joint"]


@dataclass(frozen=True)
class Point:
    """One cost vector of the design: ``costs`` overrides the scenario's cost model."""

    index: int
    kind: Kind
    costs: dict[str, float]
    param: str | None = None  # the estimate a low/high point moves

    @property
    def label(self) -> str:
        if self.kind in ("low", "high"):
            return f"{self.param}={self.costs[self.param]:g} ({self.kind})"
        return "defaults" if self.kind == "default" else f"joint sample {self.index}"


def design(
    ranges: dict[str, CostRange] | None = None,
    joint: int = 32,
    seed: int = 0,
    params: Iterable[str] | None = None,
    one_at_a_time: bool = True,
) -> list[Point]:
    """The defaults, then each estimate at low and high, then ``joint`` LHS points."""
    from scipy.stats import qmc

    ranges = ranges or CostModel.ranges()
    names = list(params) if params is not None else list(ranges)
    unknown = [n for n in names if n not in ranges]
    if unknown:
        raise ValueError(f"not an estimated cost: {', '.join(unknown)} (see CostModel.ranges())")
    points = [Point(0, "default", {})]
    if one_at_a_time:
        for name in names:
            for kind in ("low", "high"):
                value = getattr(ranges[name], kind)
                points.append(Point(len(points), kind, {name: value}, name))
    if joint and names:
        unit = qmc.LatinHypercube(d=len(names), rng=seed).random(joint)
        for row in unit:
            costs = {}
            for name, u in zip(names, row, strict=True):
                r = ranges[name]
                costs[name] = float(math.exp(math.log(r.low) + u * math.log(r.high / r.low)))
            points.append(Point(len(points), "joint", costs))
    return points


# ---- conclusions ------------------------------------------------------------------------

Metric = Callable[[RunResult], float]
METRICS: dict[str, tuple[Metric, str]] = {
    "its_downtime_ms": (lambda r: r.costs.its_downtime_ms, "ITS downtime"),
    "peak_exposed_bytes": (lambda r: r.exposure.peak_exposed_bytes, "secret bytes exposed"),
    "dma_reachable_peak_bytes": (
        lambda r: r.exposure.dma_reachable_peak_bytes,
        "secret bytes DMA-reachable",
    ),
}


def _tie(a: float, b: float) -> bool:
    return abs(a - b) <= REL_TIE * max(abs(a), abs(b), 1e-12)


@dataclass(frozen=True)
class Conclusion:
    """A statement about one scenario's proposals, true under the default costs."""

    scenario: str
    kind: Literal["less", "more", "ranking"]
    metric: str
    proposals: tuple[str, ...]  # (a, b) for less/more, the ranking's order otherwise
    ties: tuple[bool, ...] = ()  # ranking: ties[i] if proposals[i] == proposals[i + 1]

    @property
    def text(self) -> str:
        what = METRICS[self.metric][1]
        if self.kind == "less":
            return f"`{self.proposals[0]}` has less {what} than `{self.proposals[1]}`"
        if self.kind == "more":
            return f"`{self.proposals[0]}` has more {what} than `{self.proposals[1]}`"
        parts = [f"`{self.proposals[0]}`"]
        for p, tie in zip(self.proposals[1:], self.ties, strict=True):
            parts.append(("= " if tie else "< ") + f"`{p}`")
        return f"ranking by {what}: " + " ".join(parts)

    def holds(self, runs: dict[str, RunResult]) -> bool:
        metric = METRICS[self.metric][0]
        v = [metric(runs[p]) for p in self.proposals]
        if self.kind == "less":
            return v[0] < v[1] and not _tie(v[0], v[1])
        if self.kind == "more":
            return v[0] > v[1] and not _tie(v[0], v[1])
        for (x, y), tie in zip(itertools.pairwise(v), self.ties, strict=True):
            if tie != _tie(x, y) or (not tie and not x < y):
                return False
        return True


def conclusions(scenario: str, runs: dict[str, RunResult]) -> list[Conclusion]:
    """What the default run of ``scenario`` says: the ITS downtime ranking, every pair it
    orders, and every pair that exposes more (stage-2 and DMA)."""
    out: list[Conclusion] = []
    names = list(runs)
    metric = METRICS["its_downtime_ms"][0]
    order = sorted(names, key=lambda p: (metric(runs[p]), names.index(p)))
    ties = tuple(_tie(metric(runs[a]), metric(runs[b])) for a, b in itertools.pairwise(order))
    out.append(Conclusion(scenario, "ranking", "its_downtime_ms", tuple(order), ties))
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            if not _tie(metric(runs[a]), metric(runs[b])):
                out.append(Conclusion(scenario, "less", "its_downtime_ms", (a, b)))
    for name in ("peak_exposed_bytes", "dma_reachable_peak_bytes"):
        m = METRICS[name][0]
        for a in names:
            for b in names:
                if m(runs[a]) > m(runs[b]) and not _tie(m(runs[a]), m(runs[b])):
                    out.append(Conclusion(scenario, "more", name, (a, b)))
    return out


# ---- running the design -----------------------------------------------------------------


@dataclass
class Verdict:
    conclusion: Conclusion
    failed: list[tuple[int, int]] = field(default_factory=list)  # (point, seed) where false
    evaluated: int = 0

    @property
    def holds(self) -> bool:
        return not self.failed


@dataclass
class Sensitivity:
    """Every point's results and every conclusion's verdict."""

    scenarios: list[str]
    points: list[Point]
    seeds: dict[str, list[int]]
    # (scenario, point index, seed) -> proposal -> result
    runs: dict[tuple[str, int, int], dict[str, RunResult]]
    verdicts: list[Verdict]

    def results(self, scenario: str, point: int, seed: int | None = None) -> dict[str, RunResult]:
        seed = self.seeds[scenario][0] if seed is None else seed
        return self.runs[scenario, point, seed]

    def has_tornado(self, scenario: str) -> bool:
        lows = [p for p in self.points if p.kind == "low"]
        seed = self.seeds[scenario][0]
        return bool(lows) and all((scenario, p.index, seed) in self.runs for p in lows)

    def swing(
        self, scenario: str, value: Callable[[dict[str, RunResult]], float]
    ) -> list[tuple[str, float, float, float]]:
        """The tornado: (estimate, value at its low, at its high, default value), the
        estimates that move ``value`` most first, at the scenario's own seed."""
        base = value(self.results(scenario, 0))
        lows = {p.param: p for p in self.points if p.kind == "low"}
        highs = {p.param: p for p in self.points if p.kind == "high"}
        rows = [
            (
                name,
                value(self.results(scenario, lows[name].index)),
                value(self.results(scenario, highs[name].index)),
                base,
            )
            for name in lows
        ]
        return sorted(rows, key=lambda r: -abs(r[2] - r[1]))


def run_design(
    scenarios: list[Scenario],
    points: list[Point],
    seeds: int = 1,
    tick: Callable[[], None] = lambda: None,
    runner: Callable[[list[Cell], Callable[[], None]], list[RunResult]] = run_cells,
    one_at_a_time: set[str] | None = None,
    defaults: Iterable[RunResult] = (),
) -> Sensitivity:
    """Simulate every (scenario, proposal, seed, point) cell; judge every conclusion.

    ``runner`` maps the independent cells to results (in order); the default runs them
    in this process, a process pool can be passed instead. ``one_at_a_time`` names the
    scenarios that run the low/high points (default: all; the others run the defaults
    and the joint points). ``defaults``: runs already made at the default costs, reused.
    """
    from sim.cells import seeds_of

    known = {(r.scenario, r.seed, r.proposal): r for r in defaults}
    todo: list[Cell] = []
    keys: list[tuple[str, int, int, str]] = []
    runs: dict[tuple[str, int, int], dict[str, RunResult]] = {}
    seed_lists = {s.name: seeds_of(s, seeds) for s in scenarios}
    for s in scenarios:
        for point in points:
            oat = point.kind in ("low", "high")
            if oat and one_at_a_time is not None and s.name not in one_at_a_time:
                continue
            overrides = tuple(sorted(point.costs.items()))
            for seed in seed_lists[s.name]:
                runs[s.name, point.index, seed] = {}
                for proposal in s.proposals:
                    if not overrides and (s.name, seed, proposal) in known:
                        runs[s.name, point.index, seed][proposal] = known[s.name, seed, proposal]
                        continue
                    todo.append(Cell(s, proposal, seed, overrides))
                    keys.append((s.name, point.index, seed, proposal))
    results = runner(todo, tick)
    for (name, index, seed, proposal), result in zip(keys, results, strict=True):
        runs[name, index, seed][proposal] = result
    for key, by_proposal in runs.items():  # proposals in the scenario's order
        order = next(s.proposals for s in scenarios if s.name == key[0])
        runs[key] = {p: by_proposal[p] for p in order}
    verdicts = []
    for s in scenarios:
        base = runs[s.name, 0, seed_lists[s.name][0]]
        for conclusion in conclusions(s.name, base):
            verdict = Verdict(conclusion)
            for point in points:
                for seed in seed_lists[s.name]:
                    if (s.name, point.index, seed) not in runs:
                        continue
                    verdict.evaluated += 1
                    if not conclusion.holds(runs[s.name, point.index, seed]):
                        verdict.failed.append((point.index, seed))
            verdicts.append(verdict)
    return Sensitivity([s.name for s in scenarios], points, seed_lists, runs, verdicts)


def key_pair_gap(runs: dict[str, RunResult]) -> float:
    """ITS downtime of KEY_PAIR[0] minus KEY_PAIR[1] (ms): negative if the first is faster."""
    a, b = KEY_PAIR
    return runs[a].costs.its_downtime_ms - runs[b].costs.its_downtime_ms


def to_json(sens: Sensitivity) -> dict[str, Any]:
    """The design, every conclusion's verdict and every point's ITS downtimes."""
    return {
        "points": [
            {"index": p.index, "kind": p.kind, "param": p.param, "costs": p.costs}
            for p in sens.points
        ],
        "seeds": sens.seeds,
        "ranges": {
            n: {"default": r.default, "low": r.low, "high": r.high, "unit": r.unit}
            for n, r in CostModel.ranges().items()
        },
        "conclusions": [
            {
                "scenario": v.conclusion.scenario,
                "text": v.conclusion.text,
                "holds_across_range": v.holds,
                "evaluated": v.evaluated,
                "failed_at": [{"point": i, "seed": s} for i, s in v.failed],
            }
            for v in sens.verdicts
        ],
        "its_downtime_ms": {
            f"{name}/{index}/{seed}": {p: r.costs.its_downtime_ms for p, r in runs.items()}
            for (name, index, seed), runs in sorted(sens.runs.items())
        },
    }
