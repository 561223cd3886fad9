"""The chart of a sweep against one varied field: each metric per proposal, the mean of
the runs behind each point and their spread (least to greatest run).

A numeric field is drawn on a number line, a line per proposal through its means (set
a sliver of the closest values' gap apart, so proposals with equal values stay visible); any
other field (strings, booleans, a mix) as categories in the order --vary gave them, each
proposal's marker dodged sideways and no line between categories, which have no order.
The caption says what each point averages over, counted from the rows.
"""

from __future__ import annotations

import itertools
import textwrap
from dataclasses import dataclass
from typing import Any

import matplotlib as mpl
from matplotlib.figure import Figure

from sim.report.charts import STYLE, proposal_colour

DODGE = 0.6  # of a category's width, shared by the proposals' markers
NUMERIC_DODGE = 0.08  # of the gap between the two closest values, on a number line


@dataclass(frozen=True)
class Point:
    """One proposal at one value of the field: the mean and range of the runs there."""

    proposal: str
    value: Any
    runs: int
    mean: float
    low: float
    high: float


def is_numeric(values: list[Any]) -> bool:
    """Numbers (not booleans) go on a number line; anything else is a category."""
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def field_values(rows: list[dict[str, Any]], field: str) -> list[Any]:
    """The field's values: sorted if numeric, else in the order of the rows (--vary's)."""
    values = list(dict.fromkeys(r[field] for r in rows))
    return sorted(values) if is_numeric(values) else values


def proposals_of(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["proposal"] for r in rows))


def points(rows: list[dict[str, Any]], field: str, metric: str) -> list[Point]:
    """Per proposal and value of ``field``: mean, least and greatest ``metric`` of the
    rows there (every seed and every value of the other varied fields)."""
    out = []
    for proposal in proposals_of(rows):
        for value in field_values(rows, field):
            vals = [
                float(r[metric]) for r in rows if r["proposal"] == proposal and r[field] == value
            ]
            if vals:
                out.append(
                    Point(proposal, value, len(vals), sum(vals) / len(vals), min(vals), max(vals))
                )
    return out


def _values(values: list[Any]) -> str:
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if ints and len(values) > 2 and values == list(range(values[0], values[0] + len(values))):
        return f"{values[0]}..{values[-1]}"
    return ", ".join(str(v) for v in values)


def averages_over(rows: list[dict[str, Any]], fields: list[str], field: str) -> str:
    """What each point of the chart against ``field`` averages over, in words, counted
    from the rows: how many runs, which seeds, which values of the other varied fields."""
    groups: dict[tuple[str, Any], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["proposal"], r[field]), []).append(r)
    sizes = sorted({len(g) for g in groups.values()})
    seeds = sorted({r["seed"] for r in rows})
    others = [f for f in fields if f != field]
    if sizes == [1]:
        return f"each point: one run (seed {seeds[0]}); no spread to show"
    runs = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]} to {sizes[-1]}"
    parts = [f"{len(seeds)} seeds ({_values(seeds)})" if len(seeds) > 1 else f"seed {seeds[0]}"]
    product = len(seeds)
    for f in others:
        values = list(dict.fromkeys(r[f] for r in rows))
        product *= len(values)
        parts.append(
            f"{len(values)} values of {f} ({_values(values)})"
            if len(values) > 1
            else f"{f}={values[0]}"
        )
    # A full cross product multiplies out; anything else is said as a list, not a product.
    over = " x ".join(parts) if sizes == [product] else "; ".join(parts)
    return f"each point: mean of {runs} runs: {over}; bars: least to greatest of those runs"


def figure(
    rows: list[dict[str, Any]],
    fields: list[str],
    field: str,
    metrics: list[tuple[str, str, bool]],
) -> Figure:
    """The chart of every ``(metric, label, log)`` against ``field``, one panel each."""
    values = field_values(rows, field)
    numeric = is_numeric(values)
    proposals = proposals_of(rows)
    n = len(proposals)
    gaps = [b - a for a, b in itertools.pairwise(values)] if numeric else []
    gap = min(gaps, default=1)
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(8, 2.0 * len(metrics) + 1.6), layout="constrained")
        axes = fig.subplots(len(metrics), 1, squeeze=False, sharex=True)[:, 0]
        for ax, (metric, label, log) in zip(axes, metrics, strict=True):
            pts = points(rows, field, metric)
            for j, proposal in enumerate(proposals):
                mine = [p for p in pts if p.proposal == proposal]
                offset = (j - (n - 1) / 2) / max(n, 1)
                if numeric:  # set apart by a sliver of the closest two values' gap
                    xs = [p.value + offset * NUMERIC_DODGE * gap for p in mine]
                else:
                    xs = [values.index(p.value) + offset * DODGE for p in mine]
                ys = [p.mean for p in mine]
                # max(0, ...): the float mean of equal values can pass them by an ulp.
                yerr = [
                    [max(0.0, p.mean - p.low) for p in mine],
                    [max(0.0, p.high - p.mean) for p in mine],
                ]
                ax.errorbar(
                    xs,
                    ys,
                    yerr=yerr,
                    marker="o",
                    ms=4,
                    ls="-" if numeric else "none",
                    lw=1,
                    capsize=2,
                    elinewidth=0.8,
                    color=proposal_colour(proposal),
                    label=proposal,
                )
            ax.set_ylabel(f"{label} (log scale)" if log else label, fontsize=8)
            if log:
                # Logarithmic above 1, linear below, so a zero stays on the axis.
                ax.set_yscale("symlog", linthresh=1)
                ax.set_ylim(bottom=0)
        if numeric:
            axes[-1].set_xlabel(f"{field} (proposals set slightly apart so equal values show)")
        else:
            for ax in axes:
                for i in range(len(values) - 1):
                    ax.axvline(i + 0.5, color="0.85", lw=0.8)
                ax.grid(False, axis="x")
            axes[-1].set_xticks(range(len(values)), [str(v) for v in values])
            axes[-1].set_xlim(-0.5, len(values) - 0.5)
            axes[-1].set_xlabel(f"{field} (categories, in the order --vary gave them)")
        caption = textwrap.fill(averages_over(rows, fields, field), 120)
        fig.suptitle(f"{rows[0]['scenario']}: metrics against {field}\n{caption}", fontsize=9)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=7)
    return fig
