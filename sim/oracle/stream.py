"""What the oracle runs and what it observes: the contract between real KVM and the model.

A :class:`Stream` says everything the VMM does to one fresh VM: its vCPUs and RAM, the
guest memory it fills before the vCPU runs (zeroed tables, level-1 entries, deliberate
garbage), the register writes the L2 vCPU program makes (in order), the pages a
protected guest shares with the host, the ITS commands it writes into the queue one at a
time (bumping GITS_CWRITER after each and reading GITS_CREADR back), and the restores
into a second VM to try afterwards.

An :class:`Observation` is what came back, from the real kernel (``sim.oracle.vmm``) or
from ``sim.its.VirtualITS`` configured the same way (``sim.oracle.model``): CREADR after
each command, guest memory as sparse 64-bit words after each phase, the register values
as the VMM reads them, and the return value of each KVM ioctl. Both sides produce the
same shape, so comparing them is comparing two :class:`Observation` objects.

Guest RAM is one memslot at ``ram_base``; the L2 program and its data live in a separate
memslot outside it (``CODE_BASE``), so every word of RAM is ITS-visible data.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

L2_RAM_BASE = 0x4000_0000
CODE_BASE = 0x1000_0000
# The code memslot is guest memory to KVM (an ITT placed there is reachable) but holds
# the VMM's L2 program, which the model does not have: streams keep their tables out of
# [CODE_BASE, CODE_BASE + CODE_SIZE).
CODE_SIZE = 4 << 20
# An address in no memslot, for tables placed outside guest memory on purpose.
NO_MEMSLOT = 0x2000_0000
ITS_BASE = 0x0808_0000
GICD_BASE = 0x0800_0000
GICR_BASE = 0x080A_0000

Hex = str  # a hexadecimal string without "0x", bytes in memory order


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegWrite(_Strict):
    """A 64-bit MMIO write by the L2 vCPU: ``GITS_<reg>`` or ``GICR<vcpu>_<reg>``."""

    reg: str  # e.g. "GITS_BASER0", "GITS_CBASER", "GITS_CTLR", "GICR1_PROPBASER", "GICR0_CTLR"
    value: int


class MemFill(_Strict):
    """Bytes the VMM writes into guest RAM before the vCPU first runs."""

    gpa: int
    data: Hex


class Restore(_Strict):
    """Restore the saved image into a second, fresh VM after ``patches`` are applied.

    The second VM is configured like the first (vCPUs, RAM, protection, ``share``). Its
    RAM gets the image (RAM after the last phase the first VM ran: SAVE_PENDING_TABLES,
    else SAVE_TABLES, else the commands) and then ``patches``, written by the VMM; a
    protected one then runs the first VM's prologue (it faults all of RAM in and
    MEM_SHAREs the ``share`` pages) and pauses. Registers are restored
    from the first VM's ``regs`` in the documented order: every redistributor's PROPBASER
    and PENDBASER, then each GICR_CTLR (EnableLPIs), then GITS_CBASER, GITS_IIDR,
    GITS_CREADR, GITS_CWRITER, GITS_BASER0, GITS_BASER1, RESTORE_TABLES, GITS_CTLR (written
    whatever RESTORE_TABLES returned). Only if it returned 0: ``commands`` (the
    destination's guest pointer starts from the restored GITS_CBASER and GITS_CWRITER,
    as the source's starts from the values its ``regs`` wrote), then
    SAVE_TABLES (``resave_ret``). Then the registers and RAM are read.
    """

    name: str
    patches: tuple[MemFill, ...] = ()
    # Commands the destination's vCPU queues after GITS_CTLR is restored (as in the
    # source VM: one at a time, CWRITER bumped, CREADR read back), before the re-save.
    commands: tuple[Hex, ...] = ()


class Stream(_Strict):
    name: str
    nr_vcpus: int = Field(2, ge=1, le=8)
    ram_base: int = L2_RAM_BASE
    ram_size: int = 16 << 20
    protected: bool = False
    # The L2 program writes command k at CBASER.Physical_Address + (CWRITER + 32 k) mod
    # the queue size, CBASER and CWRITER being the last values ``regs`` wrote to them.
    # Pages (gpa, 4 KiB page count) a protected guest MEM_SHAREs before anything else.
    # Ignored for a non-protected VM, whose RAM is the host's.
    share: tuple[tuple[int, int], ...] = ()
    fill: tuple[MemFill, ...] = ()
    regs: tuple[RegWrite, ...] = ()
    commands: tuple[Hex, ...] = ()  # 32 bytes (64 hex digits) each, little-endian dwords
    # Guest writes the vCPU makes after the last command, before the registers are read
    # and SAVE_TABLES (e.g. clearing a level-1 device-table entry KVM has used).
    fill_after: tuple[MemFill, ...] = ()
    save: bool = True
    save_pending: bool = True
    restores: tuple[Restore, ...] = ()
    # Host-side reads of guest pages by the VMM after the commands (pKVM: an unshared
    # page must not be readable).
    host_reads: tuple[int, ...] = ()


Words = dict[int, int]  # gpa (8-byte aligned) -> non-zero 64-bit little-endian word


class Phase(_Strict):
    """One KVM ioctl (or the command run) and guest RAM right after it.

    RAM as the VMM can read it: every page of a non-protected VM; of a protected VM only
    the pages its guest shared (the others are not in the host's stage-2).
    """

    ret: int = 0  # 0 or a negative errno, as the ioctl returned
    memory: Words = {}


class RestoreResult(_Strict):
    name: str
    ret: int  # KVM_DEV_ARM_ITS_RESTORE_TABLES
    resave_ret: int | None = None  # SAVE_TABLES in the second VM, if the restore succeeded
    memory: Words = {}  # the second VM's RAM after the re-save
    regs: dict[str, int] = {}
    creadr: tuple[int, ...] = ()  # GITS_CREADR after each of the restore's commands


class Observation(_Strict):
    name: str
    source: Literal["kvm", "model"]
    kernel: str = ""  # uname -r of the L1 kernel, or the model's kernel generation
    creadr: tuple[int, ...] = ()  # GITS_CREADR read by the vCPU after each command
    commands: Phase = Phase()  # RAM after the last command (KVM's writes while running)
    regs: dict[str, int] = {}  # GITS_* and GICR<n>_* as the VMM reads them after the run
    save: Phase | None = None
    save_pending: Phase | None = None
    restores: tuple[RestoreResult, ...] = ()
    host_reads: dict[int, str] = {}  # gpa -> "ok" | "fault"
    # Why the run stopped early (an ioctl that failed unexpectedly, an L2 exception);
    # the fields above hold what was observed before it. Empty when the run completed.
    error: str = ""
