"""`pkvm-sim bench`: events per second against bare SimPy (and instructions per event, under
valgrind), ITS save and restore rates, and full migrations by mapped ITEs; written to
perf.md."""

from __future__ import annotations

import argparse
import shlex
from collections import Counter
from pathlib import Path

from sim.scenario import ALL_PROPOSALS


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure simulated events/s (and instructions, under valgrind), ITS save/restore"
        " and migration scaling; write perf.md",
        epilog="examples:\n  pkvm-sim bench                     # the full run, reports/perf.md\n"
        "  pkvm-sim bench --quick --out /tmp/perf\n"
        "  pkvm-sim bench --sizes 1000,10000 --proposal trusted-host --jobs 1\n"
        "  pkvm-sim bench --driver linux --sizes 10000,57344",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sizes",
        metavar="N,N,...",
        help="mapped ITEs per migration point (default 1000,10000,100000,1000000;"
        " at most 4000000, or 57344 with --driver linux)",
    )
    p.add_argument(
        "--driver",
        choices=("bulk", "linux"),
        default="bulk",
        help="the guest's ITS driver for the migration points (default bulk: batched"
        " commands, LPIs shared past 57344 vectors; linux: one LPI per vector)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="migration runs at once, each in its own process (default: every core)",
    )
    p.add_argument(
        "--proposal",
        action="append",
        choices=ALL_PROPOSALS,
        metavar="P",
        help="only this proposal for the migration points (repeatable; default: every proposal)",
    )
    p.add_argument("--quick", action="store_true", help="a small, fast run (for tests)")
    p.add_argument("--out", default="reports", help="directory for perf.md (default: reports)")
    from sim.commands.common import add_json_argument

    add_json_argument(p, "every measurement")
    p.set_defaults(func=main, check=check)


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from sim.bench import MAX_BENCH_ITES, MAX_ITES

    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs: expected at least 1, got {args.jobs}")
    if args.sizes is None:
        return
    try:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if not sizes:
        parser.error("--sizes: expected at least one size")
    top = MAX_ITES if args.driver == "linux" else MAX_BENCH_ITES
    why = "one LPI each, 16 INTID bits" if args.driver == "linux" else "the bulk driver"
    for s in sizes:
        if not 1 <= s <= top:
            parser.error(f"--sizes: expected 1..{top} ITEs ({why}), got {s}")
    args.sizes = sorted(set(sizes))


def main(args: argparse.Namespace) -> int:
    import os

    from sim import bench
    from sim.commands.common import BUNDLED, bundled_scenarios
    from sim.scenario import load_scenario

    quick = args.quick
    sizes = args.sizes or list(bench.QUICK_SIZES if quick else bench.DEFAULT_SIZES)
    proposals = args.proposal or (["trusted-host", "share-host-claims"] if quick else None)
    proposals = list(proposals or ALL_PROPOSALS)
    from sim.commands.common import check_json
    from sim.output import OutputError, check_file, write_text

    check_json(args)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--out {out}: {exc.strerror.lower()}") from None
    check_file(out / "perf.md", "--out")  # before minutes of measuring

    def say(msg: str) -> None:
        print(msg, flush=True)

    load = os.getloadavg()[0]
    say(f"machine: {bench.machine_line()}; load average {load:.1f}")
    # The best of RATIO_ROUNDS for both, measured alternately: the ratio, not one noisy
    # wall time.
    bares, sims, quiets = [], [], []
    name = "small-vm" if quick else "cloud-vm"
    scenario_path = BUNDLED / f"{name}.yaml"
    scenario = load_scenario(scenario_path)
    # The bare pattern takes pkvm-sim's own mix of events, counted in an untimed pass.
    by_part: Counter = Counter()
    mix = bench.event_mix(scenario, by_part=by_part)
    quiet_scenario = bench.without_msis(scenario)  # what the runs cost without their MSIs
    for _ in range(bench.RATIO_ROUNDS):
        bares.append(
            bench.bare_simpy(mix, len(scenario.proposals), events=40_000 if quick else 400_000)
        )
        sims.append(bench.simulated_events(scenario))
        quiets.append(bench.simulated_events(quiet_scenario))
    bare = max(bares, key=lambda x: x["events_per_s"])
    simulated = max(sims, key=lambda x: x["events_per_s"])
    quiet = min(quiets, key=lambda x: x["simulate_wall_s"])
    say(
        f"(a) bare SimPy, {name}'s mix of events: {bare['events']:,} events,"
        f" {bare['events_per_s']:,.0f} events/s"
    )
    ratio = bare["events_per_s"] / simulated["events_per_s"]
    round_ratios = [b["events_per_s"] / s["events_per_s"] for b, s in zip(bares, sims, strict=True)]
    say(
        f"(b) pkvm-sim {name}: {simulated['events']:,} events,"
        f" {simulated['events_per_s']:,.0f} events/s; cost per event {ratio:.1f}x bare SimPy"
        f" (rounds {min(round_ratios):.1f}x to {max(round_ratios):.1f}x)"
    )
    say(
        f"(b) without MSIs: {quiet['events']:,} events, {quiet['simulate_wall_s']:.3f} s,"
        f" {bench.msi_share(bare, simulated, quiet)[0]:.2f}x"
        " bare SimPy's time for the full runs' events"
    )
    instructions, instructions_missing = None, _valgrind(say)
    if not instructions_missing:
        say("(a2) counting instructions under valgrind (four children at once)")
        try:
            instructions = bench.instruction_ratio(
                str(scenario_path),
                dict(mix),
                len(scenario.proposals),
                sims[0]["events"],
                bare_events=20_000 if quick else bench.BARE_COUNTED_EVENTS,
            )
        except RuntimeError as exc:  # valgrind itself failed: say so in perf.md
            instructions_missing = str(exc)
        else:
            say(
                "(a2) instructions per event: pkvm-sim"
                f" {instructions['simulated']['instructions']:,.0f}, bare SimPy"
                f" {instructions['bare']['instructions']:,.0f}: {instructions['ratio']:.2f}x"
            )
    cost = bench.run_cost(scenario, events_by_part=by_part)
    say(
        f"(b) one {name} run: {cost['run_s'] * 1000:.1f} ms; "
        + ", ".join(f"{k} {v * 1000:.1f}" for k, v in cost["parts_s"].items())
    )
    jobs = args.jobs or os.cpu_count() or 1
    if quick:
        compare_what, compare_set = "`small-vm`", [str(BUNDLED / "small-vm.yaml")]
    else:
        compare_what, compare_set = "the bundled scenarios", bundled_scenarios()
    cmp = bench.compare_speed(compare_set, jobs)
    say(
        f"(e) compare over {compare_what}: --jobs 1 {cmp['wall_1_s']:.1f} s, --jobs {jobs}"
        f" {cmp['wall_n_s']:.1f} s ({cmp['speedup']:.2f}x),"
        f" {'identical' if cmp['identical'] else 'DIFFERENT'} output"
    )
    its = []
    for ites in (300, 3_000) if quick else bench.ITS_SIZES:
        its.append(bench.its_save_restore(ites))
        x = its[-1]
        say(
            f"(c) ITS, {x['ites']:,} ITEs, {x['entries']:,} entries: save"
            f" {x['save_entries_per_s']:,.0f}/s, restore {x['restore_entries_per_s']:,.0f}/s,"
            f" restored {'ok' if x['restored_ok'] else 'WRONG'}"
        )
    say(
        f"(d) full migrations at {', '.join(f'{s:,}' for s in sizes)} ITEs"
        f" ({args.driver} guest driver), {len(proposals)} proposals"
    )

    def progress(pt: dict) -> None:
        say(
            f"    {pt['ites']:>7,} ITEs  {pt['proposal']:<24} {pt['wall_s']:8.2f} s"
            f"  {pt['peak_rss_mib']:7.0f} MiB  {pt['events']:>9,} events"
            + ("" if pt["translations_ok"] else "  TRANSLATIONS BROKEN")
        )

    points, batch_wall = bench.run_points(sizes, proposals, args.driver, jobs, progress)
    six_wall = None
    if set(bench.FIRST_SIX) < set(proposals):
        # The target names the first six proposals: time them as a batch of their own.
        say(f"(d) the first six proposals at {max(sizes):,} ITEs, {jobs} at a time")
        top = {pt["proposal"]: pt["wall_s"] for pt in points if pt["ites"] == max(sizes)}
        _, walls = bench.run_points(
            [max(sizes)], list(bench.FIRST_SIX), args.driver, jobs, expected=top
        )
        six_wall = walls[max(sizes)]
        say(f"    {six_wall:.1f} s")
    result = bench.Bench(
        machine=bench.machine_line(),
        bare=bare,
        simulated=simulated,
        simulated_scenario=name,
        its=its,
        points=points,
        sizes=sizes,
        batch_wall=batch_wall,
        six_wall=six_wall,
        jobs=jobs,
        driver=args.driver,
        run_cost=cost,
        compare=cmp,
        compare_what=compare_what,
        load=load,
        round_ratios=round_ratios,
        instructions=instructions,
        instructions_missing=instructions_missing,
        quiet=quiet,
    )
    argv = ["pkvm-sim", "bench"]
    if quick:
        argv.append("--quick")
    if args.sizes:
        argv += ["--sizes", ",".join(map(str, sizes))]
    if args.driver != "bulk":
        argv += ["--driver", args.driver]
    if args.jobs:
        argv += ["--jobs", str(args.jobs)]
    for p in args.proposal or ():
        argv += ["--proposal", p]
    if args.out != "reports":
        argv += ["--out", args.out]
    path = out / "perf.md"
    write_text(path, bench.render(result, shlex.join(argv)), "--out")
    say(f"wrote {path}")
    if args.json:
        import dataclasses

        from sim.output import write_json
        from sim.provenance import provenance

        data = dataclasses.asdict(result)
        data["batch_wall"] = {str(k): v for k, v in data["batch_wall"].items()}
        write_json(args.json, {"provenance": provenance(), "bench": data, "ratio": result.ratio})
    return 0


def _valgrind(say) -> str:
    """Why valgrind cannot count instructions here, or the empty string if it can
    (installed from Debian's archive when missing, if run as root)."""
    import shutil

    if shutil.which("valgrind"):
        return ""
    from sim.oracle.errors import OracleSetupError
    from sim.oracle.setup import apt_install

    try:
        apt_install(["valgrind"], say, who="the bench")
    except OracleSetupError as exc:
        return str(exc).splitlines()[0]
    return "" if shutil.which("valgrind") else "valgrind installed, but not on PATH"
