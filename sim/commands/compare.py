"""`pkvm-sim compare`: every scenario under every proposal and host behaviour.

Writes ``<out>/<name>/``: ``report.md`` (renders on a code-hosting site, charts beside
it), ``summary.txt`` (72 columns, for a mail reply), ``results.json``, ``matrix.json`` and
the charts, built beside ``<out>/<name>`` and swapped in whole (sim/output.py).
``--format text`` prints the summary on stdout, the status lines on stderr.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from sim.cells import DEFAULT_SEEDS
from sim.commands.common import (
    BUNDLED,
    add_jobs_argument,
    add_json_argument,
    add_seeds_argument,
    add_set_argument,
    bundled_scenarios,
    check_json,
    load_all,
    nonnegative,
    results_document,
    unique_names,
)
from sim.report.words import plural

FOCUS = "kzalloc-dense-secrets"  # the scenario the timeline and memory map show, if run
COST_SAMPLES = 8  # joint cost points in compare's sensitivity section


def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="run scenarios under every proposal and attack; write the report and charts",
        epilog="examples:\n  pkvm-sim compare                  # every bundled scenario\n"
        "  pkvm-sim compare scenarios/cloud-vm.yaml --name cloud --format text\n"
        "  pkvm-sim compare scenarios/small-vm.yaml --set costs.tlbi_us=5 --name tlbi-5",
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
        help="'text' prints the 72-column summary on stdout, status lines on stderr"
        " (default: markdown)",
    )
    add_set_argument(p)
    add_json_argument(p, "results and matrix")
    add_seeds_argument(p, DEFAULT_SEEDS)
    p.add_argument(
        "--cost-samples",
        type=nonnegative,
        default=COST_SAMPLES,
        metavar="N",
        help="joint cost points for the report's sensitivity section, each estimate at"
        f" its low and high end in {FOCUS} besides (default {COST_SAMPLES}; 0: no section;"
        " `pkvm-sim sensitivity` runs the full design)",
    )
    add_jobs_argument(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from sim.output import check_dir
    from sim.parallel import workers_kept

    paths = args.scenarios or bundled_scenarios()
    if not paths:
        print(f"pkvm-sim: no scenario given and none bundled in {BUNDLED}", file=sys.stderr)
        return 2
    check_json(args)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"pkvm-sim: --out {args.out}: is a file, expected a directory", file=sys.stderr)
        return 2
    scenarios = load_all(paths, args.overrides)
    unique_names(paths, scenarios)
    name = args.name or ("bundled" if not args.scenarios else scenarios[0].name)
    out = Path(args.out) / name
    check_dir(out, "--out", "results.json")
    # The status lines go to stderr when stdout carries the summary (or the JSON).
    status = sys.stderr if args.format == "text" else sys.stdout
    with workers_kept():  # one set of workers for every phase
        runs = _simulate(args, scenarios)
        sens = _cost_ranges(args, runs) if args.cost_samples > 0 else None
        charts, summary = _write(args, scenarios, runs, sens, out)
    if args.format == "text":
        print(summary)
    print(
        f"compared {plural(len(scenarios), 'scenario')}:"
        f" {plural(len(runs.results), 'run')} with an honest host"
        f" ({plural(args.seeds, 'seed')} each) and"
        f" {plural(sum(len(c) for c in runs.matrices.values()), 'attack run')}",
        file=status,
    )
    print(
        f"wrote {out / 'report.md'}, summary.txt, results.json, matrix.json,"
        f" {plural(len(charts), 'chart')}",
        file=status,
    )
    return 0


@dataclass
class Runs:
    """What the simulation phase gives the report: the honest runs (every seed), the
    attack matrices, the focus scenario's worlds for its charts, the replay twins."""

    honest: list  # the scenarios with an honest host
    focus: str
    results: list
    matrices: dict
    worlds: dict
    twins: list
    events: dict  # the kernel-replacement scenarios' outcomes (sim.report.kernel_events)


def _simulate(args: argparse.Namespace, scenarios: list) -> Runs:
    from sim.cells import cells
    from sim.commands.console import progress
    from sim.matrix import compare_set, run_cells_on, scenario_row, with_attack
    from sim.proposals import PROPOSALS
    from sim.report import kernel_events
    from sim.report.realguest import twins
    from sim.scenario import ATTACKS

    # The proposal tables and charts: every scenario with an honest host. A scenario's own
    # host, if it is not honest, is a row of its attack matrix, composed as the file says.
    honest = [with_attack(s, None) for s in scenarios]
    # A scenario that replaces the guest's kernel has no attack matrix: an honest host
    # already corrupts it, and when the replacement runs moves with the host's timing.
    attacked = {s.name for s in scenarios if not s.workload.events}
    protected = {
        s.name: [p for p in s.proposals if PROPOSALS[p].protected and s.name in attacked]
        for s in scenarios
    }
    rows = {s.name: [*ATTACKS, *filter(None, [scenario_row(s)])] for s in scenarios}
    total = sum(
        len(s.proposals) * args.seeds + len(protected[s.name]) * len(rows[s.name])
        for s in scenarios
    )
    focus = next((s for s in honest if s.name == FOCUS), honest[0]).name
    with progress(total, "simulating") as advance:
        results, matrices, worlds = compare_set(
            honest, rows, focus, args.jobs, advance, args.seeds, attacked
        )
    twin_runs = run_cells_on(args.jobs)(cells(twins(honest)), lambda: None)
    events = kernel_events.all_outcomes(scenarios, args.jobs)
    return Runs(honest, focus, results, matrices, worlds, twin_runs, events)


def _cost_ranges(args: argparse.Namespace, runs: Runs):
    """The report's sensitivity section: ``--cost-samples`` joint points over every
    scenario, each estimate at its low and high end in the focus scenario."""
    from sim.commands.console import progress
    from sim.matrix import run_cells_on
    from sim.sensitivity import design, run_design

    points = design(joint=args.cost_samples)
    oat = {runs.focus}
    todo = sum(
        len(s.proposals) * sum(p.kind == "joint" or s.name in oat for p in points[1:])
        for s in runs.honest
    )
    with progress(todo, "cost ranges") as advance:
        return run_design(
            runs.honest,
            points,
            tick=advance,
            runner=run_cells_on(args.jobs),
            one_at_a_time=oat,
            defaults=runs.results,
        )


def _write(args: argparse.Namespace, scenarios: list, runs: Runs, sens, out: Path):
    """report.md, summary.txt, results.json, matrix.json and the charts, swapped in whole;
    and ``--json``. Returns the charts and the summary."""
    from sim.output import report_dir, write_json
    from sim.report import kernel_events, liveupdate, verdict
    from sim.report.charts import write_charts
    from sim.report.markdown import render
    from sim.report.realguest import render_realguest
    from sim.report.text import render_text

    results, matrices = runs.results, runs.matrices
    document = results_document(results, scenarios, args.overrides)
    cells = {n: [c.model_dump(mode="json") for c in cs] for n, cs in matrices.items()}
    summary = render_text(scenarios, results, matrices, args.overrides)
    live, events = liveupdate.all_costs(scenarios), runs.events
    evidence = verdict.Evidence(scenarios, results, matrices, live, events, sens)
    with report_dir(out, "--out") as staging:
        charts = write_charts(results, staging, matrices, runs.worlds, args.jobs)
        extra: list[str] = []
        if sens is not None:
            from sim.report.sensitivity import section, tornado_chart

            extra = section(sens, [tornado_chart(sens, runs.focus, staging / "tornado.png")])
        write_json(staging / "results.json", document, "--out")
        write_json(staging / "matrix.json", cells, "--out")
        report = render(scenarios, results, charts, matrices, extra)
        report += render_realguest(runs.honest, results, runs.twins)
        more, more_charts = liveupdate.write(scenarios, staging, live)  # sections with charts
        charts += more_charts
        report += "\n".join(["", *kernel_events.write(scenarios, events), *more])
        report += "\n".join(["", *verdict.section(evidence)])
        summary += "\n\n" + "\n".join(verdict.text(evidence)).rstrip()
        (staging / "report.md").write_text(report)
        (staging / "summary.txt").write_text(summary + "\n")
    if args.json:
        write_json(args.json, {**document, "matrix": cells})
    return charts, summary
