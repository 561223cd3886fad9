"""`pkvm-sim audit`: violations, ITS failures, and the attack x proposal matrix.

Exit 1 if any audited run has a violation or an ITS failure (a command KVM failed, a
SAVE/RESTORE error, a lost translation), 0 if none, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from sim.commands.common import add_scenario_arguments, load_all
from sim.scenario import ATTACKS, BehaviourSpec

ROW_SYNTAX = "KIND[:PARAM=VALUE,...][+KIND...]"


def attack_row(text: str):
    """An --attack value: 'all', an attack's name (its default parameters), or host
    behaviours with parameters composed into one row, ``KIND[:PARAM=VALUE,...]+...``."""
    if text == "all" or text in ATTACKS:
        return text
    specs = []
    for part in text.split("+"):
        kind, _, params = part.strip().partition(":")
        data: dict[str, str] = {"kind": kind}
        for item in filter(None, params.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise argparse.ArgumentTypeError(
                    f"invalid choice: {text!r}: expected PARAM=VALUE, got {item!r}"
                )
            data[key.strip()] = value.strip()
        try:
            specs.append(TypeAdapter(BehaviourSpec).validate_python(data))
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(k) for k in err["loc"][1:]) or "kind"
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r}: {kind}: {where}: {err['msg']}"
                f" (choose from 'all', {', '.join(map(repr, ATTACKS))} or {ROW_SYNTAX})"
            ) from None
    return specs


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
        type=attack_row,
        metavar="A",
        help="run the scenario under this host behaviour too (repeatable, or 'all': every"
        " attack, and the scenario's own host if it composes behaviours); behaviours with"
        f" parameters run together as one row: {ROW_SYNTAX}, e.g."
        " read-everything:period_ms=2+delay-commands; without --attack the scenario's own"
        " host is audited",
    )
    p.add_argument("--json", metavar="FILE", help="also write every violation as JSON")
    p.set_defaults(func=main)


def _print_run(run) -> None:
    s = run.summary
    print(f"\n{run.scenario}: {run.proposal}, host: {' + '.join(run.behaviours)}")
    errors = ", ".join(f"{e} x{n}" for e, n in s.command_errors.items()) or "none"
    print(
        f"  could read {s.could_read_peak_bytes:,} secret B at peak"
        f" ({s.could_read_byte_ms:,.1f} B x ms), DMA could reach"
        f" {s.dma_reachable_peak_bytes:,} ({s.dma_reachable_byte_ms:,.1f} B x ms),"
        f" did read {s.did_read_bytes:,} B,"
        f" corrupted {s.corrupted_bytes:,} B, {s.unverified_shares} unverified shares,"
        f" translations {'kept' if s.translations_preserved else 'BROKEN'},"
        f" ITS command errors: {errors}"
    )
    c = run.result.correctness
    for line in (c.its_errors + c.command_failures)[:MAX_SHOWN]:
        print(f"  [its-failure] {line}")
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
    from sim.matrix import attack_matrix, audit_run, scenario_row

    (scenario,) = load_all([args.scenario])
    proposals = args.proposal or list(scenario.proposals)
    attacks = args.attack
    if attacks and "all" in attacks:
        own = scenario_row(scenario)
        attacks = [*ATTACKS, *([own] if own else [])]
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
    failed = [run for run in runs if not run.summary.its_correct]
    print(f"\n{'violations found' if found else 'no violation found'}")
    if failed:
        hosts = sorted({" + ".join(r.behaviours) for r in failed})
        print(f"ITS failures in {len(failed)} runs (host: {'; '.join(hosts)})")
    return 1 if found or failed else 0
