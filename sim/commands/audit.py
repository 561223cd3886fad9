"""`pkvm-sim audit`: violations, and the attack x proposal matrix; exit 1 if any found."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sim.commands.common import add_scenario_arguments, load_all
from sim.scenario import ATTACKS

MAX_SHOWN = 12  # violations printed per run; --json has all of them


def register(sub) -> None:
    p = sub.add_parser(
        "audit",
        help="find memory-exposure violations; exit 1 if any, 0 if none, 2 on bad input",
        epilog="examples:\n  pkvm-sim audit scenarios/kzalloc-dense-secrets.yaml --attack all\n"
        "  pkvm-sim audit scenarios/small-vm.yaml --proposal userspace-serialization"
        " --attack its-dma --json audit.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_scenario_arguments(p)
    p.add_argument(
        "--attack",
        action="append",
        choices=(*ATTACKS, "all"),
        metavar="A",
        help="run the scenario under this host behaviour too (repeatable, or 'all');"
        " without it the scenario's own host behaviours are audited",
    )
    p.add_argument("--json", metavar="FILE", help="also write every violation as JSON")
    p.set_defaults(func=main)


def _print_run(run) -> None:
    s = run.summary
    print(f"\n{run.scenario}: {run.proposal}, host: {', '.join(run.behaviours)}")
    print(
        f"  could read {s.could_read_peak_bytes:,} secret B at peak"
        f" ({s.could_read_byte_ms:,.1f} B x ms), DMA could reach"
        f" {s.dma_reachable_peak_bytes:,} ({s.dma_reachable_byte_ms:,.1f} B x ms),"
        f" did read {s.did_read_bytes:,} B,"
        f" corrupted {s.corrupted_bytes:,} B, {s.unverified_shares} unverified shares,"
        f" translations {'kept' if s.translations_preserved else 'BROKEN'}"
    )
    # What the host did first, then what it could have done (stage-2, then DMA).
    rank = {"could-read": 1, "dma-reachable": 2}
    shown = sorted(run.violations, key=lambda v: rank.get(v.how, 0))[:MAX_SHOWN]
    for v in shown:
        span = f"{v.time_ms:.3f}" + (f"-{v.end_ms:.3f}" if v.end_ms is not None else "")
        print(
            f"  [{v.kind}/{v.how}] t={span} ms {v.machine} {v.actor}"
            f" {v.addr:#x}+{v.length} {v.victim}"
        )
        for step in v.chain:
            print(f"      <- {step}")
    if len(run.violations) > MAX_SHOWN:
        print(f"  ... {len(run.violations) - MAX_SHOWN} more (see --json)")


def print_matrix(cells) -> None:
    from sim.commands.console import table

    proposals = list(dict.fromkeys(c.proposal for c in cells))
    attacks = list(dict.fromkeys(c.attack for c in cells))
    by = {(c.attack, c.proposal): c for c in cells}
    rows = [
        [attack] + [f"{by[attack, p].outcome}: {by[attack, p].why}" for p in proposals]
        for attack in attacks
    ]
    print()
    table(
        "attack x proposal (succeeded: what it got; blocked: by what)", ["attack", *proposals], rows
    )


def main(args: argparse.Namespace) -> int:
    from sim.commands.console import progress
    from sim.matrix import attack_matrix, audit_run

    (scenario,) = load_all([args.scenario])
    proposals = args.proposal or list(scenario.proposals)
    attacks = list(ATTACKS) if args.attack and "all" in args.attack else args.attack
    if attacks:
        with progress(len(proposals) * (len(attacks) + 1), "attacking") as advance:
            cells, runs = attack_matrix(scenario, proposals, attacks, advance)
    else:
        cells, runs = [], [audit_run(scenario, p) for p in proposals]
    for run in runs:
        _print_run(run)
    if cells:
        print_matrix(cells)
    if args.json:
        data = {
            "runs": [r.model_dump(mode="json", exclude={"result"}) for r in runs],
            "matrix": [c.model_dump(mode="json") for c in cells],
        }
        Path(args.json).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    found = any(run.violations for run in runs)
    print(f"\n{'violations found' if found else 'no violation found'}")
    return 1 if found else 0
