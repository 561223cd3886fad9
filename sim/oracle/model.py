"""The model's side of the oracle: a :class:`Stream` through ``sim.its.VirtualITS``.

:func:`observe` configures a bare ``VirtualITS`` (``probe=False``, as KVM creates it) the
way the VMM configures KVM, and records what the VMM records, in the same shape:

1. a fresh machine: the VM's RAM is the host's, shared into a non-protected guest
   (``__pkvm_host_share_guest``); a protected guest's prologue faults all of it in
   (``__pkvm_host_donate_guest``), then MEM_SHAREs the ``share`` pages back one page
   at a time (``__pkvm_guest_share_host``);
2. ``fill`` as guest writes, then ``regs`` in order as the vCPU's MMIO writes;
3. each command written by the guest into the next queue slot (the guest keeps its own
   queue pointer, from the GITS_CBASER and GITS_CWRITER values it wrote), CWRITER bumped
   (wrapping at the queue size), GITS_CREADR read back; then ``fill_after``;
4. the registers as KVM's uaccess returns them, and RAM after the commands, after
   SAVE_TABLES and after SAVE_PENDING_TABLES, as sparse non-zero 64-bit words;
5. each :class:`Restore` into a fresh second VM: the saved image plus patches written by
   the VMM, the same prologue (a protected destination owns and shares RAM as the
   source did), the
   registers in the documented order (redistributors, GITS_CBASER, the other GITS_*
   registers, RESTORE_TABLES, then GITS_CTLR), any commands, then a re-save;
6. ``host_reads`` as host accesses through the stage-2 check.

RAM is observed the way the VMM can observe it: every page the host's stage-2 maps (all
of RAM for a non-protected VM; for a protected one only the pages its guest shared).
Every access, including the observer's, goes through :class:`MemorySystem`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sim.its import regs as r
from sim.its.errors import ITSError
from sim.its.kernel import BEHAVIOUR, KernelGen
from sim.its.vits import VirtualITS
from sim.memory.access import Initiator, MemorySystem, Stage2Fault
from sim.memory.ownership import HOST, PageState, Transition
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE
from sim.oracle.stream import (
    CODE_BASE,
    CODE_SIZE,
    Observation,
    Phase,
    Restore,
    RestoreResult,
    Stream,
    Words,
)

GUEST = "l2"
KERNELS = ("6.1", "7.3")  # the kernel generations the model distinguishes

# MMIO offsets of the GITS_* registers a stream may write or the VMM reads.
GITS_OFFSETS = {
    "GITS_CTLR": r.GITS_CTLR,
    "GITS_IIDR": r.GITS_IIDR,
    "GITS_TYPER": r.GITS_TYPER,
    "GITS_CBASER": r.GITS_CBASER,
    "GITS_CWRITER": r.GITS_CWRITER,
    "GITS_CREADR": r.GITS_CREADR,
    **{f"GITS_BASER{i}": r.GITS_BASER0 + 8 * i for i in range(r.GITS_BASER_NR_REGS)},
}
_GICR_RE = re.compile(r"GICR(\d+)_(CTLR|PROPBASER|PENDBASER)$")


class StreamError(ValueError):
    """A stream the VMM could not run as written (names the stream and the field)."""


def generation(kernel: str) -> str:
    """``"6.1"`` or ``"7.3"`` from a generation or an exact ``uname -r``."""
    m = re.match(r"(\d+)\.(\d+)", kernel)
    if m is None:
        raise ValueError(f"kernel {kernel!r}: expected a version such as 6.1 or 7.3.4+deb13-arm64")
    major, minor = int(m[1]), int(m[2])
    return "6.1" if (major, minor) < (6, 13) else "7.3"


def errno(error: ITSError | None) -> int:
    """An ioctl's return value: 0, or the negative errno KVM returns."""
    return 0 if error is None else error.code


# ---- one VM ---------------------------------------------------------------------------


def _machine(stream: Stream) -> MemorySystem:
    """A machine with the stream's VM before its vCPU first runs: a non-protected VM's RAM
    is the host's, shared into the guest; a protected VM owns no page yet."""
    mem = MemorySystem()
    mem.ownership.add_guest(GUEST)
    first, nr = stream.ram_base >> PAGE_SHIFT, stream.ram_size >> PAGE_SHIFT
    for gpa, count in stream.share:
        if gpa % PAGE_SIZE or not _in_ram(stream, gpa, count * PAGE_SIZE):
            raise StreamError(f"stream {stream.name}: share ({gpa:#x}, {count}) outside RAM")
    if not stream.protected:
        mem.ownership.apply(
            Transition.HOST_SHARE_GUEST, first, nr, guest=GUEST, cause="non-protected VM RAM"
        )
    return mem


def _prologue(stream: Stream, mem: MemorySystem) -> None:
    """The L2 program's prologue on a protected VM: it loads from every page of RAM, so
    pKVM donates all of it (``__pkvm_host_donate_guest`` at each stage-2 fault, the
    host's bytes kept), then MEM_SHAREs the ``share`` pages one at a time."""
    if not stream.protected:
        return
    first, nr = stream.ram_base >> PAGE_SHIFT, stream.ram_size >> PAGE_SHIFT
    mem.ownership.apply(Transition.HOST_DONATE_GUEST, first, nr, guest=GUEST, cause="fault-in")
    for gpa, count in stream.share:
        for pfn in range(gpa >> PAGE_SHIFT, (gpa >> PAGE_SHIFT) + count):
            # sharing a page twice fails (-EPERM); the guest program ignores it
            if mem.ownership.state(GUEST, pfn) is PageState.OWNED:
                mem.ownership.apply(
                    Transition.GUEST_SHARE_HOST, pfn, guest=GUEST, cause="MEM_SHARE"
                )


def _in_ram(stream: Stream, gpa: int, length: int) -> bool:
    return stream.ram_base <= gpa and gpa + length <= stream.ram_base + stream.ram_size


def _vits(stream: Stream, mem: MemorySystem, kernel: str, name: str) -> VirtualITS:
    return VirtualITS(
        nr_vcpus=stream.nr_vcpus,
        ram_base=stream.ram_base,
        ram_size=stream.ram_size,
        memory=mem,
        guest=GUEST,
        name=name,
        probe=False,
        kernel=generation(kernel),
    )


def _check_ram(stream: Stream, gpa: int, length: int, what: str) -> None:
    if not _in_ram(stream, gpa, length):
        raise StreamError(
            f"stream {stream.name}: {what} at {gpa:#x}+{length:#x} is outside guest RAM"
            f" [{stream.ram_base:#x}, {stream.ram_base + stream.ram_size:#x})"
        )


def _guest_write(stream: Stream, its: VirtualITS, gpa: int, data: bytes, what: str) -> None:
    """A store by the guest's vCPU. A protected guest's first touch of a page it does not
    have yet is a stage-2 fault that pKVM resolves by donating the host's page."""
    _check_ram(stream, gpa, len(data), what)
    if stream.protected:
        own = its.memory.ownership
        for pfn in range(gpa >> PAGE_SHIFT, ((gpa + len(data) - 1) >> PAGE_SHIFT) + 1):
            if (
                own.state(GUEST, pfn) is PageState.NOPAGE
                and own.state(HOST, pfn) is PageState.OWNED
            ):
                own.apply(Transition.HOST_DONATE_GUEST, pfn, guest=GUEST, cause="fault-in")
    its.write_guest(gpa, data)


def _write_reg(stream: Stream, its: VirtualITS, name: str, value: int) -> None:
    """One MMIO write by the vCPU: GITS_* through the ITS frame, GICR<n>_* as KVM's
    redistributor handlers (EnableLPIs is GICR_CTLR bit 0)."""
    if name in GITS_OFFSETS:
        its.mmio_write(GITS_OFFSETS[name], value)
        return
    m = _GICR_RE.match(name)
    if m is None or int(m[1]) >= stream.nr_vcpus:
        raise StreamError(
            f"stream {stream.name}: register {name!r} is not GITS_<reg> or GICR<n>_CTLR/"
            f"PROPBASER/PENDBASER with n < {stream.nr_vcpus}"
        )
    vcpu = int(m[1])
    if m[2] == "PROPBASER":
        its.write_propbaser(vcpu, value)
    elif m[2] == "PENDBASER":
        its.write_pendbaser(vcpu, value)
    else:
        its.set_lpis_enabled(vcpu, bool(value & r.GICR_CTLR_ENABLE_LPIS))


def _run_commands(
    stream: Stream, its: VirtualITS, commands: Iterable[str], cbaser: int, cwriter: int
) -> tuple[int, ...]:
    """Each command written by the guest into the queue, CWRITER bumped, CREADR read.

    The guest keeps its own copy of the queue pointer, as Linux does: command ``k`` goes
    to ``CBASER.Physical_Address + (CWRITER + 32 k) mod size`` from the CBASER and
    CWRITER values the guest wrote (``cbaser``, ``cwriter``; the address as written, before
    KVM clears bits [15:12]), and CWRITER is then written with the next offset.
    """
    base, size = r.cbaser_addr(cbaser), r.cbaser_size(cbaser)
    offset = r.cmd_offset(cwriter) % size
    creadr = []
    for i, hexcmd in enumerate(commands):
        raw = bytes.fromhex(hexcmd)
        if len(raw) != r.ITS_CMD_SIZE:
            raise StreamError(f"stream {stream.name}: command {i} is {len(raw)} bytes, not 32")
        _guest_write(stream, its, base + offset, raw, f"command {i}")
        offset = (offset + r.ITS_CMD_SIZE) % size
        its.mmio_write(r.GITS_CWRITER, offset)
        creadr.append(its.mmio_read(r.GITS_CREADR))
    return tuple(creadr)


def _written(stream: Stream, name: str) -> int:
    """The last value the stream's ``regs`` wrote to ``name`` (0 if none)."""
    value = 0
    for w in stream.regs:
        if w.reg == name:
            value = w.value
    return value


def read_regs(its: VirtualITS) -> dict[str, int]:
    """The registers as the VMM reads them: KVM_DEV_ARM_VGIC_GRP_ITS_REGS (the guest's
    GITS_* read handlers) and KVM_DEV_ARM_VGIC_GRP_REDIST_REGS (GICR<n>_CTLR with IR and
    CES, PROPBASER, PENDBASER with PTZ read as 0; all as KVM stored them, sanitised)."""
    regs = {name: its.mmio_read(off) for name, off in GITS_OFFSETS.items()}
    for vcpu in its.vcpus:
        for reg in ("CTLR", "PROPBASER", "PENDBASER"):
            regs[f"GICR{vcpu.vcpu_id}_{reg}"] = its.redist_read(vcpu.vcpu_id, f"GICR_{reg}")
    return regs


def snapshot(stream: Stream, mem: MemorySystem) -> Words:
    """RAM as the VMM reads it: non-zero 64-bit words of every page the host may read."""
    vmm = Initiator("vmm", HOST)
    first = stream.ram_base >> PAGE_SHIFT
    end = first + (stream.ram_size >> PAGE_SHIFT)
    words: Words = {}
    for pfn in mem.resident_pfns(first, end):
        if mem.ownership.state(HOST, pfn) is PageState.NOPAGE:
            continue
        base = pfn << PAGE_SHIFT
        page = memoryview(mem.read(vmm, base, PAGE_SIZE)).cast("Q")
        for i, word in enumerate(page):
            if word:
                words[base + 8 * i] = word
    return words


def _write_image(stream: Stream, mem: MemorySystem, image: Words, patches) -> None:
    """The saved image, then the patches, into the destination's RAM, written by the VMM
    (the host) before the destination's vCPU ever runs."""
    vmm = Initiator("vmm", HOST)
    pages: dict[int, bytearray] = {}
    for gpa, word in image.items():
        page = pages.setdefault(gpa & ~(PAGE_SIZE - 1), bytearray(PAGE_SIZE))
        off = gpa & (PAGE_SIZE - 1)
        page[off : off + 8] = word.to_bytes(8, "little")
    for base, data in sorted(pages.items()):
        _check_ram(stream, base, PAGE_SIZE, "saved image")
        mem.write(vmm, base, bytes(data))
    for patch in patches:
        data = bytes.fromhex(patch.data)
        _check_ram(stream, patch.gpa, len(data), "restore patch")
        mem.write(vmm, patch.gpa, data)


def _restore(
    stream: Stream, kernel: str, image: Words, regs: dict[str, int], restore: Restore
) -> RestoreResult:
    mem = _machine(stream)
    its = _vits(stream, mem, kernel, "dst")
    _write_image(stream, mem, image, restore.patches)
    _prologue(stream, mem)  # a protected destination owns and shares RAM as the source
    # Documentation/virt/kvm/devices/arm-vgic-its.rst "ITS Restore Sequence": the
    # redistributors, then GITS_CBASER, the other GITS_* registers but GITS_CTLR,
    # RESTORE_TABLES, then GITS_CTLR. VirtualITS.set_regs is that order.
    its.set_regs(
        {
            "GICR_PROPBASER": regs["GICR0_PROPBASER"],
            **{f"GICR_PENDBASER{n}": regs[f"GICR{n}_PENDBASER"] for n in range(stream.nr_vcpus)},
            **{f"GICR_CTLR{n}": regs[f"GICR{n}_CTLR"] & 1 for n in range(stream.nr_vcpus)},
            **{k: regs[k] for k in ("GITS_IIDR", "GITS_CBASER", "GITS_CREADR", "GITS_CWRITER")},
            "GITS_BASER0": regs["GITS_BASER0"],
            "GITS_BASER1": regs["GITS_BASER1"],
        }
    )
    ret = errno(its.restore_tables())
    its.mmio_write(r.GITS_CTLR, regs["GITS_CTLR"] & r.GITS_CTLR_ENABLE)
    resave_ret = None
    creadr: tuple[int, ...] = ()
    if ret == 0:
        cbaser, cwriter = regs["GITS_CBASER"], regs["GITS_CWRITER"]
        creadr = _run_commands(stream, its, restore.commands, cbaser, cwriter)
        resave_ret = errno(its.save_tables())
    return RestoreResult(
        name=restore.name,
        ret=ret,
        resave_ret=resave_ret,
        memory=snapshot(stream, mem),
        regs=read_regs(its),
        creadr=creadr,
    )


def _check_code_memslot(stream: Stream) -> None:
    """KVM reaches the VMM's code memslot as guest memory; the model has no such memory
    (nor the L2 program in it), so a stream must not place an ITT there."""
    for i, hexcmd in enumerate(stream.commands):
        raw = bytes.fromhex(hexcmd)
        if len(raw) == r.ITS_CMD_SIZE and raw[0] == 0x08:  # MAPD
            itt = int.from_bytes(raw[16:24], "little") & r.genmask(51, 8)
            if CODE_BASE <= itt < CODE_BASE + CODE_SIZE:
                raise StreamError(
                    f"stream {stream.name}: command {i} (MAPD) puts an ITT at {itt:#x}, in the"
                    f" VMM's code memslot [{CODE_BASE:#x}, {CODE_BASE + CODE_SIZE:#x})"
                )


def observe(stream: Stream, *, kernel: str) -> Observation:
    """What KVM of generation ``kernel`` would do with ``stream``, per the model."""
    _check_code_memslot(stream)
    if stream.protected and not BEHAVIOUR[KernelGen(generation(kernel))].protected_vm_type:
        # The VMM's first ioctl fails and it abandons the stream (strerror(EINVAL)).
        return Observation(
            name=stream.name,
            source="model",
            kernel=kernel,
            error="KVM_CREATE_VM: Invalid argument (errno 22)",
        )
    mem = _machine(stream)
    its = _vits(stream, mem, kernel, "src")
    _prologue(stream, mem)
    for fill in stream.fill:
        _guest_write(stream, its, fill.gpa, bytes.fromhex(fill.data), "fill")
    for reg in stream.regs:
        _write_reg(stream, its, reg.reg, reg.value)
    cbaser, cwriter = _written(stream, "GITS_CBASER"), _written(stream, "GITS_CWRITER")
    creadr = _run_commands(stream, its, stream.commands, cbaser, cwriter)
    for fill in stream.fill_after:
        _guest_write(stream, its, fill.gpa, bytes.fromhex(fill.data), "fill_after")
    commands = Phase(memory=snapshot(stream, mem))
    regs = read_regs(its)
    host = Initiator("vmm", HOST)
    host_reads = {}
    for gpa in stream.host_reads:
        try:
            mem.read(host, gpa, 8)
            host_reads[gpa] = "ok"
        except Stage2Fault:
            host_reads[gpa] = "fault"
    image = commands.memory
    save = save_pending = None
    if stream.save:
        ret = errno(its.save_tables())
        save = Phase(ret=ret, memory=snapshot(stream, mem))
        image = save.memory
    if stream.save_pending:
        ret = errno(its.save_pending_tables())
        save_pending = Phase(ret=ret, memory=snapshot(stream, mem))
        image = save_pending.memory
    restores = tuple(_restore(stream, kernel, image, regs, rs) for rs in stream.restores)
    return Observation(
        name=stream.name,
        source="model",
        kernel=generation(kernel),
        creadr=creadr,
        commands=commands,
        regs=regs,
        save=save,
        save_pending=save_pending,
        restores=restores,
        host_reads=host_reads,
    )


__all__ = [
    "GUEST",
    "KERNELS",
    "StreamError",
    "errno",
    "generation",
    "observe",
    "read_regs",
    "snapshot",
]
