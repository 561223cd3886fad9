"""`pkvm-sim run`: one scenario, a table per proposal."""

from __future__ import annotations

import argparse

from sim.cells import DEFAULT_SEEDS
from sim.commands.common import (
    add_json_argument,
    add_scenario_arguments,
    add_seeds_argument,
    add_set_argument,
    check_json,
    load_all,
    results_document,
    run_all,
)


def register(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run one scenario under its proposals and print a table per proposal",
        epilog="examples:\n  pkvm-sim run scenarios/small-vm.yaml --proposal trusted-host"
        " --json out.json\n"
        "  pkvm-sim run scenarios/small-vm.yaml --set guest.vcpus=8 --set costs.tlbi_us=2\n"
        "  pkvm-sim run scenarios/small-vm.yaml --proposal share-cmdq-snoop --trace run.json"
        "   # open in ui.perfetto.dev",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_scenario_arguments(p)
    add_set_argument(p)
    add_seeds_argument(p, DEFAULT_SEEDS)
    add_json_argument(p, "the results")
    p.add_argument(
        "--trace",
        metavar="FILE",
        help="write a Chrome trace-event JSON of the run at the scenario's own seed"
        " (Perfetto, chrome://tracing): a track per actor per machine with CPU spans,"
        " hypercalls, share/unshare, faults, ITS commands and migration phases",
    )
    p.set_defaults(func=main)


def _n(fmt: str):
    return lambda v: format(v, fmt)


# (metric, value of one run, format of a value): numbers quoted as median [min-max].
NUMBERS = [
    ("secret bytes exposed (peak)", lambda r: r.exposure.peak_exposed_bytes, _n(",.0f")),
    ("secret byte x ms exposed", lambda r: r.exposure.exposed_byte_ms, _n(",.1f")),
    (
        "secret bytes DMA-reachable (peak)",
        lambda r: r.exposure.dma_reachable_peak_bytes,
        _n(",.0f"),
    ),
    ("secret byte x ms DMA-reachable", lambda r: r.exposure.dma_reachable_byte_ms, _n(",.1f")),
    ("downtime (ms)", lambda r: r.costs.downtime_ms, _n(".3f")),
    ("ITS part of downtime (ms)", lambda r: r.costs.its_downtime_ms, _n(".3f")),
    ("ITS share of downtime", lambda r: r.costs.its_downtime_share, _n(".2%")),
    ("hypercalls: all", lambda r: r.costs.hypercalls, _n(",.0f")),
    ("hypercalls: the proposal's", lambda r: r.costs.hypercalls_by_proposal, _n(",.0f")),
    ("pages shared", lambda r: r.costs.pages_shared, _n(",.0f")),
    ("pages unshared", lambda r: r.costs.pages_unshared, _n(",.0f")),
    ("pages shared by the proposal", lambda r: r.costs.pages_shared_by_proposal, _n(",.0f")),
    ("stage-2 TLBIs: all", lambda r: r.costs.tlb_invalidations, _n(",.0f")),
    ("stage-2 TLBIs: the proposal's", lambda r: r.costs.tlb_invalidations_by_proposal, _n(",.0f")),
    ("IOTLB invalidations", lambda r: r.costs.iotlb_invalidations, _n(",.0f")),
    ("EL2 us: the proposal's", lambda r: r.costs.proposal_el2_us, _n(",.1f")),
    ("EL2 us: the driver's sharing", lambda r: r.costs.driver_el2_us, _n(",.1f")),
    ("bytes copied", lambda r: r.costs.bytes_copied, _n(",.0f")),
    ("migration stream bytes (ITS)", lambda r: r.costs.stream_bytes, _n(",.0f")),
    ("ITT memory held", lambda r: r.costs.itt_memory_bytes, _n(",.0f")),
    ("ITT memory needed", lambda r: r.costs.itt_bytes, _n(",.0f")),
    ("EL2 lines added (estimate)", lambda r: r.costs.el2_loc, _n(".0f")),
    ("stage-2 faults", lambda r: r.correctness.stage2_faults, _n(",.0f")),
    ("stage-2 faults (KVM's)", lambda r: r.correctness.kvm_faults, _n(",.0f")),
]


def _seeds(results) -> str:
    seeds = [r.seed for r in results]
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"{len(seeds)} seeds {seeds[0]}-{seeds[-1]}: median [min-max]"


def print_result(results) -> None:
    """One proposal's table over its seeds (a single RunResult is one seed)."""
    from sim.cells import spread
    from sim.commands.console import table

    results = results if isinstance(results, list) else [results]
    first = results[0]
    rows = [[name, spread(results, metric).format(fmt)] for name, metric, fmt in NUMBERS]
    cpu = sorted({a for r in results for a in r.costs.cpu_us})
    rows += [
        [
            f"CPU us: {a}",
            spread(results, lambda r, a=a: r.costs.cpu_us.get(a, 0.0)).format(_n(",.1f")),
        ]
        for a in cpu
    ]
    broken = [r.seed for r in results if not r.correctness.its_correct]
    kept = spread(results, lambda r: r.correctness.ok_after_migration).format(_n(",.0f"))
    expected = spread(results, lambda r: r.correctness.expected_translations).format(_n(",.0f"))
    errors: dict[str, int] = {}
    for r in results:
        for e, n in r.correctness.command_errors.items():
            errors[e] = errors.get(e, 0) + n
    resumed = sum(r.correctness.resume_msis_delivered for r in results)
    rows += [
        ["translations kept", f"{kept} of {expected}"],
        [
            "ITS command errors (all seeds)",
            ", ".join(f"{e} x{n}" for e, n in errors.items()) or "none",
        ],
        ["ITS correct", "yes" if not broken else f"NO (seeds {', '.join(map(str, broken))})"],
        [
            "MSI after resume delivered",
            f"{resumed}/{sum(r.correctness.resume_msis for r in results)}",
        ],
    ]
    print(f"\n{first.scenario} ({_seeds(results)}): {first.proposal}, host: {first.host}")
    table(None, ["metric", "value"], rows)
    for r in results:
        k = r.correctness
        for line in k.its_errors + k.command_failures + k.mismatches:
            print(f"  ! seed {r.seed}: {line}")


def _run_traced(scenario, only: list[str] | None):
    """Each run's result, and every run's events in one trace."""
    from sim.run import collect, simulate
    from sim.trace import Trace

    proposals = [p for p in scenario.proposals if not only or p in only]
    trace, results = Trace(), []
    for proposal in proposals:
        world = simulate(scenario, proposal)
        results.append(collect(world))
        trace.add(world, f"{proposal}: " if len(proposals) > 1 else "")
    return results, trace


def main(args: argparse.Namespace) -> int:
    from sim.cells import by_cell
    from sim.output import check_file, write_json
    from sim.provenance import provenance

    check_json(args)
    if args.trace:
        check_file(args.trace, "--trace")
    (scenario,) = load_all([args.scenario], args.overrides)
    results = run_all([scenario], args.proposal, args.seeds)
    if args.trace:  # the scenario's own seed again, its events kept (the same run)
        _, trace = _run_traced(scenario, args.proposal)
    for rows in by_cell(results).values():
        print_result(rows)
    if args.json:
        write_json(args.json, results_document(results, [scenario], args.overrides))
    if args.trace:
        doc = trace.document(provenance([scenario], args.overrides))
        write_json(args.trace, doc, "--trace")
        print(f"\nwrote {args.trace}: {len(doc['traceEvents']):,} trace events")
    return 0
