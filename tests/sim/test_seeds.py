"""Seeds as independent cells, and the spread the tables quote."""

import json
from pathlib import Path

import pytest

from sim.cells import Spread, by_cell, cells, run_cell
from sim.cli import main
from sim.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def test_cells_cover_every_proposal_and_seed_from_the_scenarios_own():
    s = load_scenario(SCENARIOS / "small-vm.yaml")
    todo = cells([s], seeds=3, only=["trusted-host", "iommu-gated-its"])
    assert [(c.proposal, c.seed) for c in todo] == [
        ("trusted-host", 1),
        ("trusted-host", 2),
        ("trusted-host", 3),
        ("iommu-gated-its", 1),
        ("iommu-gated-its", 2),
        ("iommu-gated-its", 3),
    ]
    with pytest.raises(ValueError, match="at least 1"):
        cells([s], seeds=0)


def test_a_cell_is_a_pure_function_of_its_arguments():
    s = load_scenario(SCENARIOS / "kzalloc-dense-secrets.yaml")
    one = run_cell(s, "share-enlightened-guest", 5)
    assert one.seed == 5
    assert run_cell(s, "share-enlightened-guest", 5).model_dump_json() == one.model_dump_json()
    # Other seeds place the kzalloc'd secrets elsewhere: exposure differs across seeds.
    exposed = {
        run_cell(s, "share-enlightened-guest", k).exposure.peak_exposed_bytes for k in (3, 4, 5, 6)
    }
    assert len(exposed) > 1
    dear = run_cell(s, "trusted-host", 3, {"ioctl_us": 10.0})
    assert dear.cost_overrides == {"ioctl_us": 10.0}
    assert dear.costs.its_downtime_ms > run_cell(s, "trusted-host", 3).costs.its_downtime_ms


def test_spread_quotes_the_median_and_the_range():
    sp = Spread.of([3, 1, 2, 10])
    assert (sp.median, sp.low, sp.high, sp.n) == (2.5, 1, 10, 4)
    assert sp.format(lambda v: f"{v:.1f}") == "2.5 [1.0-10.0]"
    assert Spread.of([7, 7]).format(lambda v: f"{v:,.0f}") == "7"  # every seed agreed


def test_run_seeds_prints_the_spread_and_dumps_every_seed(tmp_path, capsys):
    path = tmp_path / "r.json"
    argv = ["run", str(SCENARIOS / "kzalloc-dense-secrets.yaml"), "--proposal", "share-cmdq-snoop"]
    assert main([*argv, "--seeds", "3", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "kzalloc-dense-secrets (3 seeds 3-5: median [min-max]): share-cmdq-snoop" in out
    data = json.loads(path.read_text())["results"]
    assert [r["seed"] for r in data] == [3, 4, 5]


def test_by_cell_groups_seeds_per_scenario_and_proposal_in_seed_order():
    s = load_scenario(SCENARIOS / "small-vm.yaml")
    results = [
        run_cell(s, p, seed) for seed in (2, 1) for p in ("trusted-host", "share-cmdq-snoop")
    ]
    groups = by_cell(results)
    assert list(groups) == [("small-vm", "trusted-host"), ("small-vm", "share-cmdq-snoop")]
    assert [[r.seed for r in rows] for rows in groups.values()] == [[1, 2], [1, 2]]


def test_seeds_must_be_a_positive_whole_number(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", str(SCENARIOS / "small-vm.yaml"), "--seeds", "0"])
    assert exc.value.code == 2
    assert "--seeds" in capsys.readouterr().err
