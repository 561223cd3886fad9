"""`pkvm-sim sweep`: a scenario's fields varied over a cross product of values and seeds;
one tidy table (CSV and Parquet) and scaling charts."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sim.commands.common import add_json_argument


def register(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a scenario over a cross product of field values and seeds; write a table"
        " and charts",
        epilog="examples:\n"
        "  pkvm-sim sweep scenarios/small-vm.yaml --vary guest.secret_density=0,0.25,0.5"
        " --seeds 3\n"
        "  pkvm-sim sweep scenarios/cloud-vm.yaml --vary guest.allocator=linux-kzalloc,"
        "linux-shared-pool \\\n"
        "      --vary 'devices[0].vectors=17,65,257' --jobs 2\n"
        "  pkvm-sim sweep scenarios/small-vm.yaml --vary guest.vcpus=2,8"
        " --dask tcp://scheduler:8786\n\n"
        "FIELD is a dotted path into the scenario (guest.vcpus, migration.at_ms,"
        " costs.tlbi_us,\ndevices[0].vectors); every combination is validated as a"
        " whole scenario before any run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", help="scenario YAML file")
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="FIELD=V1,V2,...",
        help="a field and its values (repeatable: the cross product is run)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="seeds scenario.seed .. scenario.seed+N-1 (default 1)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="local worker processes (default: every CPU; 1 runs in this process)",
    )
    p.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the cells on an existing Dask distributed scheduler (e.g. tcp://host:8786)",
    )
    p.add_argument(
        "--dask-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="give up after S seconds with no Dask worker alive (default 60); finished"
        " cells are kept in the cache",
    )
    p.add_argument("--out", help="output directory (default: reports/sweeps/SCENARIO-NAME)")
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="finished cells, reused on a rerun (default: $XDG_CACHE_HOME/pkvm-sim/sweep,"
        " ~/.cache/pkvm-sim/sweep)",
    )
    p.add_argument("--no-cache", action="store_true", help="run every cell, keep none")
    add_json_argument(p, "every row")
    p.set_defaults(func=main, check=check)


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.seeds < 1:
        parser.error(f"--seeds: expected at least 1, got {args.seeds}")
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs: expected at least 1, got {args.jobs}")
    if args.jobs is not None and args.dask:
        parser.error("--jobs and --dask: expected one of them (the cluster sets parallelism)")
    if not args.dask_timeout > 0:
        parser.error(
            f"--dask-timeout: expected a positive number of seconds, got {args.dask_timeout}"
        )
    if args.cache and args.no_cache:
        parser.error("--cache and --no-cache: expected one of them")


def cache_dir(args: argparse.Namespace) -> Path | None:
    import os

    if args.no_cache:
        return None
    if args.cache:
        return Path(args.cache)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pkvm-sim" / "sweep"


def _progress(total: int):
    """A rich progress bar on a terminal; nothing otherwise."""
    if not sys.stdout.isatty():
        return lambda: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    )
    task = bar.add_task("runs", total=total)
    bar.start()

    def tick() -> None:
        bar.advance(task)
        if bar.finished:
            bar.stop()

    return tick


def main(args: argparse.Namespace) -> int:
    from sim.commands.common import check_json, load_all
    from sim.output import check_dir, write_json
    from sim.provenance import provenance
    from sim.report.words import plural
    from sim.sweep import (
        PARQUET_MISSING,
        CellCache,
        DaskLost,
        SweepError,
        parquet_available,
        run_sweep,
        varies_from,
        write_all,
    )

    check_json(args)
    (scenario,) = load_all([args.scenario])
    if not parquet_available():  # before any run: nothing half-written
        print(f"pkvm-sim: {PARQUET_MISSING}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("reports") / "sweeps" / scenario.name
    check_dir(out, "--out", "sweep.csv")
    where_cache = cache_dir(args)
    try:
        varies = varies_from(args.vary)
        start = time.perf_counter()
        sweep = run_sweep(
            scenario,
            varies,
            seeds=args.seeds,
            jobs=args.jobs,
            dask=args.dask,
            progress=_progress,
            cache=CellCache(where_cache) if where_cache else None,
            dask_worker_timeout=args.dask_timeout,
        )
    except DaskLost as exc:  # not bad input: the cluster went away
        print(f"pkvm-sim: sweep {scenario.name}: {exc}", file=sys.stderr)
        return 1
    except SweepError as exc:
        print(f"pkvm-sim: {args.scenario}: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - start
    made = {**provenance([scenario]), "vary": args.vary, "seeds": args.seeds}
    written = write_all(sweep, out, made)
    if args.json:
        write_json(args.json, {"provenance": made, "rows": sweep.rows})
    where = f"Dask at {args.dask}" if args.dask else f"{args.jobs or 'all'} local jobs"
    nr_variants = len({tuple(row[f] for f in sweep.fields) for row in sweep.rows})
    print(
        f"swept {scenario.name}: {plural(len(sweep.rows), 'run')}"
        f" ({plural(nr_variants, 'variant')} x {plural(args.seeds, 'seed')} x proposals)"
        f" in {wall:.1f} s on {where}"
    )
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
