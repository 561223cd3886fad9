"""`pkvm-sim sensitivity`: every conclusion checked across the plausible cost ranges.

Writes ``<out>/<name>/``: ``sensitivity.md`` (the verdicts, the key pair, the ranges and
a tornado chart per scenario), ``sensitivity.json`` and ``tornado-<scenario>.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sim.commands.common import (
    add_jobs_argument,
    add_json_argument,
    bundled_scenarios,
    check_json,
    load_all,
    nonnegative,
)


def register(sub) -> None:
    p = sub.add_parser(
        "sensitivity",
        help="vary every estimated cost over its plausible range; say which conclusions hold",
        epilog="examples:\n  pkvm-sim sensitivity scenarios/big-itts.yaml\n"
        "  pkvm-sim sensitivity                      # every bundled scenario\n"
        "  pkvm-sim sensitivity scenarios/small-vm.yaml --samples 64 --param tlbi_us"
        " --param ioctl_us",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenarios", nargs="*", help="scenario files (default: every bundled one)")
    p.add_argument(
        "--samples",
        type=nonnegative,
        default=32,
        metavar="N",
        help="joint points of the Latin hypercube over all estimates (default 32; 0: none)",
    )
    p.add_argument(
        "--design-seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the Latin hypercube (default 0)",
    )
    p.add_argument(
        "--seeds",
        type=nonnegative,
        default=1,
        metavar="N",
        help="scenario seeds per cost point, from the scenario's own (default 1)",
    )
    p.add_argument(
        "--param",
        action="append",
        metavar="NAME",
        help="vary only this estimate (repeatable; default: every estimate in sim/costs.py)",
    )
    p.add_argument("--out", default="reports/sensitivity", help="output directory")
    p.add_argument("--name", help="subdirectory of --out (default: 'bundled' or the first name)")
    add_jobs_argument(p)
    add_json_argument(p, "the design, every conclusion and its verdict")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from sim.commands.console import progress
    from sim.costs import CostModel
    from sim.matrix import run_cells_on, with_attack
    from sim.output import check_dir, report_dir, write_json, write_text
    from sim.provenance import provenance
    from sim.report.sensitivity import section, tornado_chart
    from sim.sensitivity import design, run_design, to_json

    ranges = CostModel.ranges()
    unknown = [p for p in args.param or [] if p not in ranges]
    if unknown:
        print(
            f"pkvm-sim: --param {', '.join(unknown)}: not an estimated cost; expected one of"
            f" {', '.join(ranges)}",
            file=sys.stderr,
        )
        return 2
    if args.seeds < 1:
        print("pkvm-sim: --seeds: expected at least 1", file=sys.stderr)
        return 2
    check_json(args)
    paths = args.scenarios or bundled_scenarios()
    scenarios = [with_attack(s, None) for s in load_all(paths)]
    name = args.name or ("bundled" if not args.scenarios else scenarios[0].name)
    out = Path(args.out) / name
    check_dir(out, "--out", "sensitivity.json")
    points = design(ranges, joint=args.samples, seed=args.design_seed, params=args.param)
    total = len(points) * args.seeds * sum(len(s.proposals) for s in scenarios)
    start = time.perf_counter()
    with progress(total, "re-simulating") as advance:
        sens = run_design(
            scenarios, points, seeds=args.seeds, tick=advance, runner=run_cells_on(args.jobs)
        )
    elapsed = time.perf_counter() - start
    document = {"provenance": provenance(scenarios), "sensitivity": to_json(sens)}
    with report_dir(out, "--out") as staging:
        charts = [tornado_chart(sens, s, staging / f"tornado-{s}.png") for s in sens.scenarios]
        lines = [
            "# pkvm-sim: sensitivity of the conclusions to the cost estimates",
            "",
            f"Written by `pkvm-sim sensitivity` ({total} runs). Host: `honest`.",
            "",
            *section(sens, charts),
        ]
        write_text(staging / "sensitivity.md", "\n".join(lines), "--out")
        write_json(staging / "sensitivity.json", document, "--out")
    if args.json:
        write_json(args.json, document)
    failing = [v for v in sens.verdicts if not v.holds]
    print(
        f"{len(sens.verdicts) - len(failing)} of {len(sens.verdicts)} conclusions hold across"
        f" {len(points)} cost points ({total} runs, {elapsed:.0f} s)"
    )
    for v in failing:
        print(
            f"  fails at {len(v.failed)} of {v.evaluated}:"
            f" {v.conclusion.scenario}: {v.conclusion.text}"
        )
    print(f"wrote {out / 'sensitivity.md'}, sensitivity.json, {len(charts)} tornado charts")
    return 0
