"""The README's example runs as printed."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs_as_printed(capsys):
    text = README.read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "E_ITS_MAPTI_UNMAPPED_DEVICE",
        "(8200, 1)",
        "0300200800000080",
        "0100082000000000",
    ]


def test_readme_opens_with_two_commands():
    lines = README.read_text().splitlines()
    fence = lines.index("```sh")
    commands = lines[fence + 1 : lines.index("```", fence + 1)]
    assert len(commands) == 2
    assert commands[0].endswith("pkvm-sim compare")
    assert commands[1].endswith("python -m pytest")
    assert "python -m pytest" in (README.parent / ".ci" / "run").read_text()


def _quoted(pattern: str, sentence: str) -> tuple[tuple[str, ...], str]:
    """The groups of ``pattern`` in the README (its line breaks folded into spaces), and
    the committed perf.md they must be taken from."""
    readme = " ".join(README.read_text().split())
    quoted = re.search(pattern, readme)
    assert quoted, f"the README's {sentence} sentence changed shape"
    return quoted.groups(), (README.parent / "reports/perf.md").read_text()


def test_readme_benchmark_figures_are_those_of_the_committed_perf_md():
    quoted, perf = _quoted(
        r"a simulated event costs ([\d.]+)x a bare-SimPy event, and a 1M-ITE migration under"
        r" the first six proposals takes ([\d.]+) s on both cores, under all (\d+)"
        r" ([\d.]+) s \(([\d.]+) s one after another\),"
        r" at most (\d+) MiB per run; wall time grows as ITEs\^([\d.]+) from 10k to 1M\."
        r" The bundled `compare` takes ([\d.]+) s on one core and ([\d.]+) s on two"
        r" \(([\d.]+)x\), the same bytes either way; one `cloud-vm` run costs ([\d.]+) ms",
        "benchmark",
    )
    ratio, six, n, both, one_by_one, mib, k, one_core, two, speedup, run_ms = quoted
    assert f"relative to bare SimPy: **{ratio}x**" in perf
    assert f"Measured at 1,000,000 ITEs: the first six {six} s on 2 cores" in perf
    assert f"; {n} proposals {both} s on 2 cores ({one_by_one} s one after another)" in perf
    assert f"| {one_core} | {two} | **{speedup}x** |" in perf
    assert f"the mean over its {n} proposals: **{run_ms} ms**" in perf
    assert re.search(rf"\| 1,000,000 \|.*\| {mib} \|$", perf, re.M)
    assert f"sum of all proposals, 10,000 to 1,000,000 ITEs: k = {k}" in perf


def test_readme_per_event_figures_are_those_of_the_committed_perf_md():
    quoted, perf = _quoted(
        r"[Tt]he MSI workloads schedule (\d+)% of a `cloud-vm` run's events at ([\d.]+) us of"
        r" their own each, the guest's ([\d,]+) events cost ([\d.]+) us each and the"
        r" migration's ([\d,]+) ([\d.]+) us",
        "per-event",
    )
    share, msi_us, guest_n, guest_us, mig_n, mig_us = quoted
    rows = {
        m[0]: (float(m[1].replace(",", "")), m[2])
        for m in re.findall(
            r"^\| (build|the [\w']+|SimPy|collect)[^|]* \| [\d.]+ \| \d+% \|"
            r" ([\d,]+) \| ([\d.]*) \|$",
            perf,
            re.M,
        )
    }
    total = sum(n for n, _ in rows.values())
    assert round(100 * rows["the MSI"][0] / total) == int(share)
    assert rows["the MSI"][1] == msi_us
    assert rows["the guest's"][0] == float(guest_n.replace(",", ""))
    assert round(float(rows["the guest's"][1]), 1) == float(guest_us)
    assert rows["the migration"][0] == float(mig_n.replace(",", ""))
    assert round(float(rows["the migration"][1]), 1) == float(mig_us)


def test_readme_instruction_figures_are_those_of_the_committed_perf_md():
    quoted, perf = _quoted(
        r"its rounds read ([\d.]+)x to ([\d.]+)x\), while in instructions, which no load"
        r" moves, it is ([\d.]+)x \(([\d,]+) against ([\d,]+) per event\); a `cloud-vm`"
        r" event misses the level-1 caches ([\d.]+) times for instructions and ([\d.]+) for"
        r" data, a bare-SimPy one ([\d.]+) and ([\d.]+)",
        "instruction",
    )
    low, high, ratio, sim, bare, sim_i1, sim_d1, bare_i1, bare_d1 = quoted
    assert f"the ratio read {low}x to {high}x" in perf
    assert f"In instructions, which no load moves: **{ratio}x**" in perf
    assert f"| instructions | {sim} | {bare} |" in perf
    assert f"| level-1 instruction-cache misses | {sim_i1} | {bare_i1} |" in perf
    assert f"| level-1 data-cache misses | {sim_d1} | {bare_d1} |" in perf


def test_readme_figures_without_the_msis_are_those_of_the_committed_perf_md():
    quoted, perf = _quoted(
        r"without the MSI workloads the rest of the runs alone takes ([\d.]+)x bare SimPy's"
        r" time for all their events, which under 2x would leave each MSI event ([\d.]+)x a"
        r" bare-SimPy one \(it costs ([\d.]+)x\), less than bare SimPy's own",
        "without-MSI",
    )
    rest, room, msi = quoted
    assert f"**{rest}x** bare SimPy's time for all" in perf
    assert f", at {msi}x a bare-SimPy event each." in perf
    assert f"would leave each of those {room}x a bare-SimPy event, less than bare" in perf
