"""The oracle's flow, in one place: set up, boot each kernel in each mode, report.

Today each boot runs a probe payload (``uname -r``, ``/dev/kvm``, KVM's mode line) and
checks that KVM came up as asked: VHE (or nVHE) under nesting, pKVM with
``kvm-arm.mode=protected``. The VMM replay, the model and the comparison plug in at
``_boot_one`` (the payload) and ``render_report``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sim.oracle.boot import DEFAULT_TIMEOUT_S, BootResult, payload_initramfs, run_l1
from sim.oracle.errors import OracleSetupError, Progress
from sim.oracle.setup import Kernel, Tools, debian_kernel, ensure_host_tools, user_kernel

DEBIAN_KERNELS = ("newest", "bookworm")
MODES = ("nested", "protected")

PROBE = """\
{ echo "release=$(uname -r)"; if [ -c /dev/kvm ]; then echo kvm=yes; else echo kvm=no; fi; } > /out
cat /out
"""


@dataclass(frozen=True)
class OracleOptions:
    kernels: tuple[str, ...] = DEBIAN_KERNELS  # Debian kernels by name
    kernel_image: Path | None = None  # --kernel: a user's build, booted as "user"
    modules: Path | None = None
    modes: tuple[str, ...] = MODES
    timeout_s: float = DEFAULT_TIMEOUT_S
    out: Path | None = None  # the report (Markdown), written at the end


@dataclass(frozen=True)
class Boot:
    kernel: Kernel
    mode: str  # "nested" or "protected"
    result: BootResult
    probe: dict[str, str]  # key=value lines the probe payload wrote to /out


@dataclass
class OracleRun:
    tools: Tools
    kernels: list[Kernel] = field(default_factory=list)
    boots: list[Boot] = field(default_factory=list)
    setup_s: float = 0.0
    wall_s: float = 0.0


def _parse_probe(output: bytes | None) -> dict[str, str]:
    lines = (output or b"").decode(errors="replace").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _check_came_up(kernel: Kernel, mode: str, result: BootResult, probe: dict[str, str]) -> None:
    """KVM as asked, or a clear error: the oracle is meaningless without it."""
    where = f"{kernel.describe()}, {mode}"
    if probe.get("kvm") != "yes" or result.kvm_mode is None:
        raise OracleSetupError(
            f"{where}: KVM did not come up (mode line: {result.kvm_mode or 'none'},"
            f" /dev/kvm: {probe.get('kvm', '?')}); is the kernel built with CONFIG_KVM"
            " and booted at EL2 (QEMU virtualization=on)?"
        )
    if mode == "protected" and not result.protected:
        raise OracleSetupError(
            f"{where}: kvm-arm.mode=protected was given but KVM says {result.kvm_mode!r}"
        )
    if mode == "nested" and result.protected:
        raise OracleSetupError(f"{where}: protected mode came up without kvm-arm.mode=protected")
    if kernel.release and probe.get("release") != kernel.release:
        raise OracleSetupError(
            f"{where}: uname -r says {probe.get('release')!r}, expected {kernel.release!r}"
        )


def _boot_one(kernel: Kernel, tools: Tools, mode: str, options: OracleOptions, progress) -> Boot:
    initramfs = payload_initramfs(kernel, tools, PROBE)
    result = run_l1(
        kernel,
        tools,
        initramfs,
        nested=True,
        protected=mode == "protected",
        timeout_s=options.timeout_s,
        progress=progress,
    )
    probe = _parse_probe(result.output)
    _check_came_up(kernel, mode, result, probe)
    return Boot(kernel, mode, result, probe)


def run_oracle(options: OracleOptions, progress: Progress) -> OracleRun:
    """Set up everything, boot every kernel in every mode, write the report if asked.

    A user's kernel is checked before anything is installed or downloaded.
    """
    start = time.monotonic()
    bad = [k for k in options.kernels if k not in DEBIAN_KERNELS]
    if bad:
        raise OracleSetupError(f"unknown kernel {bad[0]!r}: expected one of {DEBIAN_KERNELS}")
    bad = [m for m in options.modes if m not in MODES]
    if bad:
        raise OracleSetupError(f"unknown mode {bad[0]!r}: expected one of {MODES}")
    if options.out is not None:
        _check_writable(options.out)
    kernels = []
    if options.kernel_image is not None:
        kernels.append(user_kernel(options.kernel_image, options.modules))
    tools = ensure_host_tools(progress)
    kernels += [debian_kernel(which, progress) for which in options.kernels]  # type: ignore[arg-type]
    run = OracleRun(tools=tools, kernels=kernels)
    run.setup_s = time.monotonic() - start
    progress(f"set-up done in {run.setup_s:.1f} s")
    for kernel in run.kernels:
        for mode in options.modes:
            run.boots.append(_boot_one(kernel, tools, mode, options, progress))
    run.wall_s = time.monotonic() - start
    if options.out is not None:
        write_report(options.out, render_report(run))
    return run


def render_report(run: OracleRun) -> str:
    lines = [
        "# pkvm-sim oracle",
        "",
        "Real KVM and real pKVM, nested under QEMU (TCG), beside the model.",
        "",
        "## Kernels",
        "",
        "| kernel | version | `uname -r` | package | mode | KVM says | /init (s) | off (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in run.boots:
        k = b.kernel
        pkg = f"{k.package} {k.package_version}" if k.package else str(k.image)
        lines.append(
            f"| {k.name} | {k.version} | {b.probe.get('release', '?')} | {pkg} | {b.mode}"
            f" | {b.result.kvm_mode} | {b.result.init_s:.1f} | {b.result.elapsed_s:.1f} |"
        )
    lines += ["", f"Set-up {run.setup_s:.1f} s; wall time {run.wall_s:.1f} s.", ""]
    return "\n".join(lines)


def _check_writable(path: Path) -> None:
    """Fail before minutes of booting, not after, when the report cannot be written."""
    if path.is_dir():
        raise OracleSetupError(f"--out {path}: a directory; expected a file name (oracle.md)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OracleSetupError(f"--out {path}: cannot create {path.parent}: {exc}") from None
    if not os.access(path.parent, os.W_OK):
        raise OracleSetupError(f"--out {path}: {path.parent} is not writable")


def write_report(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OracleSetupError(f"--out {path}: cannot write the report: {exc}") from None
