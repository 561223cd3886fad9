"""The data behind the timeline and the memory map, and the list of scenarios."""

import itertools
from pathlib import Path

from sim.cli import main
from sim.run import simulate
from sim.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def test_migration_phases_are_traced_in_order_and_add_up_to_the_its_downtime():
    world = simulate(load_scenario(SCENARIOS / "small-vm.yaml"), "share-cmdq-snoop")
    phases = [s for s in world.trace if s.lane == "migration"]
    assert [s.what for s in phases] == ["save", "transfer", "import guest pages", "restore"]
    for before, after in itertools.pairwise(phases):
        assert before.end == after.start
    assert phases[-1].end - phases[0].start == world.ledger.its_downtime_us
    # CPU spans are recorded only inside the pause, and only for actors that worked.
    assert all(phases[0].start <= s.start for s in world.trace)
    assert {s.lane for s in world.trace} >= {"src.host", "dst.host", "dst.lowvisor"}


def test_memory_map_shows_shared_itt_pages_with_their_neighbours():
    scenario = load_scenario(SCENARIOS / "kzalloc-dense-secrets.yaml")
    shared = simulate(scenario, "share-enlightened-guest").memory_map
    private = simulate(scenario, "userspace-serialization").memory_map
    itt_pages = {p.pfn for p in shared if "its-itt" in p.labels}
    assert itt_pages
    # The enlightened guest shares every page holding an ITT, with the secrets beside it.
    assert all(p.host_can_reach for p in shared if p.pfn in itt_pages)
    assert any("secret" in p.labels for p in shared if p.pfn in itt_pages)
    # Serialization leaves them all private.
    assert not any(p.host_can_reach for p in private if "its-itt" in p.labels)


def test_scenarios_lists_every_bundled_file_with_its_question(capsys):
    assert main(["scenarios"]) == 0
    out = capsys.readouterr().out.splitlines()
    files = sorted(SCENARIOS.glob("*.yaml"))
    assert len(out) == len(files)
    for line, path in zip(out, files, strict=True):
        assert line.split()[0] == path.stem  # the name `run` takes
        assert load_scenario(path).question in line


def test_compare_format_text_prints_the_72_column_summary(tmp_path, capsys):
    path = str(SCENARIOS / "small-vm.yaml")
    assert (
        main(["compare", path, "--out", str(tmp_path), "--format", "text", "--cost-samples", "0"])
        == 0
    )
    out = capsys.readouterr().out
    summary = (tmp_path / "small-vm" / "summary.txt").read_text()
    assert summary.strip() in out
    assert "userspace-serialization falls to: its-dma" in summary
