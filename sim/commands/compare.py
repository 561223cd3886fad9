"""`pkvm-sim compare`: every scenario under every proposal; the report, charts and JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sim.commands.common import BUNDLED, bundled_scenarios, dump, load_all, run_all


def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="run scenarios under every proposal; write the report, charts and JSON",
        epilog="example:\n  pkvm-sim compare                  # every bundled scenario\n"
        "  pkvm-sim compare scenarios/cloud-vm.yaml --out /tmp/report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenarios", nargs="*", help="scenario files (default: every bundled one)")
    p.add_argument("--out", default="reports", help="output directory (default: reports)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from sim.matrix import attack_matrix
    from sim.proposals import PROPOSALS
    from sim.report.charts import write_charts
    from sim.report.markdown import render
    from sim.scenario import ATTACKS

    paths = args.scenarios or bundled_scenarios()
    if not paths:
        print(f"pkvm-sim: no scenario given and none bundled in {BUNDLED}", file=sys.stderr)
        return 2
    scenarios = load_all(paths)
    results = run_all(scenarios)
    matrices = {
        s.name: attack_matrix(s, [p for p in s.proposals if PROPOSALS[p].protected], ATTACKS)[0]
        for s in scenarios
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    charts = write_charts(results, out)
    (out / "results.json").write_text(dump(results) + "\n")
    cells = {name: [c.model_dump(mode="json") for c in cs] for name, cs in matrices.items()}
    (out / "matrix.json").write_text(json.dumps(cells, indent=2, sort_keys=True) + "\n")
    (out / "report.md").write_text(render(scenarios, results, charts, matrices))
    print(f"compared {len(scenarios)} scenarios x their proposals: {len(results)} runs")
    print(f"wrote {out / 'report.md'}, {out / 'results.json'} and {len(charts)} charts")
    return 0
