"""Provenance in every JSON output, the real cost model in captions and tables, and the
72-column summary for a mail reply."""

from __future__ import annotations

import json
import subprocess

from sim.cli import main
from sim.provenance import describe_costs, git_commit, version
from tests.cli.conftest import ROOT


def _head() -> str | None:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def test_results_json_carries_version_commit_cost_model_and_scenario(tiny, tmp_path, capsys):
    argv = ["compare", str(tiny), "--out", str(tmp_path), "--set", "costs.tlbi_us=2.5"]
    assert main(argv) == 0
    data = json.loads((tmp_path / "tiny" / "results.json").read_text())
    prov = data["provenance"]
    assert prov["tool"] == "pkvm-sim" and prov["version"] == version() != "unknown"
    assert prov["git_commit"] == _head() == git_commit()
    assert prov["overrides"] == ["costs.tlbi_us=2.5"]
    (scenario,) = prov["scenarios"]
    assert scenario["name"] == "tiny" and scenario["devices"][1]["vectors"] == 2
    model = prov["cost_model"]["tiny"]
    assert model["tlbi_us"] == 2.5 and model["guest_hvc_us"] == 1.0  # resolved, every field
    assert scenario["costs"] == model
    assert all(r["cost_overrides"] == {"tlbi_us": 2.5} for r in data["results"])


def test_report_summary_and_captions_name_the_cost_model_used(tiny, tmp_path, capsys):
    from sim.report.charts import _cost_models
    from sim.run import RunResult

    argv = ["compare", str(tiny), "--out", str(tmp_path), "--set", "costs.tlbi_us=2.5"]
    assert main(argv) == 0
    out = tmp_path / "tiny"
    words = "tlbi_us = 2.5 us (default 1)"
    assert f"cost model: defaults except {words}" in (out / "report.md").read_text()
    summary = (out / "summary.txt").read_text()
    assert f"  cost model: defaults except {words}" in summary
    results = [
        RunResult.model_validate(r)
        for r in json.loads((out / "results.json").read_text())["results"]
    ]
    assert _cost_models(results) == f"sim/costs.py defaults except {words}"
    assert describe_costs({}) == "sim/costs.py defaults"


def test_summary_has_one_legend_readable_overrides_and_right_plurals(tiny, tmp_path, capsys):
    argv = ["compare", str(tiny), "--seeds", "1", "--cost-samples", "0", "--out", str(tmp_path)]
    argv += ["--set", "guest.vcpus=4"]
    assert main(argv) == 0
    summary = (tmp_path / "tiny" / "summary.txt").read_text()
    lines = summary.splitlines()
    assert lines[1] == "(1 scenario, simulated; costs: sim/costs.py defaults unless noted)"
    assert "overrides: guest.vcpus=4" in lines
    legend = [line for line in lines if line.startswith("columns:")]
    assert len(legend) == 1
    start = lines.index(legend[0])
    header = next(line for line in lines if line.strip().startswith("proposal "))
    # Every column of the table has its line in the legend, before the first table.
    for column in ("secret B", "DMA B", "ITS ms", "hcalls", "shared", "err", "ok"):
        assert column in header
        assert any(line[9:].startswith(column + " ") for line in lines[start : start + 7])
    assert lines.index(header) > start + 7
    assert "{" not in summary  # no Python dict repr of overrides
    assert max(len(line) for line in lines) <= 72
    assert "compared 1 scenario: 2 runs with an honest host (1 seed each) and 11 attack runs" in (
        capsys.readouterr().out
    )


def test_counted_nouns():
    from sim.report.words import plural

    assert plural(1, "unverified share") == "1 unverified share"
    assert plural(4, "unverified share") == "4 unverified shares"
    assert plural(1_000, "run") == "1,000 runs"
