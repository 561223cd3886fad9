"""`pkvm-sim bench --quick`: runs and writes perf.md with every section; no timing asserted."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import simpy

from sim.bench import (
    FIRST_SIX,
    _point,
    _point_context,
    bare_simpy,
    counting_events,
    event_mix,
    growth_exponent,
    run_points,
    scaling_scenario,
    without_msis,
)
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
        # 2 proposals, their sum, the batch's wall on every core, MiB
        assert len(cells) == 2 + 3 and all(c > 0 for c in cells)
        assert cells[2] == pytest.approx(cells[0] + cells[1], abs=0.011)
    assert re.search(r"sum of all proposals, 200 to 1,000 ITEs: k = -?[\d.]+", perf)
    assert "pkvm-sim bench --quick --out" in perf
    assert "`bulk` ITS driver" in perf and "57,344 LPIs" in perf
    assert "Measured at 1,000 ITEs: 2 proposals" in perf
    assert "ITEs: the first six" not in perf  # (measured only when more than those run)
    # The fixed cost of one run, split into parts that add up to it.
    assert "## The fixed cost of one run" in perf
    run_ms = number(perf, r"proposals: \*\*([\d.]+) ms\*\*")
    parts = [
        float(m)
        for m in re.findall(r"^\| (?:build|the|SimPy|collect)[^|]* \| ([\d.]+) \|", perf, re.M)
    ]
    assert len(parts) == 6 and run_ms > 0
    assert sum(parts) == pytest.approx(run_ms, rel=0.02, abs=0.05)
    # The events each part scheduled, per run: together, every event of the runs timed.
    rows = re.findall(
        r"^\| (build|the guest's|the MSI|the migration|SimPy|collect)[^|]* \| [\d.]+ \| \d+% \|"
        r" ([\d,]+) \| ([\d.]*) \|$",
        perf,
        re.M,
    )
    events = {part: float(n.replace(",", "")) for part, n, _ in rows}
    per_event = {part: us for part, _, us in rows}
    assert len(rows) == 6 and events["collect"] == 0
    simulated = number(perf, r"\| pkvm-sim, `small-vm`, every proposal \| ([\d,]+) \|")
    runs = number(perf, r"the mean over its (\d+) proposals")
    assert sum(events.values()) * runs == pytest.approx(simulated, abs=runs * 6 * 0.5)
    assert events["the MSI"] > events["the guest's"] > 0 and events["the migration"] > 0
    assert float(per_event["the guest's"]) > 0 and per_event["SimPy"] == ""
    # compare on one core and on every core: the same bytes.
    row = re.search(
        r"^\| ([\d.]+) \| ([\d.]+) \| \*\*([\d.]+)x\*\* \| ([\d.]+) \| ([\d.]+) \| (\d+)"
        r" \| (\w+) \|$",
        perf,
        re.M,
    )
    assert row and row.group(7) == "yes" and int(row.group(6)) >= 5
    assert float(row.group(4)) > 0 and float(row.group(5)) > 0
    assert "over `small-vm` (1 scenarios)" in perf
    # The ratio round by round, and in instructions (CI has valgrind: .ci/run installs it).
    low = number(perf, r"the ratio read ([\d.]+)x to")
    high = number(perf, r"the ratio read [\d.]+x to ([\d.]+)x")
    best = number(perf, r"relative to bare SimPy: \*\*([\d.]+)x\*\*")
    assert 0 < low <= high and low - 0.05 <= best <= high + 0.05
    # The same runs without their MSIs: fewer events, and what that leaves the MSIs.
    quiet = number(perf, r"Without their MSI workloads .* the same runs schedule ([\d,]+) events")
    rest = number(perf, r"\*\*([\d.]+)x\*\* bare SimPy's time for all")
    added = number(perf, r"The MSI workloads add ([\d,]+) events")
    assert 0 < quiet < simulated and quiet + added == simulated and rest > 0
    assert re.search(
        r"events \(\d+% of them\)(, at [\d.]+x a bare-SimPy event each\. (At most 2x overall"
        r" would leave each of those [\d.]+x|The rest of the runs alone is past 2x)|\. This"
        r" run's noise hides what they cost)",
        perf,
    )
    counted = number(perf, r"In instructions, which no load moves: \*\*([\d.]+)x\*\*")
    sim_ipe = number(perf, r"(?m)^\| instructions \| ([\d,]+) \|")
    bare_ipe = number(perf, r"(?m)^\| instructions \| [\d,]+ \| ([\d,]+) \|")
    assert 1_000 < bare_ipe < sim_ipe  # a model's event does more than a bare timeout's
    assert counted == pytest.approx(sim_ipe / bare_ipe, abs=0.006)
    misses = 0.0
    for what in ("instruction", "data"):
        misses += number(perf, rf"(?m)^\| level-1 {what}-cache misses \| ([\d,.]+) \|")
    assert misses > 0
    # the caches cachegrind modelled, and the miss ratio the sentence says
    assert re.search(r"level-1 caches \(I1 [\d,]+ B \d+-way, D1 [\d,]+ B \d+-way\)", perf)
    missed = number(perf, r"event misses them ([\d.]+)x as often as a bare-SimPy one")
    assert number(perf, r"as often as a bare-SimPy one \(([\d,.]+) against") == pytest.approx(
        misses, abs=0.11
    )
    more = "more than its instructions: the misses take the wall-time ratio past"
    assert (more in perf) == (missed > counted)
    assert number(perf, r"(?m)^\| events counted \| [\d,]+ \| ([\d,]+) \|") > 15_000


def test_counting_events_sorts_every_scheduled_event_by_kind():
    mix = Counter()
    with counting_events(mix):
        env = simpy.Environment()
        cpu = simpy.Resource(env, capacity=1)

        def proc():
            yield env.timeout(1)
            with cpu.request() as req:
                yield req
            done = env.event()
            done.succeed()
            yield done

        env.process(proc())
        env.run()
    # Initialize + the process's end, one timeout, a request and its release, one event
    assert mix == {"process": 2, "timeout": 1, "resource": 2, "event": 1}
    assert simpy.Environment.schedule.__name__ == "schedule"  # unwrapped again


def test_bare_pattern_has_the_runs_mix_of_events():
    from sim.commands.common import BUNDLED
    from sim.scenario import load_scenario

    scenario = load_scenario(BUNDLED / "small-vm.yaml")
    mix = event_mix(scenario, ["trusted-host", "share-cmdq-snoop"])
    assert mix["timeout"] > 10 * mix["event"] > 0 and mix["process"] >= 2 * 2 * 3
    bare = bare_simpy(mix, runs=2, events=50_000)
    counted = Counter()
    with counting_events(counted):
        bare_simpy(mix, runs=2, events=50_000)
    assert bare["processes"] == round(mix["process"] / 2 / 2)
    assert sum(counted.values()) == bare["events"]
    assert abs(bare["events"] - 50_000) < 0.01 * 50_000
    kinds = ("timeout", "event", "resource")  # (process starts and ends: per process)
    for kind in kinds:
        want = mix[kind] / sum(mix[k] for k in kinds)
        got = counted[kind] / sum(counted[k] for k in kinds)
        assert got == pytest.approx(want, abs=0.002), kind


def test_a_scenario_without_msis_keeps_everything_but_the_msi_workloads():
    from sim.commands.common import BUNDLED
    from sim.scenario import load_scenario

    scenario = load_scenario(BUNDLED / "small-vm.yaml")
    quiet = without_msis(scenario)
    assert [d.rate_hz for d in quiet.devices] == [0] * len(scenario.devices)
    assert any(d.rate_hz for d in scenario.devices)  # (the original is untouched)
    assert quiet.model_copy(update={"devices": scenario.devices}) == scenario
    full, by_part = Counter(), Counter()
    event_mix(scenario, ["trusted-host"], by_part=full)
    event_mix(quiet, ["trusted-host"], by_part=by_part)
    # each machine's workload returns at once: its process's end is all it schedules
    assert full["msi"] > 2 and by_part["msi"] == 2
    assert by_part["guest"] == full["guest"] and by_part["migration"] > 0


def test_what_2x_leaves_the_msi_events_is_worked_out_from_the_three_timings():
    from sim.bench import Bench, _without_msis

    def bench(quiet_s: float) -> str:
        b = Bench(
            machine="m",
            bare={"events_per_s": 1e6},  # 1 us a bare event: 0.1 s for the 100k below
            simulated={"events": 100_000, "simulate_wall_s": 0.25},
            simulated_scenario="x",
            its=[],
            quiet={"events": 10_000, "simulate_wall_s": quiet_s},
        )
        return " ".join(_without_msis(b))

    text = bench(0.12)  # the rest 1.2x; 2x leaves 0.08 s for 90k MSI events: 0.89x each
    assert "**1.20x** bare SimPy's time for all 100,000 events" in text
    assert "add 90,000 events (90% of them), at 1.44x a bare-SimPy event each" in text
    assert "leave each of those 0.89x a bare-SimPy event, less than bare SimPy's own" in text
    assert "each of those 1.33x a bare-SimPy event." in bench(0.08)  # (2 - 0.8) / 0.9
    assert "alone is past 2x" in bench(0.21)
    assert "noise hides" in bench(0.26) and "a bare-SimPy event each" not in bench(0.26)
    assert _without_msis(Bench("m", {}, {}, "x", [])) == []  # (not measured: no paragraph)


def test_growth_exponent_fits_a_power_law():
    assert growth_exponent([1e3, 1e4, 1e5], [2.0, 20.0, 200.0]) == pytest.approx(1.0)
    assert growth_exponent([10.0, 20.0], [1.0, 4.0]) == pytest.approx(2.0)
    assert growth_exponent([10.0], [1.0]) is None


def test_scaling_scenario_maps_exactly_the_ites_asked_for():
    scenario = scaling_scenario(5000)
    assert sum(d.vectors for d in scenario.devices) == 5000
    assert max(d.vectors for d in scenario.devices) == 2048
    assert scenario.guest.its_driver == "bulk"
    big = scaling_scenario(1_000_000)
    assert sum(d.vectors for d in big.devices) == 1_000_000
    assert len({d.device_id for d in big.devices}) == len(big.devices) == 489
    assert scaling_scenario(57_344, driver="linux").guest.its_driver == "linux"
    with pytest.raises(ValueError, match="57344 with the linux guest driver"):
        scaling_scenario(57_345, driver="linux")
    with pytest.raises(ValueError, match="4000000"):
        scaling_scenario(4_000_001)


def test_a_run_never_scans_its_live_world_between_simulate_and_collect(monkeypatch):
    import gc

    import sim.run
    from sim.scenario import load_scenario

    scenario = load_scenario("scenarios/small-vm.yaml")
    seen: list[str] = []
    collect = sim.run.collect

    def collected(world):
        result = collect(world)
        seen.append("collected")
        return result

    def passes(phase: str, info: dict) -> None:
        if phase == "start":
            seen.append(f"gen{info['generation']}")

    monkeypatch.setattr(sim.run, "collect", collected)
    gc.callbacks.append(passes)
    try:
        result = sim.run.run(scenario, "trusted-host")
    finally:
        gc.callbacks.remove(passes)
    # resumed between the two, the collector's first pass came before "collected", over
    # the live world; after, the world is garbage and a pass frees it
    assert seen[0] == "collected"
    assert result.correctness.translations_preserved
    assert gc.isenabled()


def test_a_migration_point_forked_from_the_server_is_the_one_measured_here():
    assert _point_context().get_start_method() == "forkserver"  # (Linux: CI's machines)
    here = _point(2000, "bulk", FIRST_SIX[1])
    points, batch = run_points([2000], [FIRST_SIX[1]], "bulk", jobs=1)
    (there,) = points
    for key in ("ites", "events", "translations_ok", "expected_translations"):
        assert there[key] == here[key]
    assert there["translations_ok"] and there["events"] > 0
    assert batch[2000] >= there["wall_s"] > 0
    assert there["peak_rss_mib"] > 10  # a child's own peak: interpreter, imports, world


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sizes", "1000,5000000"], "expected 1..4000000 ITEs (the bulk driver)"),
        (["--driver", "linux", "--sizes", "1000,100000"], "expected 1..57344 ITEs (one LPI"),
        (["--sizes", "a,b"], "comma-separated integers"),
        (["--jobs", "0"], "--jobs: expected at least 1"),
    ],
)
def test_bad_arguments_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_the_cache_model_is_the_one_cachegrind_reports():
    import subprocess
    import sys

    from sim.bench import VALGRIND, cache_model

    model = cache_model()
    done = subprocess.run([*VALGRIND, "-v", sys.executable, "-c", "pass"], capture_output=True)
    for cache in model.split(", "):
        name, size, _b, ways = cache.split(" ")
        assert f"{name}: {size} B, {ways}," in done.stderr.decode()
    assert [c.split(" ")[0] for c in model.split(", ")] == ["I1", "D1"]


def test_an_instruction_count_is_exact_and_a_rounds_count_is_the_difference():
    from sim.bench import counted

    loop = "for _ in range({}): sum(range(50))"
    one, two = counted(loop.format(20_000)), counted(loop.format(40_000))
    nothing = counted("pass")
    again = counted(loop.format(20_000))
    assert again["instructions"] == pytest.approx(one["instructions"], rel=1e-5)  # repeatable
    assert nothing["instructions"] < one["instructions"] < two["instructions"]
    # start-up cancels: 20,000 more iterations cost what the first 20,000 did
    more, first = (
        two["instructions"] - one["instructions"],
        one["instructions"] - nothing["instructions"],
    )
    assert more == pytest.approx(first, rel=0.01)
    # a loop this small runs from the level-1 caches: its misses are start-up's
    assert two["i1_misses"] - one["i1_misses"] < 0.001 * more
    assert nothing["d1_misses"] > 0
    with pytest.raises(RuntimeError, match="valgrind exit 1"):
        counted("raise SystemExit(1)")


def test_bench_without_valgrind_says_why_in_perf_md(monkeypatch):
    from sim.bench import Bench, _instructions
    from sim.commands.bench import _valgrind

    monkeypatch.setattr("shutil.which", lambda _cmd: None)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    why = _valgrind(lambda _msg: pytest.fail("installed as a user"))
    assert why == (
        "missing valgrind: install as root with `apt-get install valgrind`"
        " (the bench installs them itself when run as root)"
    )
    bare = {"events": 10, "wall_s": 1.0, "events_per_s": 10.0}
    simulated = {"events": 5, "simulate_wall_s": 1.0, "events_per_s": 5.0}
    lines = _instructions(Bench("m", bare, simulated, "small-vm", [], instructions_missing=why))
    assert lines == [f"In instructions: not measured ({why}).", ""]
