"""The Markdown report: one table per scenario, the charts, and the cost model's sources."""

from __future__ import annotations

from pathlib import Path

from sim.cells import by_cell, spread
from sim.costs import CostModel
from sim.matrix import DURATION_TOLERANCE, scenario_row
from sim.proposals import PROPOSALS
from sim.provenance import describe_costs
from sim.run import RunResult
from sim.scenario import Scenario, describe_behaviours


def _n(fmt: str):
    return lambda v: format(v, fmt)


def _num(metric, fmt: str):
    """A numeric column over a proposal's seeds: median [min-max] (sim.cells.Spread)."""
    return lambda rows: spread(rows, metric).format(_n(fmt))


# Each column renders one proposal's runs over every seed of the scenario.
COLUMNS = [
    ("proposal", lambda rows: f"`{rows[0].proposal}`"),
    ("peak secret B exposed", _num(lambda r: r.exposure.peak_exposed_bytes, ",.0f")),
    ("secret B x ms", _num(lambda r: r.exposure.exposed_byte_ms, ",.1f")),
    ("peak secret B DMA-reachable", _num(lambda r: r.exposure.dma_reachable_peak_bytes, ",.0f")),
    ("DMA secret B x ms", _num(lambda r: r.exposure.dma_reachable_byte_ms, ",.1f")),
    ("ITS downtime ms", _num(lambda r: r.costs.its_downtime_ms, ".3f")),
    ("ITS share", _num(lambda r: r.costs.its_downtime_share, ".2%")),
    (
        "hypercalls: driver",
        _num(lambda r: r.costs.hypercalls - r.costs.hypercalls_by_proposal, ",.0f"),
    ),
    ("hypercalls: proposal", _num(lambda r: r.costs.hypercalls_by_proposal, ",.0f")),
    (
        "pages shared: driver",
        _num(lambda r: r.costs.pages_shared - r.costs.pages_shared_by_proposal, ",.0f"),
    ),
    ("pages shared: proposal", _num(lambda r: r.costs.pages_shared_by_proposal, ",.0f")),
    (
        "stage-2 TLBIs: driver",
        _num(lambda r: r.costs.tlb_invalidations - r.costs.tlb_invalidations_by_proposal, ",.0f"),
    ),
    ("stage-2 TLBIs: proposal", _num(lambda r: r.costs.tlb_invalidations_by_proposal, ",.0f")),
    ("IOTLB invalidations", _num(lambda r: r.costs.iotlb_invalidations, ",.0f")),
    ("EL2 us: driver", _num(lambda r: r.costs.driver_el2_us, ",.1f")),
    ("EL2 us: proposal", _num(lambda r: r.costs.proposal_el2_us, ",.1f")),
    ("stream B", _num(lambda r: r.costs.stream_bytes, ",.0f")),
    ("ITT memory overhead B", _num(lambda r: r.costs.guest_memory_overhead_bytes, ",.0f")),
    ("EL2 lines (estimate)", lambda rows: "~" + _num(lambda r: r.costs.el2_loc, ".0f")(rows)),
    ("ITS command errors", lambda rows: _errors(rows)),
    ("ITS correct (translations kept)", lambda rows: _kept(rows)),
]


def _errors(rows: list[RunResult]) -> str:
    found: dict[str, int] = {}
    for r in rows:
        c = r.correctness
        for e, n in [*c.command_errors.items(), *((e, 1) for e in c.its_errors)]:
            found[e] = found.get(e, 0) + n
    if not found:
        return "none"
    each = f" (over {len(rows)} seeds)" if len(rows) > 1 else ""
    return f"**{', '.join(f'{e} x{n}' for e, n in found.items())}**{each}"


def _kept(rows: list[RunResult]) -> str:
    broken = [r.seed for r in rows if not r.correctness.its_correct]
    kept = spread(rows, lambda r: r.correctness.ok_after_migration).format(_n(",.0f"))
    expected = spread(rows, lambda r: r.correctness.expected_translations).format(_n(",.0f"))
    mark = "yes" if not broken else f"**NO** (seed {', '.join(map(str, broken))})"
    return f"{mark} ({kept}/{expected})"


def _host_line(rows: list[RunResult]) -> str:
    hosts = sorted({r.host for r in rows})
    return f"Host: `{'`, `'.join(hosts)}`."


def _table(rows: list[RunResult]) -> list[str]:
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    for runs in by_cell(rows).values():
        lines.append("| " + " | ".join(cell(runs) for _, cell in COLUMNS) + " |")
    return lines


def _seeds(rows: list[RunResult]) -> str:
    seeds = sorted({r.seed for r in rows})
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"{len(seeds)} seeds ({seeds[0]}-{seeds[-1]})"


def _cell(c) -> str:
    if c.outcome == "succeeded":
        return f"**succeeded**: {c.why}"
    if c.outcome in ("blocked", "availability"):
        return f"{c.outcome}: {c.why}"
    return c.outcome


def _matrix(cells) -> list[str]:
    proposals = list(dict.fromkeys(c.proposal for c in cells))
    attacks = list(dict.fromkeys(c.attack for c in cells))
    by = {(c.attack, c.proposal): c for c in cells}
    lines = ["| attack | " + " | ".join(f"`{p}`" for p in proposals) + " |"]
    lines.append("|---|" + "---|" * len(proposals))
    for attack in attacks:
        row = [_cell(by[attack, p]) for p in proposals]
        lines.append(f"| `{attack}` | " + " | ".join(row) + " |")
    return lines


def render(
    scenarios: list[Scenario],
    results: list[RunResult],
    charts: list[Path],
    matrices: dict[str, list] | None = None,
    sensitivity: list[str] | None = None,
) -> str:
    out = [
        "# pkvm-sim: vGIC ITS migration proposals compared",
        "",
        "Written by `pkvm-sim compare`. Every figure below comes from simulated runs of the",
        "named scenario and seeds under the named proposal, with the cost model listed at the",
        "end (defaults unless the scenario overrides them). Over several seeds a cell quotes",
        "the median and, in brackets, the least and greatest seed's value (`median [min-max]`;",
        "a single value: every seed gave the same). Each table names its host: the",
        "proposal tables run an honest host (`honest`); every host behaviour, and a",
        "scenario's own host as its file composes it, is a row of the attack matrix below it.",
        "",
        "## Proposals",
        "",
    ]
    out += [f"- `{name}`: {cls.summary}" for name, cls in PROPOSALS.items()]
    out += ["", "EL2 lines each proposal adds (every figure an estimate, with its source):", ""]
    out += [f"- `{name}`: {cls.el2_lines_note(CostModel())}" for name, cls in PROPOSALS.items()]
    out += [
        "",
        "## Reading the columns",
        "",
        "- *peak secret B exposed*: guest bytes labelled secret on pages the host's stage-2",
        "  could read at one time; *secret B x ms* integrates that over the run. A byte on",
        "  both machines at once (between import and teardown) counts once; pages the guest",
        "  had shared go back to the host unpoisoned at teardown and stay exposed.",
        "- *peak secret B DMA-reachable*, *DMA secret B x ms*: the same for secret bytes a DMA",
        "  master the host drives (the physical ITS) could read or write: what its IOMMU",
        "  domain grants, every guest page if it has no IOMMU, host memory only if EL2",
        "  mediates the host's ITS commands (`lowvisor.mediate_physical_its`).",
        "- *ITS downtime*: pause to ITS restored, including guest page states re-shared on the",
        "  destination; *ITS share* is its fraction of the whole downtime.",
        "- *driver* and *proposal* columns: each hypercall, page share and stage-2 TLB",
        "  invalidation is booked where EL2 handles it to the guest's ITS driver sharing its",
        "  own tables (as mainline Linux does on a protected guest) or to what the proposal",
        "  adds (an enlightened guest's ITT shares, EL2's snooped shares, host claims, IOMMU",
        "  maps); pages count on either machine. *IOTLB invalidations* are the ITS's IOMMU",
        "  domain's, all the proposal's. *EL2 us* is EL2's time for those hypercalls, page",
        "  state changes and any command parsing, over the whole run.",
        "- *ITT memory overhead*: guest memory the ITT allocator holds beyond what ITTs need.",
        "- *ITS command errors*: commands KVM failed while running the queue (by error, e.g.",
        "  `-EFAULT` when KVM's access to guest memory faults; KVM skips them silently, the",
        "  guest never learns) and SAVE/RESTORE errors, on either machine.",
        "- *ITS correct (translations kept)*: no command failed, SAVE/RESTORE reported no",
        "  error, and every (DeviceID, EventID) the guest mapped translates to the same",
        "  (INTID, vCPU) on the destination (in brackets: how many of them did).",
        "",
    ]
    for scenario in scenarios:
        rows = [r for r in results if r.scenario == scenario.name]
        out += [
            f"## Scenario `{scenario.name}` ({_seeds(rows)})",
            "",
            f"> {scenario.question}",
            "",
        ]
        overrides = rows[0].cost_overrides if rows else {}
        model = describe_costs(overrides).removeprefix("sim/costs.py ")
        out += [
            f"Scenario `{scenario.name}`, {_seeds(rows)}, cost model: {model}"
            " (`sim/costs.py`, sources at the end). " + _host_line(rows),
            "",
        ]
        out += _table(rows)
        for r in (r for r in rows if not r.correctness.its_correct):
            c = r.correctness
            out += ["", f"`{r.proposal}` broke the ITS (seed {r.seed}, host: `{r.host}`):"]
            out += [f"- {line}" for line in c.its_errors + c.command_failures + c.mismatches]
        if matrices and matrices.get(scenario.name):
            cells = matrices[scenario.name]
            own = scenario_row(scenario)
            row = "one behaviour with its default parameters"
            if own:
                row += f", or the scenario's own host (`{describe_behaviours(own)}`)"
            out += [
                "",
                f"Seed {scenario.seed} only: host behaviours against each protected proposal,"
                " each compared with the",
                "proposal's run under an honest host (`trusted-host` has no protection to",
                "attack; `pkvm-sim audit` shows the violations and their chains). Exposing the",
                f"same secrets for longer counts: byte x ms (stage-2 or DMA) more than"
                f" {DURATION_TOLERANCE:.0%} above the honest run's is a success. Row: the",
                f"host in that run, {row}:",
                "",
            ]
            out += _matrix(cells)
        out.append("")
    out += ["## Charts", ""]
    out += [f"![{path.stem}]({path.name})" for path in charts]
    out += ["", *(sensitivity or [])]
    out += [
        "",
        "## Cost model",
        "",
        "| parameter | default | unit | source | why |",
        "|---|---|---|---|---|",
    ]
    for row in CostModel.table():
        cells = [f"`{row['name']}`", f"{row['default']:g}", row["unit"], row["source"], row["why"]]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)
