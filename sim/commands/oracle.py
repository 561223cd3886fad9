"""`pkvm-sim oracle`: real KVM and real pKVM (Debian's arm64 kernels, nested under QEMU)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

EPILOG = """\
examples:
  pkvm-sim oracle                              # Debian's newest and bookworm's kernels
  pkvm-sim oracle --kernels newest --random 50      # the short pass CI runs
  pkvm-sim oracle --kernels newest --modes protected
  pkvm-sim oracle --kernel arch/arm64/boot/Image --modules /tmp/mods/lib/modules/6.19.0

Everything is set up on the first run (QEMU, the arm64 cross compiler and busybox from
Debian's archive, the kernels resolved from the archive's current indices) and cached in
$XDG_CACHE_HOME/pkvm-sim/oracle (~/.cache/pkvm-sim/oracle).
"""


def register(sub) -> None:
    from sim.oracle.boot import DEFAULT_TIMEOUT_S
    from sim.oracle.run import DEFAULT_BATCH, DEFAULT_RANDOM

    p = sub.add_parser(
        "oracle",
        help="replay ITS command streams on real KVM/pKVM under QEMU beside the model",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--kernel", metavar="IMAGE", help="your own arm64 Image (or gzip'd vmlinuz)")
    p.add_argument(
        "--modules", metavar="DIR", help="its lib/modules/<release> directory (with --kernel)"
    )
    p.add_argument(
        "--kernels",
        metavar="K,K",
        help="Debian kernels: newest (today 7.3.x), bookworm (6.1.x); default both,"
        " none with --kernel",
    )
    p.add_argument(
        "--modes",
        metavar="M,M",
        default="nested,protected",
        help="nested (KVM at emulated EL2), protected (kvm-arm.mode=protected); default both",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"kill QEMU after S seconds per boot (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    p.add_argument(
        "--random",
        type=int,
        default=DEFAULT_RANDOM,
        metavar="N",
        help=f"seeded random streams per kernel in nested mode (default {DEFAULT_RANDOM})",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the random streams (default 1)")
    p.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH,
        metavar="N",
        help=f"streams per L1 boot (default {DEFAULT_BATCH})",
    )
    p.add_argument(
        "--no-minimise",
        dest="minimise",
        action="store_false",
        help="do not shrink divergences on the kernel (each round is a boot)",
    )
    p.add_argument("--out", default="reports/oracle.md", help="report (default reports/oracle.md)")
    from sim.commands.common import add_json_argument

    add_json_argument(p, "each kernel and mode's counts")
    p.set_defaults(func=main, check=check)


def _list(value: str, allowed: tuple[str, ...], flag: str, parser) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        parser.error(
            f"{flag}: expected a comma-separated list of {', '.join(allowed)}, got {value!r}"
        )
    return items


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from sim.oracle.run import DEBIAN_KERNELS, MODES

    if args.modules is not None and args.kernel is None:
        parser.error("--modules: only with --kernel IMAGE")
    if args.kernels is None:
        args.kernels = () if args.kernel else DEBIAN_KERNELS
    else:
        args.kernels = _list(args.kernels, DEBIAN_KERNELS, "--kernels", parser)
    args.modes = _list(args.modes, MODES, "--modes", parser)
    if args.random < 0:
        parser.error(f"--random: expected a number of streams >= 0, got {args.random}")
    if args.batch < 1:
        parser.error(f"--batch: expected a number of streams >= 1, got {args.batch}")
    if not args.timeout > 0:
        parser.error(f"--timeout: expected a positive number of seconds, got {args.timeout}")


def main(args: argparse.Namespace) -> int:
    from sim.commands.common import check_json
    from sim.oracle.errors import OracleSetupError
    from sim.oracle.run import OracleOptions, run_oracle

    check_json(args)
    start = time.monotonic()

    def terminate(signum, frame):  # run_l1's finally kills QEMU's process group
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)

    def progress(line: str) -> None:
        print(f"[{time.monotonic() - start:6.1f}s] {line}", file=sys.stderr, flush=True)

    options = OracleOptions(
        kernels=args.kernels,
        kernel_image=Path(args.kernel) if args.kernel else None,
        modules=Path(args.modules) if args.modules else None,
        modes=args.modes,
        timeout_s=args.timeout,
        out=Path(args.out) if args.out else None,
        random=args.random,
        seed=args.seed,
        batch=args.batch,
        minimise=args.minimise,
    )
    try:
        run = run_oracle(options, progress)
    except OracleSetupError as exc:
        print(f"pkvm-sim oracle: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # QEMU is killed by run_l1 on the way out
        print("pkvm-sim oracle: interrupted", file=sys.stderr)
        return 130
    for r in run.runs:
        bad = sum(len(c.unexplained) for c in r.comparisons)
        diverging = sum(bool(c.mismatches) for c in r.comparisons)
        print(
            f"{r.kernel:<22} {r.mode:<28} {len(r.streams):5d} streams"
            f"  {diverging:4d} diverging  {bad:4d} unexplained  {r.wall_time:7.1f} s"
        )
    if options.out is not None:
        print(f"report: {options.out}")
    if args.json:
        from sim.output import write_json
        from sim.provenance import provenance

        rows = [
            {
                "kernel": r.kernel,
                "mode": r.mode,
                "streams": len(r.streams),
                "diverging": sum(bool(c.mismatches) for c in r.comparisons),
                "unexplained": sum(len(c.unexplained) for c in r.comparisons),
                "wall_s": r.wall_time,
            }
            for r in run.runs
        ]
        write_json(args.json, {"provenance": provenance(), "runs": rows})
    return 1 if run.unexplained else 0
