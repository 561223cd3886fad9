"""Every chart of the report, in one style, readable in print and on screen.

Figures are built with matplotlib's object API (no pyplot state, no display needed).
Each chart's caption names the scenario(s) and seed(s) its figures come from.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from sim.cells import by_cell, spread
from sim.report.words import plural
from sim.run import RunResult
from sim.scenario import describe_behaviours

STYLE = {
    "figure.dpi": 110,
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
# One colour per proposal across every chart (proposal_colour): Okabe-Ito's colour-blind
# safe set without its yellow (too faint on white), then Tol's wine, indigo and olive.
COLOURS = [
    "#000000",
    "#E69F00",
    "#56B4E9",
    "#009E73",
    "#0072B2",
    "#D55E00",
    "#CC79A7",
    "#882255",
    "#332288",
    "#999933",
]
# Actors (host, lowvisor per machine) in greys and browns, never a proposal's colour
# (tests/sim/test_chart_colours.py: at least 25 CIELAB units from each): hosts grey,
# lowvisors brown, the source darker than the destination (actor_colour).
ACTOR_COLOURS = ["#4D4D4D", "#6B3E26", "#B3B3B3", "#C49A6C", "#7F7F7F", "#8C6D46"]
ACTORS = ["src.host", "src.lowvisor", "dst.host", "dst.lowvisor"]
LABEL_COLOURS = {
    "secret": "#D55E00",
    "kernel-data": "#BBBBBB",
    "its-itt": "#0072B2",
    "its-device-table": "#009E73",
    "its-device-table-l2": "#66C2A5",
    "its-collection-table": "#1B7837",
    "its-cmdq": "#56B4E9",
    "lpi-prop-table": "#F0E442",
    "lpi-pend-table": "#BFA600",
}
HEAP_KINDS = {"secret", "kernel-data", "its-itt"}
STACK_ORDER = [
    "its-itt",
    "kernel-data",
    "secret",
    *[k for k in LABEL_COLOURS if k not in ("its-itt", "kernel-data", "secret")],
    "free",
]
OUTCOMES = ["blocked", "availability", "succeeded"]  # sim.matrix.Cell.outcome's words
OUTCOME_COLOURS = {"blocked": "#E8F3E8", "availability": "#F0E442", "succeeded": "#D55E00"}
# Migration phases in pastel tones, apart from both the proposal and the actor colours.
PHASE_COLOURS = {
    "save": "#8DD3C7",
    "transfer": "#BEBADA",
    "import guest pages": "#FDB462",
    "restore": "#80B1D3",
}


def proposal_colour(proposal: str) -> str:
    """The proposal's colour in every chart: by its place among the registered proposals
    (a plugin's after the built-ins; past len(COLOURS) proposals the colours repeat)."""
    from sim.scenario import ALL_PROPOSALS

    names = list(ALL_PROPOSALS)
    index = names.index(proposal) if proposal in names else len(names)
    return COLOURS[index % len(COLOURS)]


def actor_colour(actor: str) -> str:
    """The actor's colour in every chart (the timeline's lanes, the CPU bars); an actor
    other than the four of ACTORS gets the fifth colour."""
    index = ACTORS.index(actor) if actor in ACTORS else len(ACTORS)
    return ACTOR_COLOURS[index % len(ACTOR_COLOURS)]


def _hosts(results: list[RunResult]) -> str:
    """The hosts of these runs, named as the result tables name them."""
    return ", ".join(sorted({r.host for r in results}))


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, metadata={"Software": None})
    return path


def _grouped(results: list[RunResult]) -> tuple[list[str], list[str]]:
    scenarios = list(dict.fromkeys(r.scenario for r in results))
    proposals = list(dict.fromkeys(r.proposal for r in results))
    return scenarios, proposals


def _bars(
    ax,
    values: dict,
    scenarios: list[str],
    proposals: list[str],
    log: bool,
    spreads: dict | None = None,
) -> None:
    """Bars at ``values``; with ``spreads`` ((scenario, proposal) -> Spread), error bars
    from the least to the greatest seed's value around the median."""
    width = 0.8 / len(proposals)
    for i, proposal in enumerate(proposals):
        xs = [s + (i - (len(proposals) - 1) / 2) * width for s in range(len(scenarios))]
        ys = [values.get((sc, proposal)) for sc in scenarios]
        yerr = None
        if spreads:
            sp = [spreads.get((sc, proposal)) for sc in scenarios]
            yerr = [
                [(y or 0) - (p.low if p else 0) for y, p in zip(ys, sp, strict=True)],
                [(p.high if p else 0) - (y or 0) for y, p in zip(ys, sp, strict=True)],
            ]
        ax.bar(
            xs,
            [y or 0 for y in ys],
            width,
            label=proposal,
            color=proposal_colour(proposal),
            yerr=yerr,
            error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "0.35"},
        )
        for x, y in zip(xs, ys, strict=True):
            if y == 0:  # an empty bar and a missing run must not look alike
                ax.annotate("0", (x, 0), ha="center", va="bottom", fontsize=5, color="0.4")
    ax.set_xticks(range(len(scenarios)), scenarios, rotation=20, ha="right")
    if log:
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(bottom=0)


def bar_chart(
    results: list[RunResult],
    path: Path,
    title: str,
    panels: list[tuple[str, Callable[[RunResult], float], bool]],
    extra: dict[str, dict] | None = None,
) -> Path:
    """Bars per proposal, grouped by scenario; one panel per metric. Over several seeds a
    bar is the median, its error bar the least to the greatest seed's value."""
    scenarios, proposals = _grouped(results)
    groups = by_cell(results)
    seeds = _seed_caption(results)
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(9, 2.3 * len(panels) + 1.6), layout="constrained")
        axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
        for ax, (label, metric, log) in zip(axes, panels, strict=True):
            spreads = None
            values = (extra or {}).get(label)
            if values is None:
                spreads = {key: spread(rows, metric) for key, rows in groups.items()}
                values = {key: sp.median for key, sp in spreads.items()}
            _bars(ax, values, scenarios, proposals, log, spreads)
            ax.set_ylabel(label)
        caption = textwrap.fill(f"{seeds}; cost model: {_cost_models(results)}", 150)
        fig.suptitle(f"{title}\n{caption}", fontsize=8)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=7)
        return _save(fig, path)


def _cost_models(results: list[RunResult]) -> str:
    """The cost model each scenario ran with, in words (one phrase if all agree)."""
    from sim.provenance import describe_costs

    by = {r.scenario: describe_costs(r.cost_overrides) for r in results}
    if len(set(by.values())) == 1:
        return next(iter(by.values()))
    return "; ".join(f"{name}: {model}" for name, model in by.items())


def _seed_caption(results: list[RunResult]) -> str:
    """Which seeds the figures come from, and what a bar means over several."""
    per: dict[str, list[int]] = {}
    for r in results:
        seeds = per.setdefault(r.scenario, [])
        if r.seed not in seeds:
            seeds.append(r.seed)
    if all(len(v) == 1 for v in per.values()):
        return "scenario seeds: " + ", ".join(f"{n} {v[0]}" for n, v in per.items())
    counts = sorted({len(v) for v in per.values()})
    n = "/".join(map(str, counts))
    return (
        f"bars: median over {n} seeds per scenario (its own seed and those after it),"
        " error bars: least to greatest seed"
    )


def matrix_chart(matrices: dict[str, list], path: Path, focus: str) -> Path:
    """Heat maps: in how many scenarios each attack succeeded, and one scenario in full."""
    scenarios = list(matrices)
    # The rows every scenario ran: each behaviour with its default parameters (a
    # scenario's own composed host is a row of its table in report.md only).
    common = set.intersection(*({c.attack for c in cs} for cs in matrices.values()))
    cells = [c for cs in matrices.values() for c in cs if c.attack in common]
    attacks = list(dict.fromkeys(c.attack for c in cells))
    proposals = list(dict.fromkeys(c.proposal for c in cells))
    wins = np.zeros((len(attacks), len(proposals)))
    for c in cells:
        wins[attacks.index(c.attack), proposals.index(c.proposal)] += c.outcome == "succeeded"
    outcome = np.zeros((len(attacks), len(proposals)))
    for c in (c for c in matrices[focus] if c.attack in common):
        outcome[attacks.index(c.attack), proposals.index(c.proposal)] = OUTCOMES.index(c.outcome)
    with mpl.rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(11, 5.2), layout="constrained")
        left, right = fig.subplots(1, 2)
        left.imshow(wins, cmap="Reds", vmin=0, vmax=len(scenarios), aspect="auto")
        for (i, j), v in np.ndenumerate(wins):
            left.text(
                j,
                i,
                f"{int(v)}/{len(scenarios)}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v > len(scenarios) / 2 else "black",
            )
        left.set_title(
            f"attack succeeded in k of the {plural(len(scenarios), 'scenario')} compared"
        )
        cmap = ListedColormap([OUTCOME_COLOURS[o] for o in OUTCOMES])
        right.imshow(outcome, cmap=cmap, vmin=0, vmax=2, aspect="auto")
        right.set_title(f"scenario {focus}: outcome per cell")
        for (i, j), v in np.ndenumerate(outcome):
            right.text(j, i, OUTCOMES[int(v)], ha="center", va="center", fontsize=6)
        for ax in (left, right):
            ax.set_xticks(range(len(proposals)), proposals, rotation=25, ha="right", fontsize=7)
            ax.set_yticks(range(len(attacks)), attacks, fontsize=7)
        fig.suptitle(
            "Host behaviours (default parameters) against the protected proposals,"
            " each compared with the proposal's run under an honest host"
        )
        return _save(fig, path)


def timeline_chart(worlds: dict, path: Path) -> Path:
    """What each actor did from the pause to the ITS being restored, per proposal, on one
    time axis shared by every panel; phases named in the legend, not on the bars."""
    lanes = ["migration", "src.host", "src.lowvisor", "dst.host", "dst.lowvisor"]
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(10, 1.3 * len(worlds) + 1.4), layout="constrained")
        axes = fig.subplots(len(worlds), 1, squeeze=False, sharex=True)[:, 0]
        for ax, (proposal, world) in zip(axes, worlds.items(), strict=True):
            phases = [s for s in world.trace if s.lane == "migration"]
            start = phases[0].start
            end = phases[-1].end
            bars: dict[tuple[int, str], list[tuple[float, float]]] = {}  # one call each
            for row, lane in enumerate(lanes):
                for s in world.trace:
                    if s.lane != lane or s.end < start or s.start > end:
                        continue
                    colour = (
                        PHASE_COLOURS.get(s.what, "#DDDDDD")
                        if lane == "migration"
                        else actor_colour(lane)
                    )
                    span = (s.start - start, max(s.end - s.start, 0.05))
                    bars.setdefault((row, colour), []).append(span)
            for (row, colour), spans in bars.items():
                ax.broken_barh(spans, (row - 0.35, 0.7), color=colour)
            ax.set_yticks(range(len(lanes)), lanes, fontsize=6)
            ax.set_ylim(len(lanes) - 0.5, -0.5)
            ax.set_title(
                f"{proposal}: ITS part of the downtime, {end - start:.1f} us",
                fontsize=8,
                loc="left",
            )
        axes[-1].set_xlabel("microseconds since the vCPUs were paused (same axis in every panel)")
        axes[-1].set_xlim(left=0)
        legend = [Patch(color=c, label=f"phase: {k}") for k, c in PHASE_COLOURS.items()]
        legend += [Patch(color=actor_colour(lane), label=f"{lane} busy") for lane in lanes[1:]]
        fig.legend(handles=legend, loc="outside lower center", ncols=4, fontsize=7)
        world = next(iter(worlds.values()))
        fig.suptitle(
            f"Migration timeline, scenario {world.scenario.name} (seed {world.scenario.seed}),"
            f" host: {describe_behaviours(world.scenario.host.behaviours)}"
        )
        return _save(fig, path)


def memory_map_chart(worlds: dict, path: Path) -> Path:
    """The guest's pages at the pause: what each holds; outlined if the host can reach it."""
    with mpl.rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(10, 0.75 * len(worlds) + 1.6), layout="constrained")
        axes = fig.subplots(len(worlds), 1, squeeze=False)[:, 0]
        drawn: set[str] = set()
        for ax, (proposal, world) in zip(axes, worlds.items(), strict=True):
            # Whole ITS tables would drown the picture: show ITT and kernel-heap pages.
            pages = [p for p in world.memory_map if set(p.labels) & HEAP_KINDS]
            for x, page in enumerate(pages):
                y = 0.0  # stacked by what the page holds, ITTs at the bottom
                for kind in sorted(page.labels, key=STACK_ORDER.index):
                    height = page.labels[kind] / 4096
                    colour = LABEL_COLOURS.get(kind, "#FFFFFF")
                    ax.add_patch(mpl.patches.Rectangle((x, y), 0.85, height, facecolor=colour))
                    y += height
                if page.host_can_reach:
                    ax.add_patch(mpl.patches.Rectangle((x, 1.08), 0.85, 0.3, facecolor="black"))
            reachable = sum(p.host_can_reach for p in pages)
            secret = sum(1 for p in pages if p.host_can_reach and "secret" in p.labels)
            ax.set_xlim(0, max(len(pages), 1))
            ax.set_ylim(0, 1.45)
            ax.set_yticks([])
            step = max(1, len(pages) // 8)
            ticks = list(range(0, len(pages), step))
            ax.set_xticks(
                [x + 0.425 for x in ticks],
                [f"{pages[x].pfn << 12:#x}" for x in ticks] if ax is axes[-1] else [],
                fontsize=6,
            )
            drawn.update(k for p in pages for k in p.labels)
            ax.set_ylabel(proposal, rotation=0, ha="right", va="center", fontsize=7)
            ax.set_title(
                f"{reachable} of these {len(pages)} pages host-reachable (black bar),"
                f" {secret} of them holding a secret",
                fontsize=7,
                loc="left",
            )
        world = next(iter(worlds.values()))
        axes[-1].set_xlabel(
            "guest physical address of the page (pages in address order, gaps skipped)"
        )
        legend = [Patch(color=c, label=k) for k, c in LABEL_COLOURS.items() if k in drawn]
        legend.append(Patch(facecolor="black", label="host can reach (bar above)"))
        fig.legend(handles=legend, loc="outside lower center", ncols=5, fontsize=6)
        title = (
            "Pages holding ITTs or kernel heap at the pause"
            f" (t = {world.scenario.migration.at_ms:g} ms; the tables' peak may fall at"
            " another instant), bars: bytes of each kind on"
            f" the page; scenario {world.scenario.name} (seed {world.scenario.seed}),"
            f" host: {describe_behaviours(world.scenario.host.behaviours)}"
        )
        fig.suptitle(textwrap.fill(title, 130), fontsize=9)
        return _save(fig, path)


def cpu_chart(results: list[RunResult], path: Path, focus: str) -> Path:
    """CPU time per actor and proposal, stacked, for one scenario (each actor's median
    over the seeds run)."""
    groups = {k: v for k, v in by_cell(results).items() if k[0] == focus}
    rows = [r for runs in groups.values() for r in runs]
    actors = sorted({a for r in rows for a in r.costs.cpu_us})
    proposals = [proposal for _, proposal in groups]
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(8, 4), layout="constrained")
        ax = fig.subplots()
        bottom = np.zeros(len(groups))
        for actor in actors:
            ms = np.array(
                [
                    spread(runs, lambda r, a=actor: r.costs.cpu_us.get(a, 0.0) / 1000).median
                    for runs in groups.values()
                ]
            )
            ax.bar(range(len(groups)), ms, bottom=bottom, label=actor, color=actor_colour(actor))
            bottom += ms
        ax.set_xticks(range(len(groups)), proposals, rotation=20, ha="right")
        ax.set_ylabel("CPU time (ms)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        seeds = sorted({r.seed for r in rows})
        which = f"seed {seeds[0]}" if len(seeds) == 1 else f"median of {len(seeds)} seeds"
        fig.suptitle(
            f"CPU per actor over the whole run, scenario {focus} ({which}), host: {_hosts(rows)}"
        )
        return _save(fig, path)


def exposure_chart(results: list[RunResult], path: Path, matrices: dict[str, list]) -> Path:
    """What the host could read or reach, and what the worst attack of each matrix row
    read, exposed or corrupted."""
    worst: dict[tuple, int] = {}
    corrupted: dict[tuple, int] = {}
    for name, cells in matrices.items():
        for c in cells:
            key = (name, c.proposal)
            won = c.outcome == "succeeded"
            worst[key] = max(worst.get(key, 0), c.bytes if won else 0)
            corrupted[key] = max(corrupted.get(key, 0), c.corrupted if won else 0)
    return bar_chart(
        results,
        path,
        f"Secret bytes the host could read, or reach by DMA (host: {_hosts(results)});"
        " what the worst attack (matrix row) read, exposed or corrupted",
        [
            ("peak secret B (log scale)", lambda r: r.exposure.peak_exposed_bytes, True),
            ("secret B x ms (log scale)", lambda r: r.exposure.exposed_byte_ms, True),
            (
                "peak DMA-reachable B (log scale)",
                lambda r: r.exposure.dma_reachable_peak_bytes,
                True,
            ),
            ("worst attack: B gained (log scale)", lambda r: 0, True),
            ("worst attack: B corrupted (log scale)", lambda r: 0, True),
        ],
        extra={
            "worst attack: B gained (log scale)": worst,
            "worst attack: B corrupted (log scale)": corrupted,
        },
    )


def costs_chart(results: list[RunResult], path: Path) -> Path:
    return bar_chart(
        results,
        path,
        f"What each proposal costs (host: {_hosts(results)})",
        [
            ("ITS downtime (ms)", lambda r: r.costs.its_downtime_ms, False),
            ("CPU, all actors (ms)", lambda r: sum(r.costs.cpu_us.values()) / 1000, False),
        ],
    )


def own_part_chart(results: list[RunResult], path: Path) -> Path:
    return bar_chart(
        results,
        path,
        "What each proposal adds beyond the guest ITS driver's own sharing"
        f" (host: {_hosts(results)}); last panel: the driver's own, for scale",
        [
            ("hypercalls the proposal adds", lambda r: r.costs.hypercalls_by_proposal, False),
            ("pages the proposal shares", lambda r: r.costs.pages_shared_by_proposal, False),
            (
                "stage-2 TLBIs the proposal adds",
                lambda r: r.costs.tlb_invalidations_by_proposal,
                False,
            ),
            ("IOTLB invalidations", lambda r: r.costs.iotlb_invalidations, False),
            ("EL2 time the proposal adds (us)", lambda r: r.costs.proposal_el2_us, False),
            (
                "hypercalls of the driver itself",
                lambda r: r.costs.hypercalls - r.costs.hypercalls_by_proposal,
                False,
            ),
        ],
    )


def write_charts(
    results: list[RunResult],
    out: Path,
    matrices: dict[str, list],
    worlds: dict,
    workers: int | None = 1,
) -> list[Path]:
    """compare's charts, each a job on ``workers`` processes (sim.parallel; None: every
    core), in this order."""
    from sim.parallel import Job, run_jobs

    focus = next(iter(worlds.values())).scenario.name
    jobs = [
        Job(exposure_chart, (results, out / "exposure.png", matrices), 3),
        Job(costs_chart, (results, out / "costs.png"), 2),
        Job(own_part_chart, (results, out / "own-part.png"), 3),
        Job(cpu_chart, (results, out / "cpu.png", focus)),
        Job(matrix_chart, (matrices, out / "matrix.png", focus)),
        Job(timeline_chart, (worlds, out / "timeline.png")),
        Job(memory_map_chart, (worlds, out / "memory-map.png")),
    ]
    return run_jobs(jobs, workers)
