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
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from sim.commands.console import progress
    from sim.matrix import attack_matrix
    from sim.proposals import PROPOSALS
    from sim.report.charts import write_charts
    from sim.report.markdown import render
    from sim.report.text import render_text
    from sim.run import simulate
    from sim.scenario import ATTACKS

    paths = args.scenarios or bundled_scenarios()
    if not paths:
        print(f"pkvm-sim: no scenario given and none bundled in {BUNDLED}", file=sys.stderr)
        return 2
    scenarios = load_all(paths)
    name = args.name or ("bundled" if not args.scenarios else scenarios[0].name)
    results = run_all(scenarios)
    protected = {s.name: [p for p in s.proposals if PROPOSALS[p].protected] for s in scenarios}
    total = sum(len(ps) * (len(ATTACKS) + 1) for ps in protected.values())
    with progress(total, "attacking") as advance:
        matrices = {
            s.name: attack_matrix(s, protected[s.name], ATTACKS, advance)[0] for s in scenarios
        }
    focus = next((s for s in scenarios if s.name == FOCUS), scenarios[0])
    worlds = {p: simulate(focus, p) for p in focus.proposals}
    out = Path(args.out) / name
    out.mkdir(parents=True, exist_ok=True)
    charts = write_charts(results, out, matrices, worlds)
    (out / "results.json").write_text(dump(results) + "\n")
    cells = {n: [c.model_dump(mode="json") for c in cs] for n, cs in matrices.items()}
    (out / "matrix.json").write_text(json.dumps(cells, indent=2, sort_keys=True) + "\n")
    (out / "report.md").write_text(render(scenarios, results, charts, matrices))
    summary = render_text(scenarios, results, matrices)
    (out / "summary.txt").write_text(summary + "\n")
    if args.format == "text":
        print(summary)
    print(
        f"compared {len(scenarios)} scenarios: {len(results)} honest runs and"
        f" {sum(len(c) for c in matrices.values())} attack runs"
    )
    print(
        f"wrote {out / 'report.md'}, summary.txt, results.json, matrix.json, {len(charts)} charts"
    )
    return 0
