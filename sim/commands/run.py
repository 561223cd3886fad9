"""`pkvm-sim run`: one scenario, a table per proposal."""

from __future__ import annotations

import argparse
from pathlib import Path

from sim.commands.common import add_scenario_arguments, dump, load_all, run_all


def register(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run one scenario under its proposals and print a table per proposal",
        epilog="example:\n  pkvm-sim run scenarios/small-vm.yaml --proposal trusted-host"
        " --json out.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_scenario_arguments(p)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
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


def main(args: argparse.Namespace) -> int:
    (scenario,) = load_all([args.scenario])
    results = run_all([scenario], args.proposal)
    for result in results:
        print_result(result)
    if args.json:
        Path(args.json).write_text(dump(results) + "\n")
    return 0
