"""The report's real-versus-model section: each cell is the two runs' figures."""

from __future__ import annotations

from pathlib import Path

from sim.report.realguest import FIGURES, render_realguest, twins
from sim.run import run
from sim.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def test_section_sets_each_captured_figure_beside_the_models():
    replay = load_scenario(SCENARIOS / "real-guest-7.3.yaml")
    small = load_scenario(SCENARIOS / "small-vm.yaml")
    proposals = ["share-host-claims", "iommu-gated-its"]
    replay = replay.model_copy(update={"proposals": proposals})
    (twin,) = twins([small, replay])
    assert twin.guest.its_driver == "linux" and twin.guest.kernel == "7.3"
    assert twin.devices == replay.devices and twin.workload == replay.workload
    real = [run(replay, p) for p in proposals]
    model = [run(twin, p) for p in proposals]
    text = render_realguest([small, replay], real, model)
    assert text.startswith("## Real and modelled guests")
    assert "### `real-guest-7-3`: Linux 7.3.4 against the 7.3 model" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(proposals)
    for row, a, b in zip(rows, real, model, strict=True):
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
        assert cells[0] == f"`{a.proposal}`"
        for (name, get, fmt), cell in zip(FIGURES, cells[1:], strict=False):
            assert cell == f"{fmt.format(get(a))} / {fmt.format(get(b))}", name
    assert render_realguest([small], [], []) == ""
