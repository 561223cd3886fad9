"""A plain-text summary that fits a 72-column mail reply."""

from __future__ import annotations

import textwrap

from sim.provenance import describe_overrides
from sim.report.words import plural
from sim.run import RunResult
from sim.scenario import Scenario

WIDTH = 72
LEGEND = [  # one line per column of the tables below
    "columns: secret B  most secret bytes the host's stage-2 could read",
    "         DMA B     most secret bytes a host-driven DMA master reaches",
    "         ITS ms    the ITS part of the migration downtime",
    "         hcalls    hypercalls to EL2, guest and host",
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
    for scenario in scenarios:
        rows = [r for r in results if r.scenario == scenario.name]
        out += textwrap.wrap(f"{scenario.name} (seed {scenario.seed}): {scenario.question}", WIDTH)
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
            f"  {'proposal':<24}{'secret B':>9}{'DMA B':>8}{'ITS ms':>7}{'hcalls':>7}"
            f"{'shared':>7}{'err':>4}{'ok':>4}"
        )
        for r in rows:
            c = r.correctness
            errors = sum(c.command_errors.values()) + len(c.its_errors)
            out.append(
                f"  {r.proposal:<24}{r.exposure.peak_exposed_bytes:>9,}"
                f"{r.exposure.dma_reachable_peak_bytes:>8,}"
                f"{r.costs.its_downtime_ms:>7.3f}{r.costs.hypercalls:>7,}"
                f"{r.costs.pages_shared:>7,}{errors:>4,}{'yes' if c.its_correct else 'NO':>4}"
            )
        cells = matrices.get(scenario.name, [])
        for proposal in dict.fromkeys(c.proposal for c in cells):
            won = [c.attack for c in cells if c.proposal == proposal and c.outcome == "succeeded"]
            line = f"  {proposal} falls to: {'; '.join(won) if won else 'none of the attacks'}"
            out += textwrap.wrap(line, WIDTH, subsequent_indent="    ", break_on_hyphens=False)
        out.append("")
    assert all(len(line) <= WIDTH for line in out), "summary wider than 72 columns"
    return "\n".join(out)
