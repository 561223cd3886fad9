"""A plain-text summary that fits a 72-column mail reply."""

from __future__ import annotations

import textwrap

from sim.cells import by_cell, spread
from sim.provenance import describe_overrides
from sim.report.words import plural
from sim.run import RunResult
from sim.scenario import Scenario

WIDTH = 72
LEGEND = [  # one line per column of the tables below
    "columns: secret B  most secret bytes the host's stage-2 could read",
    "         DMA B     most secret bytes a host-driven DMA master reaches",
    "         ITS ms    the ITS part of the migration downtime",
    "         hcalls    hypercalls to EL2: guest driver's + proposal's",
    "         shared    guest pages shared with the host, both machines",
    "         err       ITS commands KVM failed + SAVE/RESTORE errors",
    "         ok        no error and every translation kept",
]


def render_text(
    scenarios: list[Scenario],
    results: list[RunResult],
    matrices: dict[str, list],
    overrides: list[str] | None = None,
) -> str:
    out = [
        "pkvm-sim: vGIC ITS migration proposals, honest host and under attack",
        *textwrap.wrap(
            f"({plural(len(scenarios), 'scenario')}, simulated; costs: sim/costs.py"
            " defaults unless noted)",
            WIDTH,
        ),
    ]
    if overrides:
        out += textwrap.wrap(
            "overrides: " + ", ".join(overrides),
            WIDTH,
            subsequent_indent="  ",
            break_on_hyphens=False,
        )
    out += ["", *LEGEND, ""]
    seeds = sorted({r.seed - s.seed for s in scenarios for r in results if r.scenario == s.name})
    if len(seeds) > 1:
        out += textwrap.wrap(
            f"Figures: the median over {len(seeds)} seeds per scenario (its own seed and"
            f" the {len(seeds) - 1} after it); err counts every seed's errors, ok means"
            " every seed kept every translation.",
            WIDTH,
        )
        out.append("")
    for scenario in scenarios:
        rows = [r for r in results if r.scenario == scenario.name]
        n = len({r.seed for r in rows})
        which = f"seed {scenario.seed}" if n == 1 else f"{n} seeds from {scenario.seed}"
        out += textwrap.wrap(f"{scenario.name} ({which}): {scenario.question}", WIDTH)
        if rows and rows[0].cost_overrides:
            costs = "; ".join(describe_overrides(rows[0].cost_overrides))
            out += textwrap.wrap(
                f"  cost model: defaults except {costs}",
                WIDTH,
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
        hosts = ", ".join(sorted({r.host for r in rows}))
        out += textwrap.wrap(f"  host: {hosts}", WIDTH, subsequent_indent="    ")
        out.append(
            f"  {'proposal':<23}{'secret B':>8}{'DMA B':>8}{'ITS ms':>7}{'hcalls':>9}"
            f"{'shared':>7}{'err':>4}{'ok':>4}"
        )
        for runs in by_cell(rows).values():

            def med(metric, runs=runs):
                return spread(runs, metric).median

            errors = sum(
                sum(r.correctness.command_errors.values()) + len(r.correctness.its_errors)
                for r in runs
            )
            ok = all(r.correctness.its_correct for r in runs)
            own = med(lambda r: r.costs.hypercalls_by_proposal)
            driver = med(lambda r: r.costs.hypercalls - r.costs.hypercalls_by_proposal)
            name = runs[0].proposal
            if len(name) > 23:  # a plugin's long name: on its own line, the figures below
                out.append(f"  {name}")
                name = ""
            out.append(
                f"  {name:<23}{med(lambda r: r.exposure.peak_exposed_bytes):>8,.0f}"
                f"{med(lambda r: r.exposure.dma_reachable_peak_bytes):>8,.0f}"
                f"{med(lambda r: r.costs.its_downtime_ms):>7.3f}{f'{driver:,.0f}+{own:,.0f}':>9}"
                f"{med(lambda r: r.costs.pages_shared):>7,.0f}{errors:>4,}"
                f"{'yes' if ok else 'NO':>4}"
            )
        cells = matrices.get(scenario.name, [])
        for proposal in dict.fromkeys(c.proposal for c in cells):
            won = [c.attack for c in cells if c.proposal == proposal and c.outcome == "succeeded"]
            line = f"  {proposal} falls to: {'; '.join(won) if won else 'none of the attacks'}"
            out += textwrap.wrap(line, WIDTH, subsequent_indent="    ", break_on_hyphens=False)
        out.append("")
    assert all(len(line) <= WIDTH for line in out), "summary wider than 72 columns"
    return "\n".join(out)
