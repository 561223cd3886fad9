"""`pkvm-sim audit`: violations, ITS failures, and the attack x proposal matrix.

Exit 1 if an audited run of a protected proposal has a violation or an ITS failure (a
command KVM failed, a SAVE/RESTORE error, a lost translation), 0 if none, 2 on bad input.
Unprotected proposals (trusted-host) are reported but gate only with
``--include-unprotected``. ``--tap`` and ``--junit`` write the same verdicts for CI.
"""

from __future__ import annotations

import argparse

from pydantic import TypeAdapter, ValidationError

from sim.commands.common import (
    add_json_argument,
    add_scenario_arguments,
    add_set_argument,
    check_json,
    load_all,
)
from sim.report.words import plural
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
        help="find memory-exposure violations; exit 1 if a protected proposal has any, 0 if"
        " none, 2 on bad input",
        epilog="examples:\n  pkvm-sim audit scenarios/kzalloc-dense-secrets.yaml --attack all\n"
        "  pkvm-sim audit scenarios/small-vm.yaml --proposal userspace-serialization"
        " --attack its-dma --json audit.json\n"
        "  pkvm-sim audit scenarios/small-vm.yaml --summary --tap audit.tap --junit audit.xml",
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
    add_set_argument(p)
    add_json_argument(p, "every violation")
    p.add_argument(
        "--include-unprotected",
        action="store_true",
        help="let unprotected proposals (trusted-host) gate the exit status too; by default"
        " they are reported but do not fail the audit",
    )
    p.add_argument("--tap", metavar="FILE", help="write a TAP 14 test point per run ('-': stdout)")
    p.add_argument(
        "--junit", metavar="FILE", help="write JUnit XML, a testcase per run ('-': stdout)"
    )
    p.add_argument(
        "--summary",
        action="store_true",
        help="print one line per run and the matrix, not every violation",
    )
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
        f" corrupted {s.corrupted_bytes:,} B, {plural(s.unverified_shares, 'unverified share')},"
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
    from sim.output import check_file, write_json, write_text
    from sim.provenance import provenance
    from sim.report.gate import render_junit, render_tap, summary_line, verdicts

    check_json(args)
    for flag in ("tap", "junit"):
        if getattr(args, flag):
            check_file(getattr(args, flag), f"--{flag}")
    (scenario,) = load_all([args.scenario], args.overrides)
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
    found = verdicts(runs, args.include_unprotected)
    if args.summary:
        print()
        for verdict in found:
            print(summary_line(verdict))
    else:
        for run in runs:
            _print_run(run)
    if cells:
        print_matrix(cells)
    if args.json:
        data = {
            "provenance": provenance([scenario], args.overrides),
            "runs": [r.model_dump(mode="json", exclude={"result"}) for r in runs],
            "matrix": [c.model_dump(mode="json") for c in cells],
            "verdicts": [
                {
                    "scenario": v.scenario,
                    "proposal": v.proposal,
                    "host": v.host,
                    "protected": v.protected,
                    "failed": v.failed,
                    "gating": v.gating,
                }
                for v in found
            ],
        }
        write_json(args.json, data)
    if args.tap:
        write_text(args.tap, render_tap(found), "--tap")
    if args.junit:
        write_text(args.junit, render_junit(found), "--junit")
    gating = [v for v in found if v.gates]
    quiet = [v for v in found if v.failed and not v.gating]
    violated = [v for v in gating if v.violations]
    broken = [v for v in gating if v.its_failures]
    print()
    if quiet:
        names = sorted({v.proposal for v in quiet})
        print(
            f"not gating: {plural(len(quiet), 'run')} of unprotected {', '.join(names)} failed"
            " (--include-unprotected to gate)"
        )
    if broken:
        hosts = sorted({v.host for v in broken})
        print(f"ITS failures in {plural(len(broken), 'run')} (host: {'; '.join(hosts)})")
    if violated:
        print(f"{plural(len(violated), 'protected run')} with violations")
        print("violations found")
    else:
        print("no violation found" + (" in a gating run" if quiet else ""))
    return 1 if gating else 0
