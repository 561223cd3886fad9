"""The Markdown report: one table per scenario, the charts, and the cost model's sources."""

from __future__ import annotations

from pathlib import Path

from sim.costs import CostModel
from sim.matrix import DURATION_TOLERANCE, scenario_row
from sim.proposals import PROPOSALS
from sim.provenance import describe_costs
from sim.run import RunResult
from sim.scenario import Scenario, describe_behaviours

COLUMNS = [
    ("proposal", lambda r: f"`{r.proposal}`"),
    ("peak secret B exposed", lambda r: f"{r.exposure.peak_exposed_bytes:,}"),
    ("secret B x ms", lambda r: f"{r.exposure.exposed_byte_ms:,.1f}"),
    ("peak secret B DMA-reachable", lambda r: f"{r.exposure.dma_reachable_peak_bytes:,}"),
    ("DMA secret B x ms", lambda r: f"{r.exposure.dma_reachable_byte_ms:,.1f}"),
    ("ITS downtime ms", lambda r: f"{r.costs.its_downtime_ms:.3f}"),
    ("ITS share", lambda r: f"{r.costs.its_downtime_share:.2%}"),
    ("hypercalls", lambda r: f"{r.costs.hypercalls:,}"),
    (
        "pages shared (by proposal)",
        lambda r: f"{r.costs.pages_shared} ({r.costs.pages_shared_by_proposal})",
    ),
    ("TLBIs", lambda r: f"{r.costs.tlb_invalidations + r.costs.iotlb_invalidations}"),
    ("stream B", lambda r: f"{r.costs.stream_bytes:,}"),
    ("ITT memory overhead B", lambda r: f"{r.costs.guest_memory_overhead_bytes:,}"),
    ("EL2 lines (estimate)", lambda r: f"~{r.costs.el2_loc:.0f}"),
    ("ITS command errors", lambda r: _errors(r)),
    ("ITS correct (translations kept)", lambda r: _kept(r)),
]


def _errors(r: RunResult) -> str:
    c = r.correctness
    found = [f"{e} x{n}" for e, n in c.command_errors.items()] + c.its_errors
    return f"**{', '.join(found)}**" if found else "none"


def _kept(r: RunResult) -> str:
    c = r.correctness
    mark = "yes" if c.its_correct else "**NO**"
    return f"{mark} ({c.ok_after_migration}/{c.expected_translations})"


def _host_line(rows: list[RunResult]) -> str:
    hosts = sorted({r.host for r in rows})
    return f"Host: `{'`, `'.join(hosts)}`."


def _table(rows: list[RunResult]) -> list[str]:
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    for r in rows:
        lines.append("| " + " | ".join(cell(r) for _, cell in COLUMNS) + " |")
    return lines


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
) -> str:
    out = [
        "# pkvm-sim: vGIC ITS migration proposals compared",
        "",
        "Written by `pkvm-sim compare`. Every figure below comes from a simulated run of the",
        "named scenario and seed under the named proposal, with the cost model listed at the",
        "end (defaults unless the scenario overrides them). Each table names its host: the",
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
        "- *pages shared (by proposal)*: guest pages shared with the host on either machine;",
        "  in brackets those the proposal shared beyond what the guest's ITS driver shares.",
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
            f"## Scenario `{scenario.name}` (seed {scenario.seed})",
            "",
            f"> {scenario.question}",
            "",
        ]
        overrides = rows[0].cost_overrides if rows else {}
        model = describe_costs(overrides).removeprefix("sim/costs.py ")
        out += [
            f"Scenario `{scenario.name}`, seed {scenario.seed}, cost model: {model}"
            " (`sim/costs.py`, sources at the end). " + _host_line(rows),
            "",
        ]
        out += _table(rows)
        for r in (r for r in rows if not r.correctness.its_correct):
            c = r.correctness
            out += ["", f"`{r.proposal}` broke the ITS (host: `{r.host}`):"]
            out += [f"- {line}" for line in c.its_errors + c.command_failures + c.mismatches]
        if matrices and matrices.get(scenario.name):
            cells = matrices[scenario.name]
            own = scenario_row(scenario)
            row = "one behaviour with its default parameters"
            if own:
                row += f", or the scenario's own host (`{describe_behaviours(own)}`)"
            out += [
                "",
                "Host behaviours against each protected proposal, each compared with the",
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
