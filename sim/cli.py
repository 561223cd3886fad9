"""The ``pkvm-sim`` command line: one module per command under ``sim.commands``."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator

from sim import __version__
from sim.commands import (
    attacks,
    audit,
    bench,
    capture,
    compare,
    its_save,
    oracle,
    proposals,
    run,
    scenarios,
    sensitivity,
    sweep,
)

COMMANDS = (
    compare,
    run,
    audit,
    scenarios,
    proposals,
    attacks,
    sweep,
    bench,
    its_save,
    oracle,
    capture,
    sensitivity,
)
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
    parser.add_argument("--version", action="version", version=f"pkvm-sim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


STDOUT_FLAGS = ("json", "tap", "junit", "trace")  # options that take '-' for stdout


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is so that every cleanup runs."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    def terminate(signum, frame):
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _json_on_stdout(args: argparse.Namespace) -> Iterator[None]:
    """With ``--json -`` (or ``--tap -``, ...) that output owns stdout; every other line
    goes to stderr."""
    from sim import output

    if output.STDOUT not in (getattr(args, f, None) for f in STDOUT_FLAGS):
        yield
        return
    output.json_stream = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        output.json_stream = None


def _stopped(interrupt: KeyboardInterrupt) -> int:
    """One line for a SIGTERM or a Ctrl-C, and the shell's exit status for it."""
    if isinstance(interrupt, Terminated):
        print("pkvm-sim: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    print("pkvm-sim: interrupted", file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> int:
    from sim.output import OutputError
    from sim.registry import plugin_errors

    parser = build_parser()
    args = parser.parse_args(argv)
    for error in plugin_errors():  # left out; every other plugin and built-in still works
        print(f"pkvm-sim: warning: {error}", file=sys.stderr)
    if args.command is None:
        parser.print_help()
        return 0
    check = getattr(args, "check", None)
    if check is not None:
        check(parser, args)
    to_stdout = [f"--{f}" for f in STDOUT_FLAGS if getattr(args, f, None) == "-"]
    if len(to_stdout) > 1:
        parser.error(f"{' and '.join(to_stdout)}: at most one of them can be '-' (stdout)")
    try:
        with _sigterm_unwinds(), _json_on_stdout(args):
            return args.func(args)
    except OutputError as exc:
        print(f"pkvm-sim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Terminated too
        return _stopped(exc)
    except ImportError as exc:
        # A signal during an extension module's import fails the import ("initialization
        # failed"), with the interrupt as its cause: the user stopped us all the same.
        if not isinstance(exc.__cause__, KeyboardInterrupt):
            raise
        return _stopped(exc.__cause__)
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
