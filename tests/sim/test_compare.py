"""`pkvm-sim compare` and `run`: the report, the charts, the JSON, and the committed example."""

import json
from pathlib import Path

from sim.cli import main
from sim.proposals import PROPOSALS

ROOT = Path(__file__).resolve().parents[2]


def without_build(path: Path) -> str:
    """results.json with its provenance's version and git commit blanked."""
    data = json.loads(path.read_text())
    data["provenance"].update(version=None, git_commit=None)
    return json.dumps(data, indent=2, sort_keys=True)


def test_compare_writes_report_charts_and_json_matching_the_committed_example(tmp_path, capsys):
    assert main(["compare", "--out", str(tmp_path)]) == 0
    out = tmp_path / "bundled"
    committed = ROOT / "reports" / "bundled"
    report = (out / "report.md").read_text()
    document = json.loads((out / "results.json").read_text())
    results = document["results"]
    names = {r["scenario"] for r in results}
    # Every scenario over 8 seeds, its own and the 7 after it.
    assert len(names) >= 4 and len(results) == len(PROPOSALS) * 8 * len(names)
    for name in names:
        seeds = sorted({r["seed"] for r in results if r["scenario"] == name})
        assert len(seeds) == 8 and seeds == list(range(seeds[0], seeds[0] + 8))
    for name in names:
        assert f"## Scenario `{name}`" in report
    charts = (
        "exposure.png",
        "costs.png",
        "cpu.png",
        "matrix.png",
        "timeline.png",
        "memory-map.png",
        "own-part.png",
        "tornado.png",
    )
    for chart in charts:
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({chart})" in report
    assert "DEFAULT_MIGRATE_SET_DOWNTIME" in report  # cost sources are in the report
    assert "(8 seeds (" in report and "median [min-max]" in report
    assert "| hypercalls: driver | hypercalls: proposal |" in report
    # The sensitivity section: the key pair per scenario and a verdict per conclusion.
    assert "## Sensitivity: do the conclusions survive the cost estimates?" in report
    assert "conclusions hold across the whole range" in report
    assert "| `big-itts` | -0.2" in report  # serialization beats sharing there at defaults
    matrix = json.loads((out / "matrix.json").read_text())
    replaced = {"hibernate-resume", "kexec"}  # the guest's kernel replaced: no matrix
    assert set(matrix) == names - replaced
    for name in replaced:
        assert f"## Kernel replacement: `{name}`" in report
    assert "## Live update: `live-update`" in report
    assert (out / "liveupdate-live-update.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](liveupdate-live-update.png)" in report
    # protected x attacks, plus the scenario's own host as one row where it composes one
    composed = {"malicious-host", "dma-attack"}
    protected = sum(cls.protected for cls in PROPOSALS.values())
    assert {n: len(c) for n, c in matrix.items()} == {
        n: protected * (11 + (n in composed)) for n in names - replaced
    }
    assert {r["host"] for r in results} == {"honest"}
    assert "| `its-dma(at_ms=2)` |" in report
    assert (out / "matrix.json").read_text() == (committed / "matrix.json").read_text()
    assert "| `forge-queued-mapd` |" in report
    # The example under reports/ is what this command produces, byte for byte but for
    # the version and commit that produced it.
    assert without_build(out / "results.json") == without_build(committed / "results.json")
    assert report == (committed / "report.md").read_text()
    summary = (out / "summary.txt").read_text()
    assert summary == (committed / "summary.txt").read_text()
    assert max(len(line) for line in summary.splitlines()) <= 72


def test_run_prints_a_table_per_proposal_and_writes_json(tmp_path, capsys):
    path = tmp_path / "r.json"
    argv = ["run", str(ROOT / "scenarios" / "small-vm.yaml"), "--proposal", "trusted-host"]
    assert main([*argv, "--proposal", "iommu-gated-its", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("small-vm (8 seeds 1-8: median [min-max]):") == 2
    assert "translations kept" in out
    data = json.loads(path.read_text())["results"]
    assert [r["proposal"] for r in data] == ["trusted-host"] * 8 + ["iommu-gated-its"] * 8
    assert data[0]["costs"]["el2_loc"] == 0 and data[8]["costs"]["el2_loc"] > 0
