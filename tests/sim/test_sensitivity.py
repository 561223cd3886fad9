"""Cost ranges, the sensitivity design, conclusions and `pkvm-sim sensitivity`."""

import json
import math
from pathlib import Path

import pytest

from sim.cli import main
from sim.costs import CostModel
from sim.matrix import with_attack
from sim.scenario import load_scenario
from sim.sensitivity import KEY_PAIR, design, key_pair_gap, run_design

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def test_every_simulated_estimate_has_a_cited_range_around_its_default():
    ranges = CostModel.ranges()
    for row in CostModel.table():
        simulated = not row["name"].startswith("el2_loc_")  # line counts enter no run
        if "estimate" in row["source"] and simulated:
            assert row["name"] in ranges, row["name"]
    for r in ranges.values():
        assert 0 < r.low <= r.default <= r.high and r.low < r.high, r
        assert len(r.source) > 30, r.name  # a reason, not a bare number
    assert "downtime_budget_ms" not in ranges  # QEMU's constant, not an estimate


def test_design_moves_one_estimate_at_a_time_then_all_in_a_latin_hypercube():
    ranges = CostModel.ranges()
    points = design(ranges, joint=10, seed=3)
    assert points[0].kind == "default" and points[0].costs == {}
    oat = [p for p in points if p.kind in ("low", "high")]
    assert len(oat) == 2 * len(ranges)
    for p in oat:
        assert p.costs == {p.param: getattr(ranges[p.param], p.kind)}
    joint = [p for p in points if p.kind == "joint"]
    assert len(joint) == 10
    for name, r in ranges.items():
        values = [p.costs[name] for p in joint]
        assert all(r.low <= v <= r.high for v in values)
        # Latin: one point in each tenth of the (log) range.
        strata = sorted(int(10 * math.log(v / r.low) / math.log(r.high / r.low)) for v in values)
        assert strata == list(range(10)), name
    assert design(ranges, joint=10, seed=3) == points  # seeded
    assert design(ranges, joint=10, seed=4)[-1] != points[-1]
    with pytest.raises(ValueError, match="not an estimated cost"):
        design(ranges, params=["downtime_budget_ms"])


@pytest.fixture(scope="module")
def small_vm():
    scenario = with_attack(load_scenario(SCENARIOS / "small-vm.yaml"), None)
    points = design(joint=3, seed=0, params=["network_gbps", "ioctl_us", "iommu_map_us"])
    return run_design([scenario], points)


def test_costs_enter_as_time_so_each_point_is_resimulated(small_vm):
    by = {p.label: p.index for p in small_vm.points}
    base = small_vm.results("small-vm", 0)
    dear = small_vm.results("small-vm", by["ioctl_us=10 (high)"])
    for proposal, r in base.items():  # every proposal saves and restores through ioctls
        assert dear[proposal].costs.its_downtime_ms > r.costs.its_downtime_ms
        assert dear[proposal].cost_overrides == {"ioctl_us": 10.0}
    # An IOMMU map costs only the proposal that has an IOMMU.
    iommu = small_vm.results("small-vm", by["iommu_map_us=5 (high)"])
    assert (
        iommu["iommu-gated-its"].costs.its_downtime_ms
        > base["iommu-gated-its"].costs.its_downtime_ms
    )
    assert iommu["trusted-host"].costs.its_downtime_ms == base["trusted-host"].costs.its_downtime_ms


def test_a_conclusion_that_a_slow_link_reverses_is_reported_as_not_holding(small_vm):
    verdicts = {v.conclusion.text: v for v in small_vm.verdicts}
    # At 10 Gb/s a normal VM's dirtied table pages cost less than serializing; at QEMU's
    # 1 Gb/s cap the 408-byte blob wins.
    text = "`trusted-host` has less ITS downtime than `userspace-serialization`"
    slow = next(p.index for p in small_vm.points if p.label == "network_gbps=1 (low)")
    assert text in verdicts and not verdicts[text].holds
    assert (slow, 1) in verdicts[text].failed
    # The key pair keeps its sign at every point in this scenario.
    gaps = [key_pair_gap(runs) for runs in small_vm.runs.values()]
    assert all(g < 0 for g in gaps)
    kept = f"`{KEY_PAIR[0]}` has less ITS downtime than `{KEY_PAIR[1]}`"
    assert verdicts[kept].holds and verdicts[kept].evaluated == len(small_vm.points)
    swings = small_vm.swing("small-vm", lambda runs: runs["trusted-host"].costs.its_downtime_ms)
    assert {s[0] for s in swings} == {"network_gbps", "ioctl_us", "iommu_map_us"}
    assert swings[-1][0] == "iommu_map_us" and swings[-1][1] == swings[-1][2]  # no effect


def test_sensitivity_command_writes_report_json_and_tornado(tmp_path, capsys):
    argv = ["sensitivity", str(SCENARIOS / "small-vm.yaml"), "--out", str(tmp_path)]
    assert main([*argv, "--samples", "2", "--param", "network_gbps", "--param", "tlbi_us"]) == 0
    out = tmp_path / "small-vm"
    report = (out / "sensitivity.md").read_text()
    assert "conclusions hold across the whole range" in report
    assert "`trusted-host` has less ITS downtime than `userspace-serialization`" in report
    document = json.loads((out / "sensitivity.json").read_text())
    assert document["provenance"]["tool"] == "pkvm-sim"
    data = document["sensitivity"]
    assert len(data["points"]) == 1 + 2 * 2 + 2
    assert any(not c["holds_across_range"] for c in data["conclusions"])
    assert (out / "tornado-small-vm.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "conclusions hold across 7 cost points" in printed


def test_sensitivity_rejects_an_unknown_estimate_and_writes_nothing(tmp_path, capsys):
    argv = ["sensitivity", str(SCENARIOS / "small-vm.yaml"), "--out", str(tmp_path)]
    assert main([*argv, "--param", "downtime_budget_ms"]) == 2
    err = capsys.readouterr().err
    assert "downtime_budget_ms" in err and "tlbi_us" in err
    assert not any(tmp_path.iterdir())
