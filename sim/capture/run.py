"""``pkvm-sim capture``'s flow: set up, boot the guest with its devices, read everything back.

1. Set-up as ``pkvm-sim oracle`` does (``sim.oracle.setup``: QEMU, busybox, Debian's kernel
   by name or the user's ``--kernel``/``--modules``; cached), an initramfs with the device
   drivers (``sim.oracle.boot.kernel_modules``: dependency order from modinfo) and the
   capture payload (:mod:`sim.capture.guest`).
2. Boot under QEMU TCG (``virt,gic-version=3,its=on``, no EL2: QEMU's own ITS serves the
   guest) with ``-trace 'gicv3_its*'`` into a log and a QMP socket; ``-no-shutdown`` keeps
   QEMU alive after the guest's power-off (``run_l1(after_power_off=...)``).
3. While the VM is stopped: the 64 KiB (GITS_CBASER-sized) command queue with
   ``pmemsave`` at the address the guest wrote to GITS_CBASER, then every ITT page, its
   ``struct page`` and ``kmem_cache`` (:mod:`sim.capture.colocation`); then QEMU quits.
4. The raw queue is checked against the trace field by field (:mod:`sim.capture.queue`):
   any mismatch fails the capture (exit 1, the field named), nothing is written.
5. One capture file (``sim.capture.format``, ``pkvm-sim-capture/1``) and a scenario that
   replays it (``guest.its_driver: replay``).

The shutdown phase: the payload's last act is a read of GITS_IIDR through /dev/mem
(busybox ``devmem``), which QEMU traces; commands processed after that read are the
guest's power-off (``phase: shutdown``). A guest without /dev/mem gets no phase split
(every command ``boot``) and a note saying so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import ValidationError

from sim.capture import guest as guest_mod
from sim.capture.colocation import ITTRecord, colocate, layout_for
from sim.capture.format import (
    FORMAT,
    Capture,
    CapturedCommand,
    CapturedDevice,
    GuestInfo,
    ITTInfo,
    ITTPage,
    KernelInfo,
    QemuInfo,
    Registers,
    dump_capture,
    parse_capture,
    write_atomic,
)
from sim.capture.qemu import KINDS, Device, device_args, guest_modules
from sim.capture.qmp import QMP, GuestRAM, QMPError
from sim.capture.queue import CrossCheck, commands_in_order, cross_check, decode_fields, geometry
from sim.capture.symbols import Kallsyms, KernelMap, KernelMapError
from sim.capture.trace import GITS_CBASER, Trace, TraceError, read_trace
from sim.oracle.boot import (
    OUTPUT_MODULES,
    BootError,
    build_initramfs,
    kernel_modules,
    qemu_argv,
    run_l1,
)
from sim.oracle.errors import OracleSetupError, Progress
from sim.oracle.setup import Kernel, Tools, debian_kernel, ensure_host_tools, user_kernel

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MEMORY_MIB = 1024
DEFAULT_CPUS = 2
RAM_BASE = 0x4000_0000  # QEMU virt's RAM (hw/arm/virt.c: VIRT_MEM)
ITS_BASE = 0x0808_0000  # QEMU virt's ITS frame (VIRT_GIC_ITS)
GITS_IIDR = 0x4
GITS_TYPER = 0x8
MARKER_LINE = "pkvm-sim-capture: its marker"
SHUTDOWN_WAIT_S = 20.0
# PCI vendor:device -> kind (QEMU's IDs: virtio transitional 1af4:100x, modern 1af4:104x)
PCI_KINDS = {
    "1af4:1000": "virtio-net", "1af4:1041": "virtio-net",
    "1af4:1001": "virtio-blk", "1af4:1042": "virtio-blk",
    "1af4:1005": "virtio-rng", "1af4:1044": "virtio-rng",
    "1b36:0010": "nvme",
}  # fmt: skip
RATE_HZ = {"virtio-net": 2000.0, "virtio-blk": 500.0, "virtio-rng": 50.0, "nvme": 1000.0}


class CaptureFailed(OracleSetupError):
    """The capture ran but its result cannot be trusted (a cross-check mismatch, ...)."""

    exit_code = 1


class QemuRefused(OracleSetupError):
    """QEMU would not start with this device mix: its own message."""


@dataclass(frozen=True)
class CaptureOptions:
    devices: tuple[Device, ...]
    out: Path | None = None  # default: captures/linux-<version>.capture.json
    scenario: Path | None = None  # default: the capture's name with .yaml
    kernel: str | None = "newest"  # a Debian kernel by name; None with kernel_image
    kernel_image: Path | None = None
    modules: Path | None = None
    cpus: int = DEFAULT_CPUS
    memory_mib: int = DEFAULT_MEMORY_MIB
    timeout_s: float = DEFAULT_TIMEOUT_S
    raw_dir: Path | None = None  # also keep QEMU's ITS trace, the queue and the guest's /out


@dataclass
class CaptureResult:
    capture: Capture
    path: Path
    scenario_path: Path
    check: CrossCheck
    kernel: Kernel
    qemu_argv: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Readback:
    """What the power-off hook read while QEMU was stopped."""

    trace: Trace | None = None
    queue: bytes = b""
    out: bytes = b""
    report: guest_mod.GuestReport | None = None
    pages: list[ITTPage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    read_s: float = 0.0


def default_scenario_path(out: Path) -> Path:
    name = out.name.removesuffix(".json").removesuffix(".capture")
    return out.with_name(name + ".yaml")


def check_writable(path: Path, flag: str) -> None:
    if path.is_dir():
        raise OracleSetupError(f"{flag} {path}: a directory; expected a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OracleSetupError(f"{flag} {path}: cannot create {path.parent}: {exc}") from None
    if not os.access(path.parent, os.W_OK):
        raise OracleSetupError(f"{flag} {path}: {path.parent} is not writable")


def itt_records(commands: list[tuple[int, int, int, int]], ite_size: int) -> list[ITTRecord]:
    """Every ITT a MAPD V=1 gave, with its bytes, and whether it is still mapped at the end.

    Bytes: events x GITS_TYPER.ITT_entry_size, at least 256 (its_create_device: ``sz =
    max(nr_ites * ite_size, ITS_ITT_ALIGN)``).
    """
    current: dict[int, int] = {}  # DeviceID -> ITT mapped now
    out: list[ITTRecord] = []
    for dw in commands:
        name, f = decode_fields(dw)
        if name != "MAPD":
            continue
        dev = f["DeviceID"]
        if f["V"]:
            nbytes = max((1 << (f["Size"] + 1)) * ite_size, 256)
            out.append(ITTRecord(dev, f["ITT_addr"], nbytes, True))
            current[dev] = f["ITT_addr"]
        else:
            current.pop(dev, None)
    return [
        ITTRecord(r.device_id, r.addr, r.nbytes, current.get(r.device_id) == r.addr) for r in out
    ]


def _ite_size(trace: Trace) -> int:
    typer = trace.reads.get(GITS_TYPER)
    return ((typer >> 4) & 0xF) + 1 if typer is not None else 8


def _hook(
    rb: _Readback,
    sock: Path,
    trace_path: Path,
    scratch: Path,
    options: CaptureOptions,
    kernel: Kernel,
    progress: Progress,
):
    def after_power_off(out: bytes | None) -> None:
        start = time.monotonic()
        qmp = QMP(sock)
        try:
            qmp.connect()
            qmp.wait_status("shutdown", SHUTDOWN_WAIT_S)
            trace = read_trace(trace_path)
            if trace.cbaser is None:
                raise CaptureFailed("the guest never wrote GITS_CBASER (no ITS driver probed?)")
            geo = geometry(trace.cbaser)
            ram = GuestRAM(qmp, scratch, RAM_BASE, options.memory_mib << 20)
            rb.queue = ram.save(geo.base, geo.size)
            rb.out = out or b""
            rb.report = guest_mod.parse_out(out)
            syms = Kallsyms(rb.report.kallsyms)
            kmap = KernelMap(rb.report.kcore_head, syms)
            cmds = [dw for _, dw in commands_in_order(rb.queue, trace)]
            records = itt_records(cmds, _ite_size(trace))
            layout = layout_for(rb.report.release or kernel.version)
            rb.pages, rb.notes = colocate(records, ram, kmap, syms, layout, progress)
            rb.trace = trace
        except (QMPError, guest_mod.GuestReportError, KernelMapError, TraceError) as exc:
            raise CaptureFailed(f"reading the stopped guest: {exc}") from None
        finally:
            rb.read_s = time.monotonic() - start
            qmp.quit()
            qmp.close()

    return after_power_off


def _qemu_refusal(console: str, qemu: Path) -> str | None:
    """QEMU's own error lines when it exited before the guest ran, else None."""
    prefix = f"{qemu.name}:"
    lines = [ln for ln in console.splitlines() if ln.startswith(prefix)]
    return "\n".join(lines) if lines else None


def qemu_version(tools: Tools) -> str:
    out = subprocess.run([str(tools.qemu), "--version"], capture_output=True, text=True)
    first = (out.stdout or "").splitlines()[:1]
    return first[0].removeprefix("QEMU emulator version ").strip() if first else "?"


def _device_names(devices: tuple[Device, ...]) -> dict[str, list[str]]:
    counts: dict[str, int] = {}
    for d in devices:
        counts[d.kind] = counts.get(d.kind, 0) + 1
    names: dict[str, list[str]] = {}
    for d in devices:
        names.setdefault(d.kind, []).append(d.kind if counts[d.kind] == 1 else d.qemu_id)
    return names


def _phase_split(trace: Trace, console: str) -> int | None:
    """Commands processed before the payload's GITS_IIDR marker read, or None (no marker)."""
    if MARKER_LINE not in console or not trace.marker_reads:
        return None
    return trace.marker_reads[-1]


def build_capture(
    options: CaptureOptions,
    kernel: Kernel,
    tools: Tools,
    argv: list[str],
    rb: _Readback,
    console: str,
) -> tuple[Capture, CrossCheck, list[str]]:
    assert rb.trace is not None and rb.report is not None
    trace = rb.trace
    check = cross_check(rb.queue, trace)
    if not check.ok:
        shown = "\n".join("  " + m.describe() for m in check.mismatches[:20])
        more = len(check.mismatches) - 20
        raise CaptureFailed(
            f"the raw queue and QEMU's trace disagree on {len(check.mismatches)} fields"
            f" ({check.compared} commands compared):\n{shown}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    notes = list(rb.notes)
    ordered = commands_in_order(rb.queue, trace)
    split = _phase_split(trace, console)
    if split is None:
        notes.append("no GITS_IIDR marker read (no /dev/mem?): every command is phase boot")
    commands = []
    for i, (seq, dw) in enumerate(ordered):
        name, fields = decode_fields(dw)
        phase = "shutdown" if split is not None and seq >= split else "boot"
        commands.append(
            CapturedCommand(
                index=i, raw=[f"{d:016x}" for d in dw], phase=phase, decoded={"cmd": name, **fields}
            )
        )
    if not commands:
        raise CaptureFailed("the guest issued no ITS commands (no MSI-capable device probed?)")
    # DeviceIDs from the guest's own PCI listing
    by_id = {f.device_id: f for f in rb.report.pci}
    names = _device_names(options.devices)
    taken: dict[str, int] = {}
    devices: dict[int, list[ITTInfo]] = {}
    for _, dw in ordered:
        name, f = decode_fields(dw)
        if name == "MAPD" and f["V"]:
            itts = devices.setdefault(f["DeviceID"], [])
            info = ITTInfo(addr=f["ITT_addr"], size=f["Size"])
            if info not in itts:
                itts.append(info)
    captured = []
    for dev_id in sorted(devices):
        pci = by_id.get(dev_id)
        kind = PCI_KINDS.get(pci.ids) if pci else None
        label = None
        if kind is not None and kind in names:
            k = taken.get(kind, 0)
            label = names[kind][k] if k < len(names[kind]) else f"{kind}{k}"
            taken[kind] = k + 1
        captured.append(CapturedDevice(device_id=dev_id, name=label, itts=devices[dev_id]))
    baser = trace.baser()
    generation = "6.1" if layout_for(rb.report.release or kernel.version).name == "6.1" else "7.3"
    mix = ", ".join(d.describe() for d in options.devices)
    notes += [
        f"captured by pkvm-sim capture: {kernel.describe()}; QEMU {qemu_version(tools)} TCG,"
        f" virt gic-version=3 its=on, {options.cpus} vCPUs, {options.memory_mib} MiB",
        f"devices: {mix}",
        f"guest: {rb.report.version}",
        f"cross-check: {check.compared} commands, {check.fields} fields, raw queue vs QEMU trace,"
        f" 0 mismatches; {check.trace_only} commands only in the trace (queue wrapped)",
        "GITS_BASER read back: "
        + ", ".join(f"{n}={v:#x}" for n, v in sorted(trace.baser_read().items())),
        "colocation: struct page via /proc/kcore's vmemmap and QEMU gva2gpa; kmem_cache"
        f" layout of {layout_for(rb.report.release or kernel.version).name}; liveness of slab"
        " objects by the one-freelist-word rule (see sim/capture/colocation.py)",
    ]
    for f in rb.report.pci:
        notes.append(f"pci {f.address} {f.ids} {f.driver} MSI irqs {len(f.msi_irqs)}")
    capture = Capture(
        format=FORMAT,
        kernel=KernelInfo(release=rb.report.release or kernel.release or kernel.version,
                          generation=generation),
        qemu=QemuInfo(command_line=argv, version=qemu_version(tools)),
        guest=GuestInfo(ram_base=RAM_BASE, ram_size=options.memory_mib << 20, vcpus=options.cpus),
        registers=Registers(
            gits_cbaser=trace.writes[GITS_CBASER], gits_baser=[baser.get(n, 0) for n in range(8)]
        ),
        devices=captured,
        commands=commands,
        colocation=rb.pages,
        notes=notes,
    )  # fmt: skip
    return capture, check, notes


def mapped_vectors(capture: Capture) -> dict[int, int]:
    """Per DeviceID: events still mapped when the boot phase ends (MAPTI/MAPI less DISCARD)."""
    live: dict[int, set[int]] = {}
    for c in capture.commands:
        if c.phase != "boot":
            break
        name, f = decode_fields(tuple(c.raw))  # type: ignore[arg-type]
        if name in ("MAPTI", "MAPI"):
            live.setdefault(f["DeviceID"], set()).add(f["EventID"])
        elif name == "DISCARD":
            live.setdefault(f["DeviceID"], set()).discard(f["EventID"])
        elif name == "MAPD" and not f["V"]:
            live.pop(f["DeviceID"], None)
    return {d: len(e) for d, e in live.items()}


def _driver_facts(device: Device | None) -> str:
    """The device's MSI-X table size and driver facts the modelled twin uses (scenario.py)."""
    if device is None:
        return ""
    table = {"virtio-net": device.size, "virtio-rng": device.size}.get(device.kind, device.size + 1)
    facts = f", msix_table_size: {table}"
    if device.kind in ("virtio-blk", "nvme"):  # queue vectors: managed affinity
        facts += f", managed_vectors: {device.size}"
    if device.kind == "nvme":  # nvme_pci_enable probes with 1 vector; nvme_shutdown frees
        facts += ", probe_vectors: 1, frees_at_shutdown: true"
    return facts


def scenario_text(
    capture: Capture,
    capture_ref: str,
    name: str,
    command: str,
    devices: tuple[Device, ...] = (),
) -> str:
    """A scenario replaying the capture under every proposal (the bundled real-guest shape).

    ``devices``: the mix the capture was made with, in slot order, for each device's MSI-X
    table size (what QEMU offered); the vectors are what the guest left mapped.
    """
    gen = capture.kernel.generation
    allocator = "linux-kzalloc" if gen == "6.1" else "linux-shared-pool"
    vectors = mapped_vectors(capture)
    by_slot = {(i + 1) << 3: d for i, d in enumerate(devices)}
    lines = [
        f"# Question: what does each proposal expose and cost for this captured Linux"
        f" {capture.kernel.release} guest?",
        f"# Written by: {command}",
        f"# The guest's own ITS commands ({len(capture.commands)}), ITT placement and page",
        f"# neighbours ({capture_ref}), replayed under every proposal.",
        f"name: {name}",
        f"question: What does each proposal expose and cost for the captured Linux"
        f" {capture.kernel.release} guest?",
        "seed: 1",
        "guest:",
        f"  ram_mib: {capture.guest.ram_size >> 20}",
        f"  vcpus: {capture.guest.vcpus}",
        f"  allocator: {allocator}",
        "  secret_density: 0.25",
        "  its_driver: replay",
        f"  capture: {capture_ref}",
        "  colocated_as: density",
        "  power_off: true",
        "devices:",
        "  # DeviceID = PCI requester ID; vectors = the events the captured boot leaves mapped;",
        "  # msix_table_size = what QEMU offered (the replay plays the capture whatever they say)",
    ]
    for d in capture.devices:
        kind = next((k for k in KINDS if d.name and d.name.startswith(k)), "")
        n = max(1, vectors.get(d.device_id, 0))
        lines.append(
            f"  - {{name: {d.name or f'dev{d.device_id:#x}'}, device_id: {d.device_id:#06x},"
            f" vectors: {n}, rate_hz: {RATE_HZ.get(kind, 1000.0):g}"
            f"{_driver_facts(by_slot.get(d.device_id))}}}"
        )
    lines += [
        "workload:",
        "  duration_ms: 60",
        "  affinity_moves_per_s: 50",
        "migration:",
        "  at_ms: 20",
    ]
    return "\n".join(lines) + "\n"


def scenario_name(path: Path) -> str:
    stem = path.name.removesuffix(".yaml").lower()
    name = re.sub(r"[^a-z0-9-]+", "-", stem).strip("-")
    return name if name and name[0].isalnum() else f"capture-{name}".strip("-")


def keep_raw(directory: Path, trace_path: Path, rb: _Readback) -> None:
    """QEMU's ITS trace, the 64 KiB queue as read back, and the guest's /out (a tar file)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trace_path, directory / "its.trace")
        (directory / "queue.bin").write_bytes(rb.queue)
        (directory / "guest-out.tar").write_bytes(rb.out)
    except OSError as exc:
        raise OracleSetupError(f"--raw {directory}: cannot write: {exc}") from None


def run_capture(options: CaptureOptions, progress: Progress, command: str = "pkvm-sim capture"):
    """Set up, boot, read back, check, and write the capture and its scenario."""
    start = time.monotonic()
    if not options.devices:
        raise OracleSetupError("no devices: name at least one (--virtio-net, --nvme, ...)")
    if options.out is not None:
        check_writable(options.out, "--out")
    if options.scenario is not None:
        check_writable(options.scenario, "--scenario")
    if options.kernel_image is not None:
        kernel = user_kernel(options.kernel_image, options.modules)
        tools = ensure_host_tools(progress)
    else:
        tools = ensure_host_tools(progress)
        kernel = debian_kernel(options.kernel, progress)  # type: ignore[arg-type]
    out = options.out or Path("captures") / f"linux-{kernel.version}.capture.json"
    scenario = options.scenario or default_scenario_path(out)
    check_writable(out, "--out")
    check_writable(scenario, "--scenario")
    options = replace(options, out=out, scenario=scenario)
    modules = kernel_modules(kernel, [*OUTPUT_MODULES, *guest_modules(options.devices)])
    if modules:
        progress("modules: " + " ".join(n.removesuffix(".ko") for n, _ in modules))
    nvme = sum(d.kind == "nvme" for d in options.devices)
    initramfs = build_initramfs(tools, {}, guest_mod.payload(nvme, ITS_BASE + GITS_IIDR), modules)
    setup_s = time.monotonic() - start
    progress(f"set-up done in {setup_s:.1f} s")
    work = Path(tempfile.mkdtemp(prefix="pkvm-sim-capture-"))
    rb = _Readback()
    try:
        sock, trace_path = work / "qmp.sock", work / "its.trace"
        extra = [
            *device_args(options.devices, work),
            "-qmp", f"unix:{sock},server=on,wait=off",
            "-trace", "gicv3_its*",
            "-D", str(trace_path),
        ]  # fmt: skip
        hook = _hook(rb, sock, trace_path, work / "pmem", options, kernel, progress)
        try:
            boot = run_l1(
                kernel, tools, initramfs,
                nested=False, memory_mib=options.memory_mib, cpus=options.cpus,
                timeout_s=options.timeout_s, output_mib=64, qemu_extra=extra,
                progress=progress, after_power_off=hook,
            )  # fmt: skip
        except BootError as exc:
            refusal = _qemu_refusal(exc.console, tools.qemu)
            if refusal is not None and "pkvm-sim-oracle: init started" not in exc.console:
                raise QemuRefused(f"QEMU refused the device mix:\n{refusal}") from None
            raise
        argv = qemu_argv(
            kernel, tools, initramfs, Path("<out disk>"),
            nested=False, protected=False, cmdline_extra="",
            memory_mib=options.memory_mib, cpus=options.cpus, qemu_extra=[*extra, "-no-shutdown"],
        )  # fmt: skip
        if rb.trace is None:
            raise CaptureFailed("the guest powered off but QEMU's state was not read back")
        # The log is complete once QEMU has exited: parse it again (nothing ran since).
        final = read_trace(trace_path)
        if len(final.commands) != len(rb.trace.commands):
            raise CaptureFailed(
                f"QEMU's ITS trace holds {len(final.commands)} commands after QEMU exited but"
                f" {len(rb.trace.commands)} when the stopped guest was read (the log was not"
                " flushed, or commands ran after the power-off): the read-back is incomplete"
            )
        rb.trace = final
        try:
            capture, check, notes = build_capture(options, kernel, tools, argv, rb, boot.console)
        except ValidationError as exc:  # a recorded value the format refuses
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(x) for x in err["loc"])
            raise CaptureFailed(f"the capture does not validate: {where}: {err['msg']}") from None
        # Validate the exact text we write; then write both files whole.
        text = dump_capture(capture)
        parse_capture(text, str(out))
        ref = os.path.relpath(out.resolve(), scenario.resolve().parent)
        scen = scenario_text(capture, ref, scenario_name(scenario), command, options.devices)
        write_atomic(out, text)
        write_atomic(scenario, scen)
        if options.raw_dir is not None:
            keep_raw(options.raw_dir, trace_path, rb)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    timings = {
        "setup_s": setup_s,
        "init_s": boot.init_s,
        "boot_s": boot.elapsed_s,
        "readback_s": rb.read_s,
        "total_s": time.monotonic() - start,
    }
    return CaptureResult(capture, out, scenario, check, kernel, argv, timings, notes)
