"""`pkvm-sim bench --quick`: runs and writes perf.md with every section; no timing asserted."""

from __future__ import annotations

import re

import pytest

from sim.bench import growth_exponent, scaling_scenario
from sim.cli import main


def number(text: str, pattern: str) -> float:
    m = re.search(pattern, text)
    assert m, pattern
    return float(m.group(1).replace(",", ""))


def test_bench_quick_writes_perf_md_with_every_section(tmp_path, capsys):
    out = tmp_path / "perf"
    assert main(["bench", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cost per event" in printed
    perf = (out / "perf.md").read_text()
    for section in (
        "## Simulated events against bare SimPy",
        "## ITS save and restore",
        "## Full migration by mapped ITEs",
        "### Sizes that cannot be reached",
        "## Reproduce",
    ):
        assert section in perf
    assert number(perf, r"\| bare SimPy, same event pattern \| ([\d,]+) \|") > 0
    assert (
        number(perf, r"\| pkvm-sim, `small-vm`, every proposal \| [\d,]+ \| [\d.]+ \| ([\d,.]+) \|")
        > 0
    )
    assert number(perf, r"relative to bare SimPy: \*\*([\d.]+)x\*\*") > 0
    for size in ("300", "3,000"):
        row = re.search(rf"^\| {size} ITEs \| (.*) \|$", perf, re.M)
        assert row, size
        cells = row.group(1).split(" | ")
        assert cells[-1] == "yes"  # restored = source
        assert all(float(c.replace(",", "")) > 0 for c in cells[:-1])
    assert re.search(r"SAVE_TABLES k = -?[\d.]+, RESTORE_TABLES k = -?[\d.]+", perf)
    for size in ("200", "1,000"):
        row = re.search(rf"^\| {size} \| (.*) \|$", perf, re.M)
        assert row, size
        cells = [float(c) for c in row.group(1).split(" | ")]
        assert len(cells) == 2 + 2 and all(c > 0 for c in cells)  # 2 proposals, all, MiB
    assert re.search(r"all proposals, 200 to 1,000 ITEs: k = -?[\d.]+", perf)
    assert "pkvm-sim bench --quick --out" in perf
    assert "57,344" in perf and "1M" in perf


def test_growth_exponent_fits_a_power_law():
    assert growth_exponent([1e3, 1e4, 1e5], [2.0, 20.0, 200.0]) == pytest.approx(1.0)
    assert growth_exponent([10.0, 20.0], [1.0, 4.0]) == pytest.approx(2.0)
    assert growth_exponent([10.0], [1.0]) is None


def test_scaling_scenario_maps_exactly_the_ites_asked_for():
    scenario = scaling_scenario(5000)
    assert sum(d.vectors for d in scenario.devices) == 5000
    assert max(d.vectors for d in scenario.devices) == 2048
    with pytest.raises(ValueError, match="57344"):
        scaling_scenario(100_000)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [("1000,100000", "expected 1..57344 ITEs"), ("a,b", "comma-separated integers")],
)
def test_bad_sizes_exit_2(capsys, sizes, message):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--sizes", sizes])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
