"""`pkvm-sim its-save`: SAVE_TABLES on a normal VM and on a protected one."""

from __future__ import annotations

import argparse

from sim.its.commands import MAPD, MAPTI
from sim.its.errors import ITSError
from sim.memory.ownership import Transition
from sim.memory.physmem import PAGE_SHIFT

NR_LPIS = (1 << 16) - 8192  # INTIDs 8192..65535 with 16 INTID bits


def register(sub) -> None:
    p = sub.add_parser(
        "its-save",
        help="map devices on a vITS and save its tables, non-protected vs protected VM",
        epilog="example:\n  pkvm-sim its-save --devices 4 --events 16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--devices", type=int, default=4, help="devices to map (default 4)")
    p.add_argument("--events", type=int, default=16, help="events per device (default 16)")
    from sim.commands.common import add_json_argument

    add_json_argument(p, "both VMs' outcome")
    p.set_defaults(func=main, check=check)


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 1 <= args.devices <= 1 << 16:
        parser.error(f"--devices: expected 1..65536 (16 DeviceID bits), got {args.devices}")
    if not 1 <= args.events <= 1 << 16:
        parser.error(f"--events: expected 1..65536 (16 EventID bits), got {args.events}")
    if args.devices * args.events > NR_LPIS:
        parser.error(
            f"--devices x --events: expected at most {NR_LPIS} LPIs (one INTID per event),"
            f" got {args.devices * args.events}"
        )


def main(args: argparse.Namespace) -> int:
    """Map devices, then SAVE_TABLES twice: a non-protected VM, then a protected one.

    The protected guest is mainline Linux: its ITS tables are shared with the host, but
    its ITTs sit in private memory at the addresses MAPD named, where SAVE_TABLES faults.
    """
    from sim.commands.common import check_json
    from sim.its.vits import QEMU_VIRT_RAM_BASE, VirtualITS
    from sim.memory.access import MemorySystem

    check_json(args)

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
    if args.json:
        from sim.output import write_json
        from sim.provenance import provenance

        vms = [
            {
                "vm": "protected" if protected else "non-protected",
                "mapped": mapped,
                "command_errors": [str(e) for e in errors],
                "save_tables": str(err) if err else "ok",
                "stage2_faults": faults,
                "first_fault": first_fault or None,
            }
            for protected, mapped, errors, err, faults, first_fault in rows
        ]
        write_json(
            args.json,
            {
                "provenance": provenance(),
                "devices": args.devices,
                "events": args.events,
                "vms": vms,
            },
        )
    return 0
