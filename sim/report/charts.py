"""Comparison charts: one style for every chart, readable in print and on screen.

Figures are built with matplotlib's object API (no pyplot state, no display needed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib as mpl
from matplotlib.figure import Figure

from sim.run import RunResult

STYLE = {
    "figure.dpi": 110,
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
# Colour-blind safe (Okabe-Ito), one colour per proposal across every chart.
COLOURS = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7"]


def _grouped(results: list[RunResult]) -> tuple[list[str], list[str]]:
    scenarios = list(dict.fromkeys(r.scenario for r in results))
    proposals = list(dict.fromkeys(r.proposal for r in results))
    return scenarios, proposals


def _bars(ax, results, metric, scenarios, proposals, log: bool) -> None:
    by = {(r.scenario, r.proposal): metric(r) for r in results}
    width = 0.8 / len(proposals)
    for i, proposal in enumerate(proposals):
        xs = [s + (i - (len(proposals) - 1) / 2) * width for s in range(len(scenarios))]
        ys = [by.get((sc, proposal)) for sc in scenarios]
        ax.bar(xs, [y or 0 for y in ys], width, label=proposal, color=COLOURS[i % len(COLOURS)])
        for x, y in zip(xs, ys, strict=True):
            if y == 0:  # an empty bar and a missing run must not look alike
                ax.annotate("0", (x, 0), ha="center", va="bottom", fontsize=6, color="0.4")
    ax.set_xticks(range(len(scenarios)), scenarios, rotation=12, ha="right")
    if log:
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(bottom=0)


def chart(
    results: list[RunResult],
    path: Path,
    title: str,
    panels: list[tuple[str, Callable[[RunResult], float], bool]],
) -> Path:
    """One figure of ``panels`` (label, metric of a result, log scale), bars per proposal."""
    scenarios, proposals = _grouped(results)
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(8, 2.4 * len(panels) + 1.4), layout="constrained")
        axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
        for ax, (label, metric, log) in zip(axes, panels, strict=True):
            _bars(ax, results, metric, scenarios, proposals, log)
            ax.set_ylabel(label)
        fig.suptitle(title)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=7)
        fig.savefig(path, metadata={"Software": None})
    return path


def write_charts(results: list[RunResult], out: Path) -> list[Path]:
    return [
        chart(
            results,
            out / "exposure.png",
            "Secret guest bytes the host could read (honest host)",
            [
                ("peak bytes (symlog)", lambda r: r.exposure.peak_exposed_bytes, True),
                ("bytes x ms (symlog)", lambda r: r.exposure.exposed_byte_ms, True),
            ],
        ),
        chart(
            results,
            out / "downtime.png",
            "ITS part of migration downtime",
            [("ITS downtime (ms)", lambda r: r.costs.its_downtime_ms, False)],
        ),
        chart(
            results,
            out / "sharing.png",
            "Hypercalls and guest pages shared with the host",
            [
                ("hypercalls", lambda r: r.costs.hypercalls, False),
                ("pages shared", lambda r: r.costs.pages_shared, False),
                ("... by the proposal", lambda r: r.costs.pages_shared_by_proposal, False),
            ],
        ),
    ]
