"""The sensitivity analysis in the report: which conclusions survive the cost ranges,
and a tornado chart of what moves the ITS downtime most."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
from matplotlib.figure import Figure

from sim.costs import CostModel
from sim.report.charts import STYLE, _save, proposal_colour
from sim.sensitivity import KEY_PAIR, Sensitivity, key_pair_gap

MAX_FAILURES_LISTED = 4  # points named per failing conclusion


def _design_line(sens: Sensitivity) -> str:
    oat = sum(p.kind in ("low", "high") for p in sens.points) // 2
    joint = sum(p.kind == "joint" for p in sens.points)
    seeds = sorted({len(v) for v in sens.seeds.values()})
    per_seed = "the scenario's own seed" if seeds == [1] else f"{'/'.join(map(str, seeds))} seeds"
    tornado = [n for n in sens.scenarios if sens.has_tornado(n)]
    where = (
        ""
        if len(tornado) == len(sens.scenarios)
        else f" (in {', '.join(f'`{n}`' for n in tornado)} only)"
    )
    return (
        f"each cost point a full re-simulation at {per_seed}: the defaults,"
        f" {oat} estimates each at its low and its high end, the others at their"
        f" defaults{where}, and {joint} joint points of a Latin hypercube over all"
        f" {len(CostModel.ranges())} estimates (log-uniform in each range)"
    )


def _where(sens: Sensitivity, failed: list[tuple[int, int]]) -> str:
    labels = list(dict.fromkeys(sens.points[i].label for i, _ in failed))
    more = len(labels) - MAX_FAILURES_LISTED
    shown = ", ".join(f"`{label}`" for label in labels[:MAX_FAILURES_LISTED])
    return shown + (f" and {more} more" if more > 0 else "")


def section(sens: Sensitivity, charts: list[Path], heading: str = "##") -> list[str]:
    """Markdown: the design, the key pair per scenario, every conclusion that fails
    somewhere, a count of those that hold everywhere, the ranges and the charts."""
    out = [
        f"{heading} Sensitivity: do the conclusions survive the cost estimates?",
        "",
        "Costs enter the simulation as time (SimPy timeouts), not as post-hoc factors, so",
        f"each cost point is re-simulated. Design: {_design_line(sens)}. A conclusion is",
        "a statement true under the default costs; it *holds across the range* if it is",
        "true at every point.",
        "",
    ]
    a, b = KEY_PAIR
    pair_rows = []
    for name in sens.scenarios:
        base = sens.results(name, 0)
        if a not in base or b not in base:
            continue
        gaps = [key_pair_gap(runs) for (n, _, _), runs in sens.runs.items() if n == name]
        always = all(g < 0 for g in gaps) or all(g > 0 for g in gaps)
        pair_rows.append(
            f"| `{name}` | {key_pair_gap(base):+.3f} | {min(gaps):+.3f} | {max(gaps):+.3f} |"
            f" {'yes' if always else '**no**'} |"
        )
    if pair_rows:
        out += [
            f"ITS downtime of `{a}` minus `{b}` (ms; negative: `{a}` is faster):",
            "",
            "| scenario | defaults | least | greatest | same sign at every point |",
            "|---|---|---|---|---|",
            *pair_rows,
            "",
        ]
    failing = [v for v in sens.verdicts if not v.holds]
    holding = len(sens.verdicts) - len(failing)
    out += [
        f"{holding} of {len(sens.verdicts)} conclusions hold across the whole range."
        + (" Those that do not:" if failing else ""),
        "",
    ]
    if failing:
        out += [
            "| scenario | conclusion (true at the defaults) | false at | where |",
            "|---|---|---|---|",
        ]
        for v in failing:
            c = v.conclusion
            out.append(
                f"| `{c.scenario}` | {c.text} | {len(v.failed)} of {v.evaluated} |"
                f" {_where(sens, v.failed)} |"
            )
        out.append("")
    out += ["Every conclusion that holds everywhere, per scenario:", ""]
    for name in sens.scenarios:
        kept = [
            v.conclusion.text for v in sens.verdicts if v.holds and v.conclusion.scenario == name
        ]
        if kept:
            out.append(f"- `{name}`: " + "; ".join(kept) + ".")
    out += [
        "",
        "Ranges varied (`sim/costs.py`, each with its source in the cost model table):",
        "",
        "| estimate | default | low | high | unit | why this range |",
        "|---|---|---|---|---|---|",
    ]
    for r in CostModel.ranges().values():
        out.append(
            f"| `{r.name}` | {r.default:g} | {r.low:g} | {r.high:g} | {r.unit} | {r.source} |"
        )
    out.append("")
    out += [f"![{path.stem}]({path.name})" for path in charts]
    out.append("")
    return out


def tornado_chart(sens: Sensitivity, scenario: str, path: Path, top: int = 8) -> Path:
    """What moves the ITS downtime most: one panel per proposal and one for the key pair.

    Each bar runs from the ITS downtime with that estimate at its low end to the value at
    its high end (the others at their defaults); the line is the default run.
    """
    base = sens.results(scenario, 0)
    proposals = list(base)
    panels = [
        (p, (lambda runs, p=p: runs[p].costs.its_downtime_ms), proposal_colour(p))
        for p in proposals
    ]
    a, b = KEY_PAIR
    if a in base and b in base:
        panels.append((f"{a} minus {b}", key_pair_gap, "#7F7F7F"))
    xlabels = {len(proposals): "difference in the ITS part of the downtime (ms)"}
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(11, 2.2 * rows + 1.2), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).flatten()
        for i, (ax, (title, value, colour)) in enumerate(zip(axes, panels, strict=False)):
            swings = sens.swing(scenario, value)
            moving = [s for s in swings if s[1] != s[2]][:top]
            still = len(swings) - len([s for s in swings if s[1] != s[2]])
            default = swings[0][3] if swings else value(base)
            for y, (_name, low, high, _) in enumerate(moving):
                left, width = min(low, high), abs(high - low)
                ax.barh(y, width, left=left, color=colour, height=0.6)
                ax.text(
                    low, y, "low", fontsize=5, va="center", ha="right" if low < high else "left"
                )
                ax.text(
                    high, y, "high", fontsize=5, va="center", ha="left" if high > low else "right"
                )
            ax.axvline(default, color="black", linewidth=0.8)
            ax.set_yticks(range(len(moving)), [m[0] for m in moving], fontsize=7)
            ax.set_ylim(len(moving) - 0.5 if moving else 0.5, -0.5)
            ax.set_xlabel(xlabels.get(i, "ITS part of the downtime (ms)"), fontsize=7)
            ax.margins(x=0.1)
            ax.set_title(
                f"{title} ({still} other estimates move it not at all)", fontsize=8, loc="left"
            )
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        seed = sens.seeds[scenario][0]
        fig.suptitle(
            f"What moves the ITS downtime most, scenario {scenario} (seed {seed}, honest host):"
            " each estimate from its low to its high end, the others at their defaults;"
            " line: defaults",
            fontsize=9,
        )
        return _save(fig, path)
