"""`pkvm-sim compare`: every scenario under every proposal and host behaviour.

Writes ``<out>/<name>/``: ``report.md`` (renders on a code-hosting site, charts beside
it), ``summary.txt`` (72 columns, for a mail reply), ``results.json``, ``matrix.json`` and
the charts. ``--format text`` also prints the summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sim.commands.common import BUNDLED, bundled_scenarios, dump, load_all, run_all

FOCUS = "kzalloc-dense-secrets"  # the scenario the timeline and memory map show, if run


def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="run scenarios under every proposal and attack; write the report and charts",
        epilog="examples:\n  pkvm-sim compare                  # every bundled scenario\n"
        "  pkvm-sim compare scenarios/cloud-vm.yaml --name cloud --format text",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenarios", nargs="*", help="scenario files (default: every bundled one)")
    p.add_argument("--out", default="reports", help="output directory (default: reports)")
    p.add_argument(
        "--name",
        help="report name, the subdirectory of --out (default: 'bundled' for the bundled"
        " scenarios, else the first scenario's name)",
    )
    p.add_argument(
        "--format",
        choices=("markdown", "text"),
        default="markdown",
        help="'text' also prints the 72-column summary (default: markdown)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="runs at once, each in a worker process (default: every core; 1: in this"
        " process); the output is the same for any N",
    )
    p.set_defaults(func=main, check=check)


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs: expected at least 1, got {args.jobs}")


def main(args: argparse.Namespace) -> int:
    from sim.commands.console import progress
    from sim.matrix import compare_set, scenario_row, with_attack
    from sim.proposals import PROPOSALS
    from sim.report.charts import write_charts
    from sim.report.markdown import render
    from sim.report.text import render_text
    from sim.scenario import ATTACKS

    paths = args.scenarios or bundled_scenarios()
    if not paths:
        print(f"pkvm-sim: no scenario given and none bundled in {BUNDLED}", file=sys.stderr)
        return 2
    scenarios = load_all(paths)
    name = args.name or ("bundled" if not args.scenarios else scenarios[0].name)
    # The proposal tables and charts: every scenario with an honest host. A scenario's own
    # host, if it is not honest, is a row of its attack matrix, composed as the file says.
    honest = [with_attack(s, None) for s in scenarios]
    protected = {s.name: [p for p in s.proposals if PROPOSALS[p].protected] for s in scenarios}
    rows = {s.name: [*ATTACKS, *filter(None, [scenario_row(s)])] for s in scenarios}
    total = sum(len(s.proposals) + len(protected[s.name]) * len(rows[s.name]) for s in scenarios)
    focus = next((s for s in honest if s.name == FOCUS), honest[0])
    with progress(total, "simulating") as advance:
        results, matrices, worlds = compare_set(scenarios, rows, focus.name, args.jobs, advance)
    out = Path(args.out) / name
    out.mkdir(parents=True, exist_ok=True)
    charts = write_charts(results, out, matrices, worlds)
    (out / "results.json").write_text(dump(results) + "\n")
    cells = {n: [c.model_dump(mode="json") for c in cs] for n, cs in matrices.items()}
    (out / "matrix.json").write_text(json.dumps(cells, indent=2, sort_keys=True) + "\n")
    from sim.report.realguest import render_realguest, twins  # replay scenarios' twins

    realguest = render_realguest(honest, results, run_all(twins(honest)))
    (out / "report.md").write_text(render(scenarios, results, charts, matrices) + realguest)
    summary = render_text(scenarios, results, matrices)
    (out / "summary.txt").write_text(summary + "\n")
    if args.format == "text":
        print(summary)
    print(
        f"compared {len(scenarios)} scenarios: {len(results)} runs with an honest host and"
        f" {sum(len(c) for c in matrices.values())} attack runs"
    )
    print(
        f"wrote {out / 'report.md'}, summary.txt, results.json, matrix.json, {len(charts)} charts"
    )
    return 0
