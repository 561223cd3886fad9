"""`pkvm-sim capture`: boot a real Linux guest with the devices named, record its ITS traffic."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

EPILOG = """\
devices (each flag repeatable; COUNTxSIZE adds COUNT such devices):
  --virtio-net V    a virtio-net-pci with V MSI-X vectors (user networking, restrict=on)
  --virtio-blk Q    a virtio-blk-pci with Q request queues (Q + 1 MSI-X vectors)
  --virtio-rng [V]  a virtio-rng-pci with V MSI-X vectors (default 2)
  --nvme Q          an NVMe controller with Q I/O queue pairs (Q + 1 MSI-X vectors)
Devices sit on PCI slots 1, 2, ... in the order given (DeviceID = slot << 3).

examples:
  pkvm-sim capture --virtio-net 6 --nvme 1             # Debian's newest kernel
  pkvm-sim capture --kernels bookworm --virtio-net 4 --virtio-blk 2 --virtio-rng --nvme 1
  pkvm-sim capture --nvme 2x4 --out captures/nvme.capture.json
  pkvm-sim capture --kernel arch/arm64/boot/Image --modules /tmp/mods/lib/modules/6.19.0 \\
      --virtio-blk 4

Writes the capture (format pkvm-sim-capture/1, sim/capture/format.py) and a scenario that
replays it (`pkvm-sim run SCENARIO`, `pkvm-sim compare SCENARIO`). Set-up and cache are
`pkvm-sim oracle`'s ($XDG_CACHE_HOME/pkvm-sim/oracle).
"""


def register(sub) -> None:
    from sim.capture.qemu import KINDS
    from sim.capture.run import DEFAULT_CPUS, DEFAULT_MEMORY_MIB, DEFAULT_TIMEOUT_S

    p = sub.add_parser(
        "capture",
        help="boot a real Linux guest under QEMU and record its ITS commands and ITT pages",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for kind, (_, meaning, default, _) in KINDS.items():
        p.add_argument(
            f"--{kind}",
            dest="devices",
            action="append",
            type=lambda v, k=kind: (k, v),
            nargs="?",
            const=(kind, str(default)),
            metavar="[COUNTx]SIZE",
            help=f"add a {kind} ({meaning}; default {default} when no value)",
        )
    p.add_argument(
        "--kernels",
        metavar="K",
        default=None,
        help="Debian kernel: newest (today 7.3.x, default) or bookworm (6.1.x)",
    )
    p.add_argument("--kernel", metavar="IMAGE", help="your own arm64 Image (or gzip'd vmlinuz)")
    p.add_argument("--modules", metavar="DIR", help="its lib/modules/<release> (with --kernel)")
    p.add_argument("--cpus", type=int, default=DEFAULT_CPUS, help=f"vCPUs (default {DEFAULT_CPUS})")
    p.add_argument(
        "--memory",
        type=int,
        default=DEFAULT_MEMORY_MIB,
        metavar="MIB",
        help=f"guest RAM in MiB (default {DEFAULT_MEMORY_MIB})",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"kill QEMU after S seconds (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="the capture file (default captures/linux-<version>.capture.json)",
    )
    p.add_argument(
        "--scenario", default=None, metavar="FILE", help="the scenario (default: beside --out)"
    )
    p.add_argument(
        "--raw",
        default=None,
        metavar="DIR",
        help="also keep the raw material in DIR: QEMU's ITS trace, the queue, the guest's /out",
    )
    p.set_defaults(func=main, check=check)


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from sim.capture.qemu import DeviceSpecError, device_mix, parse_spec

    specs = []
    for kind, value in args.devices or []:
        try:
            specs += parse_spec(kind, value)
        except DeviceSpecError as exc:
            parser.error(str(exc))
    if not specs:
        parser.error("no devices: name at least one, e.g. --virtio-net 6 --nvme 1")
    args.device_mix = device_mix(specs)
    if args.modules is not None and args.kernel is None:
        parser.error("--modules: only with --kernel IMAGE")
    if args.kernel is not None and args.kernels is not None:
        parser.error("--kernels: not with --kernel IMAGE (one kernel per capture)")
    if args.kernels is None and args.kernel is None:
        args.kernels = "newest"
    if args.kernels is not None and args.kernels not in ("newest", "bookworm"):
        parser.error(f"--kernels: expected newest or bookworm, got {args.kernels!r}")
    if not 1 <= args.cpus <= 8:
        parser.error(f"--cpus: expected 1..8 vCPUs, got {args.cpus}")
    if not 256 <= args.memory <= 16384:
        parser.error(f"--memory: expected 256..16384 MiB, got {args.memory}")
    if not args.timeout > 0:
        parser.error(f"--timeout: expected a positive number of seconds, got {args.timeout}")


def main(args: argparse.Namespace) -> int:
    from sim.capture.run import CaptureOptions, run_capture
    from sim.oracle.errors import OracleSetupError

    start = time.monotonic()

    def terminate(signum, frame):  # run_l1's finally kills QEMU's process group
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)

    def progress(line: str) -> None:
        print(f"[{time.monotonic() - start:6.1f}s] {line}", file=sys.stderr, flush=True)

    out = Path(args.out) if args.out else None
    options = CaptureOptions(
        devices=args.device_mix,
        out=out,
        scenario=Path(args.scenario) if args.scenario else None,
        kernel=args.kernels,
        kernel_image=Path(args.kernel) if args.kernel else None,
        modules=Path(args.modules) if args.modules else None,
        cpus=args.cpus,
        memory_mib=args.memory,
        timeout_s=args.timeout,
        raw_dir=Path(args.raw) if args.raw else None,
    )
    command = "pkvm-sim capture " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else ""
    try:
        result = run_capture(options, progress, command.strip() or "pkvm-sim capture")
    except OracleSetupError as exc:
        print(f"pkvm-sim capture: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("pkvm-sim capture: interrupted", file=sys.stderr)
        return 130
    cap = result.capture
    t = result.timings
    print(
        f"Linux {cap.kernel.release}: {len(cap.commands)} ITS commands"
        f" ({sum(c.phase == 'shutdown' for c in cap.commands)} at shutdown),"
        f" {len(cap.devices)} devices, {len(cap.colocation)} ITT pages;"
        f" queue vs trace: {result.check.compared} commands, {result.check.fields} fields,"
        f" {len(result.check.mismatches)} mismatches"
    )
    print(
        f"time: set-up {t['setup_s']:.1f} s, boot to /init {t['init_s']:.1f} s, power-off at"
        f" {t['boot_s']:.1f} s, read-back {t['readback_s']:.1f} s, total {t['total_s']:.1f} s"
    )
    print(f"capture: {result.path}")
    print(f"scenario: {result.scenario_path}")
    return 0
