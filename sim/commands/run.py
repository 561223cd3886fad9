"""`pkvm-sim run`: one scenario, a table per proposal."""

from __future__ import annotations

import argparse

from sim.commands.common import (
    add_json_argument,
    add_scenario_arguments,
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
    add_json_argument(p, "the results")
    p.add_argument(
        "--trace",
        metavar="FILE",
        help="write a Chrome trace-event JSON of the run (Perfetto, chrome://tracing): a"
        " track per actor per machine with CPU spans, hypercalls, share/unshare, faults,"
        " ITS commands and migration phases",
    )
    p.set_defaults(func=main)


def print_result(result) -> None:
    e, c, k = result.exposure, result.costs, result.correctness
    rows = [
        ("secret bytes exposed (peak)", f"{e.peak_exposed_bytes:,} of {e.secret_bytes:,}"),
        ("secret byte x ms exposed", f"{e.exposed_byte_ms:,.1f}"),
        (
            "secret bytes DMA-reachable (peak)",
            f"{e.dma_reachable_peak_bytes:,} of {e.secret_bytes:,}",
        ),
        ("secret byte x ms DMA-reachable", f"{e.dma_reachable_byte_ms:,.1f}"),
        ("downtime", f"{c.downtime_ms:.3f} ms"),
        ("ITS part of downtime", f"{c.its_downtime_ms:.3f} ms ({c.its_downtime_share:.2%})"),
        ("hypercalls", f"{c.hypercalls:,}"),
        ("pages shared / unshared", f"{c.pages_shared} / {c.pages_unshared}"),
        ("pages shared by the proposal", f"{c.pages_shared_by_proposal}"),
        ("TLB / IOTLB invalidations", f"{c.tlb_invalidations} / {c.iotlb_invalidations}"),
        ("bytes copied", f"{c.bytes_copied:,}"),
        ("migration stream bytes (ITS)", f"{c.stream_bytes:,}"),
        ("ITT memory held / needed", f"{c.itt_memory_bytes:,} / {c.itt_bytes:,}"),
        ("EL2 lines added (estimate)", f"~{c.el2_loc:.0f}"),
        ("CPU us per actor", ", ".join(f"{a} {us:,.1f}" for a, us in c.cpu_us.items())),
        (
            "translations kept",
            f"{k.ok_after_migration}/{k.expected_translations}"
            + ("" if k.translations_preserved and not k.its_errors else "  BROKEN"),
        ),
        (
            "ITS command errors",
            ", ".join(f"{e} x{n}" for e, n in k.command_errors.items()) or "none",
        ),
        ("ITS correct", "yes" if k.its_correct else "NO"),
        ("MSI after resume delivered", f"{k.resume_msis_delivered}/{k.resume_msis}"),
        ("stage-2 faults (KVM's)", f"{k.stage2_faults} ({k.kvm_faults})"),
    ]
    from sim.commands.console import table

    print(f"\n{result.scenario} (seed {result.seed}): {result.proposal}, host: {result.host}")
    table(None, ["metric", "value"], [[name, value] for name, value in rows])
    for line in k.its_errors + k.command_failures + k.mismatches:
        print(f"  ! {line}")


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
    from sim.output import check_file, write_json
    from sim.provenance import provenance

    check_json(args)
    if args.trace:
        check_file(args.trace, "--trace")
    (scenario,) = load_all([args.scenario], args.overrides)
    if args.trace:
        results, trace = _run_traced(scenario, args.proposal)
    else:
        results = run_all([scenario], args.proposal)
    for result in results:
        print_result(result)
    if args.json:
        write_json(args.json, results_document(results, [scenario], args.overrides))
    if args.trace:
        doc = trace.document(provenance([scenario], args.overrides))
        write_json(args.trace, doc, "--trace")
        print(f"\nwrote {args.trace}: {len(doc['traceEvents']):,} trace events")
    return 0
