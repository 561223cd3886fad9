"""The ``pkvm-sim`` command line: one module per command under ``sim.commands``."""

from __future__ import annotations

import argparse
import sys

from sim.commands import audit, bench, capture, compare, its_save, oracle, run, scenarios, sweep

COMMANDS = (compare, run, audit, scenarios, sweep, bench, its_save, oracle, capture)
EXAMPLES = """\
examples:
  pkvm-sim compare                          # every bundled scenario, report in reports/
  pkvm-sim run scenarios/small-vm.yaml --proposal userspace-serialization
  pkvm-sim its-save                         # SAVE_TABLES on a normal vs a protected VM
  pkvm-sim oracle                           # real KVM and pKVM under QEMU (sets itself up)
  pkvm-sim capture --virtio-net 6 --nvme 1  # record a real Linux guest's ITS traffic
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pkvm-sim",
        description="Simulate the pKVM trust boundary around the virtual GICv3 ITS.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    check = getattr(args, "check", None)
    if check is not None:
        check(parser, args)
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
