"""The oracle's flow, in one place: set up, replay streams on each kernel, judge, report.

For each kernel and mode the streams of ``sources_for(mode)`` run through real KVM (the C
VMM in an L1 kernel under QEMU, a fresh VM per stream, ``batch`` streams per boot) and
through the model (``sim.oracle.evaluate``); every divergence class is shrunk on the
kernel to a minimal stream, and ``reports/oracle.md`` says what matched.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sim.oracle import report
from sim.oracle.boot import DEFAULT_TIMEOUT_S
from sim.oracle.errors import OracleSetupError, Progress
from sim.oracle.evaluate import evaluate
from sim.oracle.kvm import run_streams, run_streams_stats
from sim.oracle.setup import Kernel, Tools, debian_kernel, ensure_host_tools, user_kernel
from sim.oracle.stream import Observation, Stream
from sim.oracle.streams import (
    known_divergence_streams,
    kut_streams,
    pkvm_streams,
    random_streams,
    real_guest_streams,
)

DEBIAN_KERNELS = ("newest", "bookworm")
MODES = ("nested", "protected")
DEFAULT_RANDOM = 1000
DEFAULT_BATCH = 250  # streams per boot: an L1 wedged by a long run loses only one batch


@dataclass(frozen=True)
class OracleOptions:
    kernels: tuple[str, ...] = DEBIAN_KERNELS  # Debian kernels by name
    kernel_image: Path | None = None  # --kernel: a user's build, booted as "user"
    modules: Path | None = None
    modes: tuple[str, ...] = MODES
    timeout_s: float = DEFAULT_TIMEOUT_S
    out: Path | None = None  # the report (Markdown), written at the end
    random: int = DEFAULT_RANDOM  # seeded random streams per kernel (nested mode)
    seed: int = 1
    batch: int = DEFAULT_BATCH
    minimise: bool = True  # shrink each divergence class on the kernel (a boot per round)


@dataclass
class OracleRun:
    tools: Tools
    kernels: list[Kernel] = field(default_factory=list)
    runs: list[report.KernelRun] = field(default_factory=list)
    setup_s: float = 0.0
    wall_s: float = 0.0

    @property
    def unexplained(self) -> int:
        return sum(len(c.unexplained) for run in self.runs for c in run.comparisons)


def sources_for(mode: str, options: OracleOptions) -> dict[str, list[Stream]]:
    """The streams one kernel replays in ``mode``, by source."""
    if mode == "protected":
        return {"pkvm": pkvm_streams()}
    sources = {
        "real-guests": real_guest_streams(),
        "kvm-unit-tests": kut_streams(),
        "known-divergences": known_divergence_streams(),
    }
    if options.random:
        sources[f"random (seed {options.seed})"] = random_streams(options.seed, options.random)
    return sources


def qemu_version(tools: Tools) -> str:
    out = subprocess.run([str(tools.qemu), "--version"], capture_output=True, text=True)
    first = (out.stdout or "").splitlines()[:1]
    return first[0].removeprefix("QEMU emulator version ").strip() if first else "?"


def _replay(
    kernel: Kernel,
    tools: Tools,
    mode: str,
    streams: Sequence[Stream],
    options: OracleOptions,
    progress: Progress,
) -> tuple[list[Observation], str]:
    """Every stream through real KVM, ``options.batch`` per boot; and KVM's mode line."""
    observations: list[Observation] = []
    kvm_mode = ""
    for i in range(0, len(streams), options.batch):
        chunk = list(streams[i : i + options.batch])
        progress(f"{kernel.name} {mode}: streams {i + 1}-{i + len(chunk)} of {len(streams)}")
        obs, stats = run_streams_stats(
            kernel,
            tools,
            chunk,
            protected_mode=mode == "protected",
            timeout_s=options.timeout_s,
            progress=progress,
        )
        observations += obs
        kvm_mode = stats.kvm_mode or kvm_mode
    return observations, kvm_mode


def _one(kernel: Kernel, tools: Tools, mode: str, options: OracleOptions, progress, qemu: str):
    start = time.monotonic()
    sources = sources_for(mode, options)
    streams = [s for ss in sources.values() for s in ss]
    observations, kvm_mode = _replay(kernel, tools, mode, streams, options, progress)
    wall = time.monotonic() - start
    release = next((o.kernel for o in observations if o.kernel), kernel.release or kernel.name)
    if kernel.release and release != kernel.release:
        raise OracleSetupError(
            f"{kernel.describe()}, {mode}: uname -r says {release!r}, expected {kernel.release!r}"
        )
    protected = mode == "protected"

    def rerun(cands: list[Stream]) -> list[Observation]:
        progress(f"{kernel.name} {mode}: minimising, {len(cands)} candidate streams")
        return run_streams(
            kernel, tools, cands, protected_mode=protected, timeout_s=options.timeout_s
        )

    label = f"pKVM ({kvm_mode})" if protected else f"nested KVM ({kvm_mode})"
    run = evaluate(
        sources,
        observations,
        kernel=release,
        qemu=qemu,
        mode=label,
        wall_time=wall,
        rerun=rerun if options.minimise else None,
    )
    bad = sum(len(c.unexplained) for c in run.comparisons)
    progress(f"{kernel.name} {mode}: {len(streams)} streams, {bad} unexplained mismatches")
    return run


def run_oracle(options: OracleOptions, progress: Progress) -> OracleRun:
    """Set up everything, replay the streams on every kernel in every mode, judge them
    against the model, and write the report if asked.

    A user's kernel and the report path are checked before anything is installed.
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
    qemu = qemu_version(tools)
    for kernel in run.kernels:
        for mode in options.modes:
            run.runs.append(_one(kernel, tools, mode, options, progress, qemu))
    run.wall_s = time.monotonic() - start
    if options.out is not None:
        write_report(options.out, render_report(run, options))
    return run


def render_report(run: OracleRun, options: OracleOptions) -> str:
    text = report.render(run.runs)
    kernels = ", ".join(k.describe() for k in run.kernels)
    tail = [
        "## How this report was made",
        "",
        f"- kernels: {kernels}",
        f"- modes: {', '.join(options.modes)}; random streams per kernel: {options.random}"
        f" (seed {options.seed}); {options.batch} streams per boot",
        f"- set-up {run.setup_s:.1f} s; whole run {run.wall_s:.1f} s (2-core machine,"
        " QEMU TCG, one L1 boot per batch)",
        "",
    ]
    return text.rstrip("\n") + "\n\n" + "\n".join(tail)


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
