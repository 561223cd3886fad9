"""Real and modelled guests side by side: for each replay scenario, every proposal's
exposure and costs for the captured guest and for its modelled twin (the same devices and
workload, the ``linux`` driver and allocator profile of the capture's kernel generation;
:func:`sim.capture.twin.modelled_twin`), so a reader sees how far the model is from a
real boot."""

from __future__ import annotations

from collections.abc import Callable

from sim.run import RunResult
from sim.scenario import Scenario

# (column, value of one result, format)
FIGURES: list[tuple[str, Callable[[RunResult], float], str]] = [
    ("peak secret B exposed", lambda r: r.exposure.peak_exposed_bytes, "{:,.0f}"),
    ("secrets exposed", lambda r: r.exposure.exposed_secrets, "{:,.0f}"),
    ("secret B x ms", lambda r: r.exposure.exposed_byte_ms, "{:,.1f}"),
    ("ITS downtime ms", lambda r: r.costs.its_downtime_ms, "{:.3f}"),
    ("hypercalls", lambda r: r.costs.hypercalls, "{:,.0f}"),
    ("pages shared", lambda r: r.costs.pages_shared, "{:,.0f}"),
    ("ITT memory B", lambda r: r.costs.itt_memory_bytes, "{:,.0f}"),
    ("stream B", lambda r: r.costs.stream_bytes, "{:,.0f}"),
]


def replays(scenarios: list[Scenario]) -> list[Scenario]:
    return [s for s in scenarios if s.guest.its_driver == "replay"]


def twins(scenarios: list[Scenario]) -> list[Scenario]:
    """The modelled twin of every replay scenario among ``scenarios``."""
    from sim.capture.twin import modelled_twin

    return [modelled_twin(s) for s in replays(scenarios)]


def _cell(fmt: str, real: float, model: float) -> str:
    text = f"{fmt.format(real)} / {fmt.format(model)}"
    return text if real == model else f"**{text}**"


def render_realguest(
    scenarios: list[Scenario], results: list[RunResult], twin_results: list[RunResult]
) -> str:
    """The report section ("" without replay scenarios): one table per replay scenario,
    each cell ``captured / modelled``, bold where they differ."""
    from sim.actors.replay import capture_of

    chosen = replays(scenarios)
    if not chosen:
        return ""
    out = [
        "## Real and modelled guests",
        "",
        "Each replay scenario plays a captured Linux guest's ITS commands with the",
        "capture's placement and co-location; its twin runs the same devices and workload",
        "with the `linux` driver model and allocator profile of the capture's kernel",
        "generation (`guest.kernel`, `sim/actors/linux_driver.py`). Cells are",
        "*captured / modelled*, bold where they differ; honest host.",
        "",
    ]
    for scenario in chosen:
        cap = capture_of(scenario)
        twin_name = f"{scenario.name}-model"
        real = {r.proposal: r for r in results if r.scenario == scenario.name}
        model = {r.proposal: r for r in twin_results if r.scenario == twin_name}
        out += [
            f"### `{scenario.name}`: Linux {cap.kernel.release} against the {cap.kernel.generation}"
            f" model (`{scenario.guest.allocator}`)",
            "",
            "| proposal | " + " | ".join(name for name, _, _ in FIGURES) + " | ITS correct |",
            "|---|" + "---|" * (len(FIGURES) + 1),
        ]
        for proposal in scenario.proposals:
            if proposal not in real or proposal not in model:
                continue
            a, b = real[proposal], model[proposal]
            cells = [_cell(fmt, get(a), get(b)) for _, get, fmt in FIGURES]
            ok = (
                f"{'yes' if a.correctness.its_correct else 'NO'}"
                f" / {'yes' if b.correctness.its_correct else 'NO'}"
            )
            out.append(f"| `{proposal}` | " + " | ".join(cells) + f" | {ok} |")
        out.append("")
    return "\n".join(out)
