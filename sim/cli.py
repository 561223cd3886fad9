"""The ``pkvm-sim`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sim.its.commands import MAPD, MAPTI
from sim.its.errors import ITSError
from sim.memory.ownership import Transition
from sim.memory.physmem import PAGE_SHIFT

EXAMPLES = """\
examples:
  pkvm-sim compare                          # every bundled scenario, report in reports/
  pkvm-sim run scenarios/small-vm.yaml --proposal userspace-serialization
  pkvm-sim its-save                         # SAVE_TABLES on a normal vs a protected VM
"""
BUNDLED = Path(__file__).resolve().parent.parent / "scenarios"


NR_LPIS = (1 << 16) - 8192  # INTIDs 8192..65535 with 16 INTID bits


def _its_save(args: argparse.Namespace) -> int:
    """Map devices, then SAVE_TABLES twice: a non-protected VM, then a protected one.

    The protected guest is mainline Linux: its ITS tables are shared with the host, but
    its ITTs sit in private memory at the addresses MAPD named, where SAVE_TABLES faults.
    """
    from sim.its.vits import QEMU_VIRT_RAM_BASE, VirtualITS
    from sim.memory.access import MemorySystem

    ram_size = 2 << 30
    rows = []
    for protected in (False, True):
        memory = MemorySystem()
        memory.ownership.add_guest("guest")
        memory.ownership.apply(
            Transition.HOST_DONATE_GUEST if protected else Transition.HOST_SHARE_GUEST,
            QEMU_VIRT_RAM_BASE >> PAGE_SHIFT,
            ram_size >> PAGE_SHIFT,
            guest="guest",
        )
        its = VirtualITS(memory=memory, ram_size=ram_size)
        assert its.layout is not None
        itt = its.layout.free_base
        errors: list[ITSError] = []
        bits = max(1, (args.events - 1).bit_length())
        for dev in range(args.devices):
            for cmd in [MAPD(dev, bits - 1, itt, True)] + [
                MAPTI(dev, ev, 8192 + dev * args.events + ev, ev % 4) for ev in range(args.events)
            ]:
                err = its.execute(cmd.encode())
                if err is not None:
                    errors.append(err)
            itt += max(256, (1 << bits) * 8)
        err = its.save_tables()
        first_fault = str(memory.faults[0]) if memory.faults else ""
        rows.append((protected, len(its.mappings()), errors, err, len(memory.faults), first_fault))
    print(f"{'VM':<14}{'mapped':>8}{'cmd errors':>12}  {'SAVE_TABLES':<12}{'stage-2 faults':>16}")
    for protected, mapped, errors, err, faults, _ in rows:
        vm = "protected" if protected else "non-protected"
        print(f"{vm:<14}{mapped:>8}{len(errors):>12}  {err or 'ok':<12}{faults:>16}")
    for protected, *_, first_fault in rows:
        if first_fault:
            print(f"\n{'protected' if protected else 'non-protected'}: first fault: {first_fault}")
    return 0


def _load(paths: list[str]) -> list:
    """Load every scenario before running any, so bad input leaves nothing behind."""
    from sim.scenario import ScenarioError, load_scenario

    scenarios = []
    for path in paths:
        try:
            scenarios.append(load_scenario(path))
        except ScenarioError as exc:
            print(f"pkvm-sim: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    return scenarios


def _results(scenarios: list, only: list[str] | None) -> list:
    from sim.run import run

    return [
        run(scenario, proposal)
        for scenario in scenarios
        for proposal in scenario.proposals
        if not only or proposal in only
    ]


def _dump(results: list) -> str:
    return json.dumps([r.model_dump(mode="json") for r in results], indent=2, sort_keys=True)


def _print_run(result) -> None:
    e, c, k = result.exposure, result.costs, result.correctness
    rows = [
        ("secret bytes exposed (peak)", f"{e.peak_exposed_bytes:,} of {e.secret_bytes:,}"),
        ("secret byte x ms exposed", f"{e.exposed_byte_ms:,.1f}"),
        ("downtime", f"{c.downtime_ms:.3f} ms"),
        ("ITS part of downtime", f"{c.its_downtime_ms:.3f} ms ({c.its_downtime_share:.2%})"),
        ("hypercalls", f"{c.hypercalls:,}"),
        ("pages shared / unshared", f"{c.pages_shared} / {c.pages_unshared}"),
        ("pages shared by the proposal", f"{c.pages_shared_by_proposal}"),
        ("TLB / IOTLB invalidations", f"{c.tlb_invalidations} / {c.iotlb_invalidations}"),
        ("bytes copied", f"{c.bytes_copied:,}"),
        ("migration stream bytes (ITS)", f"{c.stream_bytes:,}"),
        ("ITT memory held / needed", f"{c.itt_memory_bytes:,} / {c.itt_bytes:,}"),
        ("EL2 lines added", f"{c.el2_loc:.0f}"),
        ("CPU us per actor", ", ".join(f"{a} {us:,.1f}" for a, us in c.cpu_us.items())),
        (
            "translations kept",
            f"{k.ok_after_migration}/{k.expected_translations}"
            + ("" if k.translations_preserved and not k.its_errors else "  BROKEN"),
        ),
        ("MSI after resume delivered", f"{k.resume_msis_delivered}/{k.resume_msis}"),
        ("stage-2 faults", f"{k.stage2_faults}"),
    ]
    print(f"\n{result.scenario} (seed {result.seed}): {result.proposal}")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    for line in k.its_errors + k.mismatches:
        print(f"  ! {line}")


def _run(args: argparse.Namespace) -> int:
    (scenario,) = _load([args.scenario])
    results = _results([scenario], args.proposal)
    for result in results:
        _print_run(result)
    if args.json:
        Path(args.json).write_text(_dump(results) + "\n")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from sim.report.charts import write_charts
    from sim.report.markdown import render

    paths = args.scenarios or sorted(str(p) for p in BUNDLED.glob("*.yaml"))
    if not paths:
        print(f"pkvm-sim: no scenario given and none bundled in {BUNDLED}", file=sys.stderr)
        return 2
    scenarios = _load(paths)
    results = _results(scenarios, None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    charts = write_charts(results, out)
    (out / "results.json").write_text(_dump(results) + "\n")
    (out / "report.md").write_text(render(scenarios, results, charts))
    print(f"compared {len(scenarios)} scenarios x their proposals: {len(results)} runs")
    print(f"wrote {out / 'report.md'}, {out / 'results.json'} and {len(charts)} charts")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pkvm-sim",
        description="Simulate the pKVM trust boundary around the virtual GICv3 ITS.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from sim.scenario import ALL_PROPOSALS

    p = sub.add_parser(
        "run",
        help="run one scenario under its proposals and print a table per proposal",
        epilog="example:\n  pkvm-sim run scenarios/small-vm.yaml --proposal trusted-host"
        " --json out.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", help="scenario YAML file")
    p.add_argument(
        "--proposal",
        action="append",
        choices=ALL_PROPOSALS,
        metavar="P",
        help="only this proposal (repeatable; default: the scenario's list)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=_run, check=None)

    p = sub.add_parser(
        "compare",
        help="run scenarios under every proposal; write the report, charts and JSON",
        epilog="example:\n  pkvm-sim compare                  # every bundled scenario\n"
        "  pkvm-sim compare scenarios/cloud-vm.yaml --out /tmp/report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenarios", nargs="*", help="scenario files (default: every bundled one)")
    p.add_argument("--out", default="reports", help="output directory (default: reports)")
    p.set_defaults(func=_compare, check=None)

    p = sub.add_parser(
        "its-save",
        help="map devices on a vITS and save its tables, non-protected vs protected VM",
        epilog="example:\n  pkvm-sim its-save --devices 4 --events 16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--devices", type=int, default=4, help="devices to map (default 4)")
    p.add_argument("--events", type=int, default=16, help="events per device (default 16)")
    p.set_defaults(func=_its_save, check=_check_its_save)
    return parser


def _check_its_save(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 1 <= args.devices <= 1 << 16:
        parser.error(f"--devices: expected 1..65536 (16 DeviceID bits), got {args.devices}")
    if not 1 <= args.events <= 1 << 16:
        parser.error(f"--events: expected 1..65536 (16 EventID bits), got {args.events}")
    if args.devices * args.events > NR_LPIS:
        parser.error(
            f"--devices x --events: expected at most {NR_LPIS} LPIs (one INTID per event),"
            f" got {args.devices * args.events}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.check is not None:
        args.check(parser, args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
