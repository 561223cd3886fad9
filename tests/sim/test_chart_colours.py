"""One colour per proposal in every chart, none of them an actor's colour, and an actor's
colour the same in the timeline and the CPU chart."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure

from sim.matrix import honest_job
from sim.report import charts
from sim.report.charts import ACTORS, actor_colour, proposal_colour
from sim.run import run
from sim.scenario import ALL_PROPOSALS, load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
APART = 25.0  # CIELAB units (CIE76): told apart at a glance, on screen and in print


def lab(colour: str) -> np.ndarray:
    """sRGB (D65) to CIELAB."""
    rgb = np.array(to_rgb(colour))
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = m @ linear / np.array([0.95047, 1.0, 1.08883])
    d = 6 / 29
    f = np.where(xyz > d**3, np.cbrt(xyz), xyz / (3 * d**2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def distance(a: str, b: str) -> float:
    return float(np.linalg.norm(lab(a) - lab(b)))


def test_every_registered_proposal_has_a_colour_of_its_own():
    colours = {p: proposal_colour(p) for p in ALL_PROPOSALS}
    close = [
        (a, b, round(distance(colours[a], colours[b])))
        for a, b in itertools.combinations(ALL_PROPOSALS, 2)
        if distance(colours[a], colours[b]) < APART
    ]
    assert not close


def test_no_actor_colour_is_near_a_proposal_colour():
    actors = [*ACTORS, "another.actor"]
    close = [
        (actor, proposal, round(distance(actor_colour(actor), proposal_colour(proposal))))
        for actor in actors
        for proposal in ALL_PROPOSALS
        if distance(actor_colour(actor), proposal_colour(proposal)) < APART
    ]
    assert not close


@pytest.fixture
def drawn(monkeypatch) -> list[Figure]:
    figures: list[Figure] = []
    save = charts._save

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(charts, "_save", keep)
    return figures


def test_a_proposal_keeps_its_colour_whatever_else_a_chart_shows(tmp_path, drawn):
    scenario = load_scenario(SCENARIOS / "small-vm.yaml")
    late = ALL_PROPOSALS[-1]
    alone = [run(scenario, late)]
    both = [run(scenario, "trusted-host"), *alone]
    panels = [("ITS downtime (ms)", lambda r: r.costs.its_downtime_ms, False)]
    charts.bar_chart(alone, tmp_path / "a.png", "alone", panels)
    charts.bar_chart(both, tmp_path / "b.png", "both", panels)
    colour = {}
    for fig in drawn:
        for container in fig.axes[0].containers:
            if container.get_label() == late:
                colour[fig.get_suptitle().split()[0]] = to_hex(container.patches[0].get_facecolor())
    assert colour == {"alone": to_hex(proposal_colour(late)), "both": to_hex(proposal_colour(late))}


def test_an_actor_has_one_colour_in_the_timeline_and_the_cpu_chart(tmp_path, drawn):
    scenario = load_scenario(SCENARIOS / "small-vm.yaml")
    proposal = "share-host-claims"
    base, world = honest_job(scenario, proposal, chart=True)
    charts.timeline_chart({proposal: world}, tmp_path / "timeline.png")
    charts.cpu_chart([base.result], tmp_path / "cpu.png", scenario.name)
    timeline, cpu = drawn
    legend = {
        t.get_text().removesuffix(" busy"): to_hex(h.get_facecolor())
        for t, h in zip(
            timeline.legends[0].get_texts(), timeline.legends[0].legend_handles, strict=True
        )
        if t.get_text().endswith(" busy")
    }
    bars = {
        c.get_label(): to_hex(c.patches[0].get_facecolor())
        for c in cpu.axes[0].containers
        if c.get_label() in ACTORS
    }
    assert set(legend) == set(bars) == set(ACTORS)
    assert legend == bars == {a: to_hex(actor_colour(a)) for a in ACTORS}
