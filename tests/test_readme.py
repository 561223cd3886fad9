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


def test_readme_benchmark_figures_are_those_of_the_committed_perf_md():
    readme = " ".join(README.read_text().split())
    perf = (README.parent / "reports" / "perf.md").read_text()
    quoted = re.search(
        r"a simulated event costs ([\d.]+)x a bare-SimPy event, and a 1M-ITE migration under"
        r" the first six proposals takes ([\d.]+) s on both cores, under all (\d+)"
        r" ([\d.]+) s \(([\d.]+) s one after another\),"
        r" at most (\d+) MiB per run; wall time grows as ITEs\^([\d.]+) from 10k to 1M\."
        r" The bundled `compare` takes ([\d.]+) s on one core and ([\d.]+) s on two"
        r" \(([\d.]+)x\), the same bytes either way; one `cloud-vm` run costs ([\d.]+) ms",
        readme,
    )
    assert quoted, "the README's benchmark sentence changed shape"
    ratio, six, n, both, one_by_one, mib, k, one_core, two, speedup, run_ms = quoted.groups()
    assert f"relative to bare SimPy: **{ratio}x**" in perf
    assert f"Measured at 1,000,000 ITEs: the first six {six} s on 2 cores" in perf
    assert f"; {n} proposals {both} s on 2 cores ({one_by_one} s one after another)" in perf
    assert f"| {one_core} | {two} | **{speedup}x** |" in perf
    assert f"the mean over its {n} proposals: **{run_ms} ms**" in perf
    assert re.search(rf"\| 1,000,000 \|.*\| {mib} \|$", perf, re.M)
    assert f"sum of all proposals, 10,000 to 1,000,000 ITEs: k = {k}" in perf
