"""The virtual GICv3 ITS with KVM's semantics (arch/arm64/kvm/vgic/vgic-its.c).

Modelled on the two kernels the oracle runs, chosen by ``kernel`` (:mod:`sim.its.kernel`):
Debian 7.3.4 (default) and Debian 6.1.192; every behaviour that differs between them is
a field of :class:`~sim.its.kernel.KernelBehaviour`. Every access KVM makes to guest
memory (command queue, two-level device table, property and pending tables, the zeroed
DTE of MAPD V=0 and ITE of DISCARD, migration tables) goes through
:class:`~sim.memory.guest.GuestMemory` as the host, so the pKVM ownership check applies.

Simplifications, all invisible to the guest: no translation cache, no GICv4 direct
injection, one ITS per VM, 64-bit register accesses only. MOVALL moves the LPIs whose
current target is RDbase1, as both kernels do (6.1 through vgic_copy_lpi_list(vcpu1),
7.3 through update_affinity(irq, vcpu1, vcpu2), which skips other targets): an LPI with
no target (its collection unmapped) stays, and the ITEs keep their collections, so a
later MAPC or MOVI decides again; the architecture says the same for mapped LPIs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from sim.its import regs as r
from sim.its.cmdlog import CommandLog
from sim.its.commands import (
    CLEAR,
    DISCARD,
    INT,
    INV,
    INVALL,
    MAPC,
    MAPD,
    MAPI,
    MAPTI,
    MOVALL,
    MOVI,
    SYNC,
    CommandDecodeError,
    ITSCommand,
    decode,
)
from sim.its.errors import ITSDisabledError, ITSError
from sim.its.kernel import BEHAVIOUR, DEFAULT_KERNEL, KernelGen, kernel_gen
from sim.its.tables import DTE_ESZ, ITE_ESZ
from sim.memory.access import Initiator, MemorySystem, Stage2Fault
from sim.memory.guest import GuestMemory, NotGuestMemory
from sim.memory.labels import Label, LabelKind
from sim.memory.ownership import HOST, PageState, Transition
from sim.memory.physmem import PAGE_SHIFT

VITS_TYPER_DEVBITS = 16
VITS_TYPER_IDBITS = 16
VITS_MAX_DEVID = (1 << VITS_TYPER_DEVBITS) - 1
LPI_PROP_ENABLED = 1 << 0
LPI_PROP_GROUP1 = 1 << 1
LPI_PROP_DEFAULT_PRIO = 0xA0
QEMU_VIRT_RAM_BASE = 0x4000_0000


class GuestAccessFailed(Exception):
    """``kvm_read_guest()`` / ``kvm_write_guest()`` failed: KVM returns ``-EFAULT``."""


@dataclass(slots=True)
class LPI:
    """``struct vgic_irq`` of an LPI (shared by every ITE that maps its INTID)."""

    intid: int
    target_vcpu: int | None
    enabled: bool = False
    priority: int = 0
    pending: bool = False
    refcount: int = 0


@dataclass(slots=True)
class Collection:
    collection_id: int
    target_addr: int = r.COLLECTION_NOT_MAPPED

    @property
    def mapped(self) -> bool:
        return self.target_addr != r.COLLECTION_NOT_MAPPED


@dataclass(slots=True)
class ITTEntry:
    """``struct its_ite``."""

    event_id: int
    lpi: LPI
    collection: Collection | None


@dataclass(slots=True)
class Device:
    """``struct its_device``."""

    device_id: int
    itt_addr: int
    num_eventid_bits: int
    ites: dict[int, ITTEntry] = field(default_factory=dict)


@dataclass(slots=True)
class VCPU:
    vcpu_id: int
    lpis_enabled: bool = False
    pendbaser: int = r.INITIAL_PENDBASER_VALUE  # vgic_v3_enable()


@dataclass(frozen=True)
class ITSLayout:
    """Where a probed Linux guest put its ITS and LPI tables (guest physical addresses)."""

    prop_table: int
    pend_tables: tuple[int, ...]
    device_table: int
    device_table_size: int
    device_l2_pages: tuple[int, ...]
    collection_table: int
    collection_table_size: int
    cmdq: int
    cmdq_size: int
    free_base: int  # first byte the probe left free, for the caller's ITTs


def _its_is_collection_mapped(c: Collection | None) -> bool:
    return c is not None and c.mapped


class VirtualITS:
    """KVM's vITS for one VM, plus the redistributor LPI state it depends on.

    ``VirtualITS()`` comes up as a Linux guest leaves it after probing: ``nr_vcpus`` vCPUs
    with LPIs enabled, the ITS enabled, device and collection tables sized for 16-bit
    IDs, a 64 KiB command queue, an LPI property table for ``lpi_id_bits`` INTID bits with
    every LPI enabled, one collection per vCPU (MAPC, SYNC, INVALL, SYNC as Linux sends),
    all of it in the lowest 16 MiB of ``ram_size`` bytes of RAM at ``ram_base``.

    ``memory`` defaults to a fresh machine where the guest is a non-protected VM (its RAM
    is the host's, shared into the guest); pass your own to model a protected one. With
    ``probe=False`` the ITS is as KVM creates it (disabled, no tables): a migration
    destination, which the VMM fills with :meth:`set_regs` and :meth:`restore_tables`.
    ``initiator`` replaces the host CPU as the one making KVM's guest-memory accesses.
    ``kernel`` picks the KVM whose behaviour is modelled where the two kernels differ
    (``"7.3"``, the default, or ``"6.1"``).
    ``clears_entries=False`` models a KVM that keeps its tables out of guest memory (a
    serializing KVM): MAPD V=0 and DISCARD then leave guest memory alone, where both
    kernels zero the DTE and the ITE.
    """

    def __init__(
        self,
        *,
        nr_vcpus: int = 4,
        ram_base: int = QEMU_VIRT_RAM_BASE,
        ram_size: int = 2 << 30,
        lpi_id_bits: int = 16,
        two_level_device_table: bool = False,
        its_enabled: bool = True,
        lpis_enabled: bool = True,
        memory: MemorySystem | None = None,
        guest: str = "guest",
        name: str = "vm",
        probe: bool = True,
        initiator: Initiator | None = None,
        kernel: KernelGen | str = DEFAULT_KERNEL,
        clears_entries: bool = True,
        clears_ites: bool | None = None,
    ) -> None:
        self.kernel = kernel_gen(kernel)
        self.behaviour = BEHAVIOUR[self.kernel]
        if not 1 <= nr_vcpus <= 512:
            raise ValueError("nr_vcpus must be 1..512")
        if not 14 <= lpi_id_bits <= r.INTERRUPT_ID_BITS_ITS:
            raise ValueError("lpi_id_bits must be 14..16 (LPIs start at 8192; KVM caps at 16)")
        # The Linux probe lays its tables out at the bottom of RAM (16 MiB up to 238 vCPUs,
        # more for more pending tables) and leaves 16 MiB above for ITTs; a bare ITS
        # needs no room.
        min_ram = (
            probe_area(nr_vcpus, two_level_device_table, lpi_id_bits) + PROBE_ITT_ROOM
            if probe
            else r.SZ_64K
        )
        if ram_base % r.SZ_64K or ram_size < min_ram or ram_size % r.SZ_64K:
            raise ValueError(f"guest RAM must be 64 KiB aligned and at least {min_ram:#x} bytes")
        if memory is None:
            memory = MemorySystem()
            memory.ownership.add_guest(guest)
            memory.ownership.apply(
                Transition.HOST_SHARE_GUEST,
                ram_base >> PAGE_SHIFT,
                ram_size >> PAGE_SHIFT,
                guest=guest,
                cause="non-protected VM: guest RAM stays the host's",
            )
        self.memory = memory
        self.name = name
        self.clears_entries = clears_entries
        self.clears_ites = clears_entries if clears_ites is None else clears_ites
        # A KVM that runs its command queue from elsewhere than guest memory (the queue
        # EL2 forwards under share-cmdq-shadow): read(gpa, length) for the queue slots.
        self.cmdq_reader: Callable[[int, int], bytes] | None = None
        # Who performs KVM's table accesses: the host CPU, unless a proposal puts the
        # ITS behind an IOMMU (then a DMA initiator).
        kvm = initiator or Initiator(f"{name}.kvm-vits", HOST)
        self.kvm = GuestMemory(memory, kvm, ram_base, ram_size)
        self.guest = GuestMemory(memory, Initiator(f"{name}.vcpu", guest), ram_base, ram_size)
        self.vcpus = [VCPU(i) for i in range(nr_vcpus)]
        self.propbaser = r.INITIAL_PROPBASER_VALUE  # set by vgic_its_create()
        self.lpis: dict[int, LPI] = {}
        self.abi_rev = 0
        self.enabled = False
        self.cbaser = 0
        self.creadr = 0
        self.cwriter = 0
        self.baser_device_table = self._initial_baser(r.GITS_BASER_TYPE_DEVICE)
        self.baser_coll_table = self._initial_baser(r.GITS_BASER_TYPE_COLLECTION)
        self.devices: dict[int, Device] = {}
        self.collections: dict[int, Collection] = {}  # insertion order = KVM's list order
        self.command_log = CommandLog()
        self._guest_writes = 0  # KVM's writes to guest memory so far
        self.layout: ITSLayout | None = None
        if probe:
            self.layout = _linux_probe(self, lpi_id_bits, two_level_device_table)
            if lpis_enabled:
                for vcpu in self.vcpus:
                    self.set_lpis_enabled(vcpu.vcpu_id, True)
            if its_enabled:
                self.mmio_write(r.GITS_CTLR, r.GITS_CTLR_ENABLE)
                for vcpu in self.vcpus:
                    for cmd in (
                        MAPC(vcpu.vcpu_id, vcpu.vcpu_id, True),
                        SYNC(vcpu.vcpu_id),
                        INVALL(vcpu.vcpu_id),
                        SYNC(vcpu.vcpu_id),
                    ):
                        self.execute(cmd.encode())

    @staticmethod
    def _initial_baser(table_type: int) -> int:
        """``vgic_its_create`` then ``vgic_its_commit_v0``: INITIAL_BASER_VALUE, the
        type and the ABI's 8-byte entry size."""
        return (
            r.INITIAL_BASER_VALUE
            | table_type << r.GITS_BASER_TYPE_SHIFT
            | (DTE_ESZ - 1) << r.GITS_BASER_ENTRY_SIZE_SHIFT
        )

    # ---- public API -------------------------------------------------------------

    @property
    def device_table_gpa(self) -> int:
        return r.baser_addr(self.baser_device_table)

    @property
    def collection_table_gpa(self) -> int:
        return r.baser_addr(self.baser_coll_table)

    def read_guest(self, gpa: int, length: int) -> bytes:
        """Read guest memory as the guest's vCPU sees it."""
        return self.guest.read(gpa, length)

    def write_guest(self, gpa: int, data: bytes) -> None:
        """Write guest memory as the guest's vCPU."""
        self.guest.write(gpa, data)

    def execute(self, raw: bytes) -> ITSError | None:
        """Queue one raw 32-byte command as the guest does and return KVM's verdict.

        The guest writes the command into the queue slot at GITS_CWRITER and advances
        CWRITER; KVM processes the queue inside that MMIO write.

        If GITS_CBASER points outside guest RAM, the guest's store reaches no memory (no
        memslot covers it) and KVM's ``kvm_read_guest_lock()`` of the slot fails:
        ``vgic_its_process_commands`` (6.1 and 7.3 alike) skips the command and moves
        GITS_CREADR on. The verdict is then ``ITSError.EFAULT``, logged as for any
        unreadable slot.
        """
        if len(raw) != r.ITS_CMD_SIZE:
            raise ValueError(f"an ITS command is {r.ITS_CMD_SIZE} bytes, got {len(raw)}")
        if not self.enabled:
            raise ITSDisabledError("GITS_CTLR.Enabled is 0: KVM does not process commands")
        slot = self.cwriter
        gpa = r.cbaser_addr(self.cbaser) + slot
        if self.guest.visible(gpa, len(raw)):
            self.guest.write(gpa, raw)
        before = len(self.command_log)
        self.mmio_write(r.GITS_CWRITER, (slot + r.ITS_CMD_SIZE) % r.cbaser_size(self.cbaser))
        assert len(self.command_log) == before + 1
        return self.command_log[-1].error

    def translate(self, device_id: int, event_id: int) -> tuple[int, int] | None:
        """``(INTID, vCPU)`` an MSI from (DeviceID, EventID) would raise, or ``None``.

        As ``vgic_its_resolve_lpi``: the ITE must exist and its collection be mapped; the
        vCPU is the LPI's current target. GICR_CTLR.EnableLPIs is not considered.
        """
        device = self.devices.get(device_id)
        ite = None if device is None else device.ites.get(event_id)
        collection = None if ite is None else ite.collection
        if collection is None or collection.target_addr == r.COLLECTION_NOT_MAPPED:
            return None  # (_its_is_collection_mapped, inline: every translation runs this)
        lpi = ite.lpi
        if lpi.target_vcpu is None:
            return None
        return lpi.intid, lpi.target_vcpu

    def mappings(self) -> dict[tuple[int, int], tuple[int, int] | None]:
        """``translate`` for every (DeviceID, EventID) that has an ITE."""
        return {
            (dev.device_id, ev): self.translate(dev.device_id, ev)
            for dev in self.devices.values()
            for ev in dev.ites
        }

    def inject_msi(self, device_id: int, event_id: int) -> ITSError | None:
        """An MSI written to GITS_TRANSLATER (KVM_SIGNAL_MSI): ``vgic_its_trigger_msi``."""
        return self._trigger_msi(device_id, event_id)

    def state(self) -> tuple:
        """A canonical, comparable snapshot of everything KVM holds for this ITS."""
        devices = tuple(
            (
                d.device_id,
                d.itt_addr,
                d.num_eventid_bits,
                tuple(
                    (
                        e.event_id,
                        e.lpi.intid,
                        None if e.collection is None else e.collection.collection_id,
                    )
                    for e in sorted(d.ites.values(), key=lambda e: e.event_id)
                ),
            )
            for d in sorted(self.devices.values(), key=lambda d: d.device_id)
        )
        collections = tuple((c.collection_id, c.target_addr) for c in self.collections.values())
        lpis = tuple(
            (lpi.intid, lpi.target_vcpu, lpi.enabled, lpi.priority, lpi.pending)
            for lpi in sorted(self.lpis.values(), key=lambda lpi: lpi.intid)
        )
        return devices, collections, lpis

    # ---- guest memory as KVM reaches it -------------------------------------------

    def _kvm_read(self, gpa: int, length: int) -> bytes:
        try:
            return self.kvm.read(gpa, length)
        except (NotGuestMemory, Stage2Fault) as exc:
            raise GuestAccessFailed(str(exc)) from exc

    def _kvm_write(self, gpa: int, data: bytes) -> None:
        self._guest_writes += 1
        try:
            self.kvm.write(gpa, data)
        except (NotGuestMemory, Stage2Fault) as exc:
            raise GuestAccessFailed(str(exc)) from exc

    def _kvm_read_u64(self, gpa: int) -> int:
        return int.from_bytes(self._kvm_read(gpa, 8), "little")

    def _kvm_write_u64(self, gpa: int, value: int) -> None:
        self._kvm_write(gpa, value.to_bytes(8, "little"))

    # ---- MMIO --------------------------------------------------------------------

    def mmio_read(self, offset: int) -> int:
        if offset == r.GITS_CTLR:
            quiescent = r.GITS_CTLR_QUIESCENT if self.creadr == self.cwriter else 0
            return int(self.enabled) | quiescent
        if offset == r.GITS_IIDR:
            return (
                self.abi_rev << r.GITS_IIDR_REV_SHIFT | r.PRODUCT_ID_KVM << 24 | r.IMPLEMENTER_ARM
            )
        if offset == r.GITS_TYPER:
            return (
                r.GITS_TYPER_PLPIS
                | (VITS_TYPER_DEVBITS - 1) << r.GITS_TYPER_DEVBITS_SHIFT
                | (VITS_TYPER_IDBITS - 1) << r.GITS_TYPER_IDBITS_SHIFT
                | (ITE_ESZ - 1) << r.GITS_TYPER_ITT_ENTRY_SIZE_SHIFT
            )
        if offset == r.GITS_CBASER:
            return self.cbaser
        if offset == r.GITS_CWRITER:
            return self.cwriter
        if offset == r.GITS_CREADR:
            return self.creadr
        if offset == r.GITS_BASER0:
            return self.baser_device_table
        if offset == r.GITS_BASER1:
            return self.baser_coll_table
        if r.GITS_BASER0 <= offset < r.GITS_BASER0 + 8 * r.GITS_BASER_NR_REGS:
            return 0
        raise ValueError(f"no ITS register at offset {offset:#x}")

    def mmio_write(self, offset: int, val: int) -> None:
        """A guest write of a 64-bit ITS register, trapped and emulated by KVM."""
        if offset == r.GITS_CTLR:
            self._write_ctlr(val)
        elif offset == r.GITS_CBASER:
            if not self.enabled:
                self.cbaser = r.sanitise_its_cbaser(val)  # vgic_mmio_write_its_cbaser
                self.creadr = self.cwriter = 0
        elif offset == r.GITS_CWRITER:
            reg = r.cmd_offset(val)
            if reg < r.cbaser_size(self.cbaser):
                self.cwriter = reg
                self._process_commands()
        elif r.GITS_BASER0 <= offset < r.GITS_BASER0 + 8 * r.GITS_BASER_NR_REGS:
            self._write_baser((offset - r.GITS_BASER0) // 8, val)
        elif offset in (r.GITS_CREADR, r.GITS_IIDR, r.GITS_TYPER):
            pass  # read-only to the guest
        else:
            raise ValueError(f"no ITS register at offset {offset:#x}")

    def _write_ctlr(self, val: int) -> None:
        enable = bool(val & r.GITS_CTLR_ENABLE)
        if (
            not self.enabled
            and enable
            and not (
                self.baser_device_table & r.GITS_BASER_VALID
                and self.baser_coll_table & r.GITS_BASER_VALID
                and self.cbaser & r.GITS_CBASER_VALID
            )
        ):
            return
        self.enabled = enable
        self._process_commands()

    def _write_baser(self, index: int, val: int) -> None:
        """``vgic_mmio_write_its_baser``: RO fields forced, attributes sanitised; a
        changed value (7.3) or a cleared Valid bit (6.1) frees the table's list."""
        if self.enabled or index > 1:
            return
        table_type = r.GITS_BASER_TYPE_DEVICE if index == 0 else r.GITS_BASER_TYPE_COLLECTION
        old = self.baser_device_table if index == 0 else self.baser_coll_table
        reg = val & ~r.GITS_BASER_RO_MASK
        if index == 1:
            reg &= ~r.GITS_BASER_INDIRECT
        reg |= (DTE_ESZ - 1) << r.GITS_BASER_ENTRY_SIZE_SHIFT
        reg |= table_type << r.GITS_BASER_TYPE_SHIFT
        reg = r.sanitise_its_baser(reg)
        if index == 0:
            self.baser_device_table = reg
        else:
            self.baser_coll_table = reg
        changed = reg != old
        if changed if self.behaviour.baser_change_frees else not reg & r.GITS_BASER_VALID:
            if index == 0:
                self._free_device_list()
            else:
                self._free_collection_list()

    # ---- redistributor LPI registers ------------------------------------------------

    def write_propbaser(self, vcpu_id: int, val: int) -> None:
        """GICR_PROPBASER (one per VM in KVM), sanitised; ignored once the writer has LPIs
        enabled (``vgic_mmio_write_propbase``)."""
        if not self.vcpus[vcpu_id].lpis_enabled:
            self.propbaser = r.sanitise_propbaser(val)

    def write_pendbaser(self, vcpu_id: int, val: int) -> None:
        """GICR_PENDBASER, sanitised (``vgic_mmio_write_pendbase``)."""
        vcpu = self.vcpus[vcpu_id]
        if not vcpu.lpis_enabled:
            vcpu.pendbaser = r.sanitise_pendbaser(val)

    def redist_read(self, vcpu_id: int, reg: str) -> int:
        """A redistributor register as KVM returns it (vgic-mmio-v3.c):
        ``"GICR_CTLR"`` (EnableLPIs, with IR and CES as implementation revision 3 reports
        them), ``"GICR_PROPBASER"`` or ``"GICR_PENDBASER"`` (PTZ reads as 0)."""
        vcpu = self.vcpus[vcpu_id]
        if reg == "GICR_CTLR":
            return int(vcpu.lpis_enabled) | r.GICR_CTLR_IR | r.GICR_CTLR_CES
        if reg == "GICR_PROPBASER":
            return self.propbaser
        if reg == "GICR_PENDBASER":
            return vcpu.pendbaser & ~r.GICR_PENDBASER_PTZ
        raise ValueError(f"no redistributor register {reg!r} in the model")

    def set_lpis_enabled(self, vcpu_id: int, enable: bool) -> None:
        """GICR_CTLR.EnableLPIs; enabling syncs pending bits unless PENDBASER.PTZ.

        ``its_sync_lpi_pending_table``: 7.3 reads the pending byte of every LPI (INTID
        order) and takes it for those targeting this vCPU; 6.1 reads only those. A failed
        read stops the walk.

        Disabling (``vgic_mmio_write_v3r_ctlr`` -> ``vgic_flush_pending_lpis``, both
        kernels) drops the pending state of the LPIs queued on the vCPU: pending, enabled
        and targeting it, with the distributor enabled (as a Linux guest leaves it; the
        model has no GICD otherwise), so ``vgic_target_oracle`` queued them.
        """
        vcpu = self.vcpus[vcpu_id]
        was = vcpu.lpis_enabled
        vcpu.lpis_enabled = enable
        if was and not enable:
            for lpi in self.lpis.values():
                if lpi.pending and lpi.enabled and lpi.target_vcpu == vcpu_id:
                    lpi.pending = False
        if enable and not was and not vcpu.pendbaser & r.GICR_PENDBASER_PTZ:
            last_addr, byte = None, 0
            for lpi in self._lpi_walk(vcpu_id):
                addr = self._pend_byte_addr(vcpu, lpi.intid)
                if addr != last_addr:  # "chances are we just read this very same byte"
                    try:
                        byte = self._kvm_read(addr, 1)[0]
                    except GuestAccessFailed:
                        return
                    last_addr = addr
                if lpi.target_vcpu == vcpu_id:
                    lpi.pending = bool(byte >> (lpi.intid % 8) & 1)

    def _lpi_walk(self, vcpu_id: int | None = None) -> list[LPI]:
        """The LPIs a KVM walk visits: 7.3 every LPI in the xarray (INTID order); 6.1 the
        ``lpi_list_head`` in creation order, only those targeting ``vcpu_id`` if given
        (``vgic_copy_lpi_list``)."""
        if self.behaviour.lpi_xarray:
            return sorted(self.lpis.values(), key=lambda lpi: lpi.intid)
        if vcpu_id is None:
            return list(self.lpis.values())
        return [lpi for lpi in self.lpis.values() if lpi.target_vcpu == vcpu_id]

    # ---- the command queue -------------------------------------------------------------

    def _process_commands(self) -> None:
        """``vgic_its_process_commands``: run every queued command; failures are skipped.

        KVM reads each command with its own ``kvm_read_guest_lock()``. The model reads the
        first pending slot of a page alone (a refused page fails there, and on each later
        slot, as in KVM), then the page's other pending slots as one checked access: the
        same bytes at the same instant. After a command that wrote guest memory it reads
        afresh, in case the write landed on a slot still to run.
        """
        if not self.enabled:
            return
        base = r.cbaser_addr(self.cbaser)  # 4 KiB aligned
        size = r.cbaser_size(self.cbaser)
        cmd = r.ITS_CMD_SIZE
        while self.cwriter != self.creadr:
            offset = self.creadr
            try:
                raw = self._queue_read(base + offset, cmd)
            except GuestAccessFailed as exc:
                self._log(offset, None, ITSError.EFAULT, f"queue slot unreadable: {exc}")
                self._advance_creadr(size)
                continue
            stop = min(self.cwriter if self.cwriter > offset else size, (offset | 0xFFF) + 1)
            rest = (
                self._queue_read(base + offset + cmd, stop - offset - cmd)
                if stop > offset + cmd
                else b""
            )
            writes = self._guest_writes
            for slot in range(offset, stop, cmd):
                if slot > offset:
                    raw = rest[slot - offset - cmd : slot - offset]
                self._handle_command(slot, raw)
                self.creadr = slot + cmd if slot + cmd < size else 0
                if self._guest_writes != writes:
                    break  # KVM wrote guest memory: read the queue afresh

    def _queue_read(self, gpa: int, length: int) -> bytes:
        if self.cmdq_reader is None:
            return self._kvm_read(gpa, length)
        try:
            return self.cmdq_reader(gpa, length)
        except (NotGuestMemory, Stage2Fault) as exc:
            raise GuestAccessFailed(str(exc)) from exc

    def _advance_creadr(self, size: int) -> None:
        self.creadr += r.ITS_CMD_SIZE
        if self.creadr == size:
            self.creadr = 0

    def _log(self, offset, raw, error, detail="") -> None:
        self.command_log.append(self.memory.clock(), offset, raw, error, detail)

    def _handle_command(self, offset: int, raw: bytes) -> None:
        try:
            cmd = decode(raw)
        except CommandDecodeError as exc:
            self._log(offset, raw, ITSError.ENODEV, str(exc))
            return
        handler: Callable[[ITSCommand], ITSError | None] = self._HANDLERS[type(cmd)]
        try:
            error = handler(self, cmd)
            detail = ""
        except GuestAccessFailed as exc:
            error, detail = ITSError.EFAULT, str(exc)
        self._log(offset, raw, error, detail)

    # ---- lookups -----------------------------------------------------------------

    def _find_ite(self, device_id: int, event_id: int) -> ITTEntry | None:
        device = self.devices.get(device_id)
        return None if device is None else device.ites.get(event_id)

    def check_id(self, baser: int, id_: int) -> int | None:
        """``vgic_its_check_id``: the entry's GPA if ``id_`` fits the table, else ``None``.

        For a two-level table this reads the level-1 entry from guest memory.
        """
        table_type = r.baser_type(baser)
        if table_type == r.GITS_BASER_TYPE_DEVICE:
            if id_ > VITS_MAX_DEVID:
                return None
        elif table_type == r.GITS_BASER_TYPE_COLLECTION:
            if id_ >= 1 << 16:
                return None
        else:
            return None
        l1_tbl_size = r.baser_nr_pages(baser) * r.SZ_64K
        base = r.baser_addr(baser)
        esz = r.baser_entry_size(baser)
        if not baser & r.GITS_BASER_INDIRECT:
            if id_ >= l1_tbl_size // esz:
                return None
            addr = base + id_ * esz
            return addr if self.kvm.visible(addr) else None
        index = id_ // (r.SZ_64K // esz)
        if index >= l1_tbl_size // r.GITS_LVL1_ENTRY_SIZE:
            return None
        try:
            l1 = self._kvm_read_u64(base + index * r.GITS_LVL1_ENTRY_SIZE)
        except GuestAccessFailed:
            return None
        if not l1 >> 63:
            return None
        addr = (l1 & r.genmask(51, 16)) + (id_ % (r.SZ_64K // esz)) * esz
        return addr if self.kvm.visible(addr) else None

    def _check_event_id(self, device: Device, event_id: int) -> bool:
        if event_id >= 1 << device.num_eventid_bits:
            return False
        return self.kvm.visible(device.itt_addr + event_id * ITE_ESZ)

    # ---- LPIs (vgic-v3 / vgic-its helpers) ------------------------------------------

    def _pend_byte_addr(self, vcpu: VCPU, intid: int) -> int:
        return r.pendbaser_addr(vcpu.pendbaser) + intid // 8

    def _update_lpi_config(self, lpi: LPI, filter_vcpu: int | None = None) -> None:
        """Read the LPI's property byte (priority [7:2], enable [0]) from guest memory."""
        prop = self._kvm_read(r.propbaser_addr(self.propbaser) + lpi.intid - r.GIC_LPI_OFFSET, 1)[0]
        if filter_vcpu is None or filter_vcpu == lpi.target_vcpu:
            lpi.priority = prop & 0xFC
            lpi.enabled = bool(prop & LPI_PROP_ENABLED)

    def _sync_pending_status(self, lpi: LPI) -> None:
        """``vgic_v3_lpi_sync_pending_status``: take a pending bit and clear it in memory."""
        if lpi.target_vcpu is None:
            return
        addr = self._pend_byte_addr(self.vcpus[lpi.target_vcpu], lpi.intid)
        val = self._kvm_read(addr, 1)[0]
        bit = 1 << (lpi.intid % 8)
        lpi.pending = bool(val & bit)
        if lpi.pending:
            self._kvm_write(addr, bytes([val & ~bit]))

    def _map_lpi(self, intid: int, vcpu: int | None) -> LPI | None:
        """``vgic_add_lpi`` for a new ITE, then (7.3) ``vgic_its_map_lpi``.

        ``None`` when 7.3 refuses a second ITE for an LPI that an ITE maps (only ITEs
        hold LPI references in the model, so an existing LPI is a mapped one); the
        existing LPI is returned untouched, without a guest-memory access, in both
        kernels' ``vgic_add_lpi``.
        """
        if self.behaviour.one_ite_per_lpi and intid in self.lpis:
            return None
        return self._add_lpi(intid, vcpu)

    def _add_lpi(self, intid: int, vcpu: int | None) -> LPI:
        """``vgic_add_lpi``: an existing LPI is shared as is; a new one reads its config."""
        lpi = self.lpis.get(intid)
        if lpi is not None:
            lpi.refcount += 1
            return lpi
        lpi = LPI(intid, vcpu, refcount=1)
        self._update_lpi_config(lpi)
        self._sync_pending_status(lpi)
        self.lpis[intid] = lpi
        return lpi

    def _put_lpi(self, lpi: LPI) -> None:
        lpi.refcount -= 1
        if lpi.refcount == 0:
            del self.lpis[lpi.intid]

    def _free_ite(self, device: Device, ite: ITTEntry) -> None:
        del device.ites[ite.event_id]
        self._put_lpi(ite.lpi)

    def _free_device(self, device: Device) -> None:
        for ite in list(device.ites.values()):
            self._free_ite(device, ite)
        del self.devices[device.device_id]

    def _free_device_list(self) -> None:
        for device in list(self.devices.values()):
            self._free_device(device)

    def _free_collection(self, coll_id: int) -> None:
        collection = self.collections.pop(coll_id, None)
        if collection is None:
            return
        for device in self.devices.values():
            for ite in device.ites.values():
                if ite.collection is collection:
                    ite.collection = None

    def _free_collection_list(self) -> None:
        for coll_id in list(self.collections):
            self._free_collection(coll_id)

    def _update_affinity_collection(self, collection: Collection) -> None:
        for device in self.devices.values():
            for ite in device.ites.values():
                if ite.collection is collection:
                    ite.lpi.target_vcpu = collection.target_addr

    def _vcpu_exists(self, vcpu_id: int) -> bool:
        return 0 <= vcpu_id < len(self.vcpus)

    def _trigger_msi(self, device_id: int, event_id: int) -> ITSError | None:
        """``vgic_its_trigger_msi`` via ``vgic_its_resolve_lpi`` (every MSI runs this:
        ``_find_ite``, ``_its_is_collection_mapped`` and ``_vcpu_exists`` inline)."""
        if not self.enabled:
            return ITSError.EBUSY
        device = self.devices.get(device_id)
        ite = None if device is None else device.ites.get(event_id)
        collection = None if ite is None else ite.collection
        if collection is None or collection.target_addr == r.COLLECTION_NOT_MAPPED:
            return ITSError.E_ITS_INT_UNMAPPED_INTERRUPT
        vcpu = collection.target_addr
        if not 0 <= vcpu < len(self.vcpus):
            return ITSError.E_ITS_INT_UNMAPPED_INTERRUPT
        if not self.vcpus[vcpu].lpis_enabled:
            return ITSError.EBUSY
        ite.lpi.pending = True
        return None

    # ---- command handlers (vgic_its_cmd_handle_*) -----------------------------------

    def _handle_mapd(self, cmd: MAPD) -> ITSError | None:
        gpa = self.check_id(self.baser_device_table, cmd.device_id)
        if gpa is None:
            return ITSError.E_ITS_MAPD_DEVICE_OOR
        num_eventid_bits = cmd.size + 1
        if cmd.valid and num_eventid_bits > VITS_TYPER_IDBITS:
            return ITSError.E_ITS_MAPD_ITTSIZE_OOR
        device = self.devices.get(cmd.device_id)
        if device is not None:
            self._free_device(device)
        if not cmd.valid:
            # Both kernels clear the DTE in guest memory, mapped or not.
            if self.clears_entries:
                self._kvm_write_u64(gpa, 0)
            return None
        self.devices[cmd.device_id] = Device(cmd.device_id, cmd.itt_addr, num_eventid_bits)
        return None

    def _handle_mapc(self, cmd: MAPC) -> ITSError | None:
        """6.1 checks the target first, even for V=0 (which then keeps the collection);
        7.3 looks it up only for V=1."""
        if not self.behaviour.mapc_unmap_ignores_target and not self._vcpu_exists(cmd.target):
            return ITSError.E_ITS_MAPC_PROCNUM_OOR
        if not cmd.valid:
            self._free_collection(cmd.icid)
            return None
        if not self._vcpu_exists(cmd.target):
            return ITSError.E_ITS_MAPC_PROCNUM_OOR
        collection = self.collections.get(cmd.icid)
        if collection is None:
            if self.check_id(self.baser_coll_table, cmd.icid) is None:
                return ITSError.E_ITS_MAPC_COLLECTION_OOR
            self.collections[cmd.icid] = Collection(cmd.icid, cmd.target)
        else:
            collection.target_addr = cmd.target
            self._update_affinity_collection(collection)
        return None

    def _handle_mapi(self, cmd: MAPTI | MAPI) -> ITSError | None:
        device = self.devices.get(cmd.device_id)
        if device is None:
            return ITSError.E_ITS_MAPTI_UNMAPPED_DEVICE
        if not self._check_event_id(device, cmd.event_id):
            return ITSError.E_ITS_MAPTI_ID_OOR
        lpi_nr = cmd.intid if isinstance(cmd, MAPTI) else cmd.event_id
        if not r.GIC_LPI_OFFSET <= lpi_nr < r.max_lpis_propbaser(self.propbaser):
            return ITSError.E_ITS_MAPTI_PHYSICALID_OOR
        if cmd.event_id in device.ites:
            return None  # an existing mapping: UNPREDICTABLE, KVM ignores the command
        collection = self.collections.get(cmd.icid)
        new_coll = collection is None
        if new_coll:
            if self.check_id(self.baser_coll_table, cmd.icid) is None:
                return ITSError.E_ITS_MAPC_COLLECTION_OOR
            collection = self.collections[cmd.icid] = Collection(cmd.icid)
        vcpu = collection.target_addr if collection.mapped else None
        try:
            lpi = self._map_lpi(lpi_nr, vcpu)
        except GuestAccessFailed:
            if new_coll:
                self._free_collection(cmd.icid)
            raise
        if lpi is None:
            # 7.3: vgic_its_map_lpi() refused, the first ITE keeps the LPI; the new ITE
            # and any collection this command created are freed.
            if new_coll:
                self._free_collection(cmd.icid)
            return ITSError.EEXIST
        device.ites[cmd.event_id] = ITTEntry(cmd.event_id, lpi, collection)
        return None

    def _handle_movi(self, cmd: MOVI) -> ITSError | None:
        ite = self._find_ite(cmd.device_id, cmd.event_id)
        if ite is None:
            return ITSError.E_ITS_MOVI_UNMAPPED_INTERRUPT
        if not _its_is_collection_mapped(ite.collection):
            return ITSError.E_ITS_MOVI_UNMAPPED_COLLECTION
        collection = self.collections.get(cmd.icid)
        if not _its_is_collection_mapped(collection):
            return ITSError.E_ITS_MOVI_UNMAPPED_COLLECTION
        ite.collection = collection
        ite.lpi.target_vcpu = collection.target_addr
        return None

    def _handle_discard(self, cmd: DISCARD) -> ITSError | None:
        ite = self._find_ite(cmd.device_id, cmd.event_id)
        if ite is None or not _its_is_collection_mapped(ite.collection):
            return ITSError.E_ITS_DISCARD_UNMAPPED_INTERRUPT
        device = self.devices[cmd.device_id]
        self._free_ite(device, ite)
        # Both kernels clear the ITE in guest memory.
        if self.clears_ites:
            self._kvm_write_u64(device.itt_addr + cmd.event_id * ITE_ESZ, 0)
        return None

    def _handle_clear(self, cmd: CLEAR) -> ITSError | None:
        ite = self._find_ite(cmd.device_id, cmd.event_id)
        if ite is None:
            return ITSError.E_ITS_CLEAR_UNMAPPED_INTERRUPT
        ite.lpi.pending = False
        return None

    def _handle_int(self, cmd: INT) -> ITSError | None:
        return self._trigger_msi(cmd.device_id, cmd.event_id)

    def _handle_inv(self, cmd: INV) -> ITSError | None:
        ite = self._find_ite(cmd.device_id, cmd.event_id)
        if ite is None:
            return ITSError.E_ITS_INV_UNMAPPED_INTERRUPT
        self._update_lpi_config(ite.lpi)
        return None

    def _handle_invall(self, cmd: INVALL) -> ITSError | None:
        collection = self.collections.get(cmd.icid)
        if not _its_is_collection_mapped(collection):
            return ITSError.E_ITS_INVALL_UNMAPPED_COLLECTION
        # vgic_its_invall: 7.3 reads every LPI's property byte and applies it to those
        # targeting the vCPU; 6.1 reads only those. update_lpi_config's errors are ignored.
        for lpi in self._lpi_walk(collection.target_addr):
            with contextlib.suppress(GuestAccessFailed):
                self._update_lpi_config(lpi, filter_vcpu=collection.target_addr)
        return None

    def _handle_movall(self, cmd: MOVALL) -> ITSError | None:
        """Both kernels retarget only the LPIs targeting RDbase1 (6.1: the list
        ``vgic_copy_lpi_list(vcpu1)`` makes; 7.3: ``update_affinity(irq, vcpu1, vcpu2)``
        returns early for any other target). No guest memory is touched."""
        if not (self._vcpu_exists(cmd.target1) and self._vcpu_exists(cmd.target2)):
            return ITSError.E_ITS_MOVALL_PROCNUM_OOR
        for lpi in self.lpis.values():
            if lpi.target_vcpu == cmd.target1:
                lpi.target_vcpu = cmd.target2
        return None

    def _handle_sync(self, cmd: SYNC) -> ITSError | None:
        return None  # "we are in sync all of the time"

    _HANDLERS: ClassVar[dict[type[ITSCommand], Callable]] = {
        MAPD: _handle_mapd,
        MAPC: _handle_mapc,
        MAPTI: _handle_mapi,
        MAPI: _handle_mapi,
        MOVI: _handle_movi,
        DISCARD: _handle_discard,
        CLEAR: _handle_clear,
        INT: _handle_int,
        INV: _handle_inv,
        INVALL: _handle_invall,
        MOVALL: _handle_movall,
        SYNC: _handle_sync,
    }

    # ---- migration ABI (implemented in sim.its.abi) -----------------------------------

    def save_tables(self) -> ITSError | None:
        """KVM_DEV_ARM_ITS_SAVE_TABLES: write DTEs, ITEs and CTEs into guest memory."""
        from sim.its.abi import save_tables_v0

        return save_tables_v0(self)

    def restore_tables(self) -> ITSError | None:
        """KVM_DEV_ARM_ITS_RESTORE_TABLES: rebuild the ITS from the tables in guest memory."""
        from sim.its.abi import restore_tables_v0

        return restore_tables_v0(self)

    def save_pending_tables(self) -> ITSError | None:
        """KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES (vgic-v3 device): write pending bits."""
        from sim.its.abi import save_pending_tables

        return save_pending_tables(self)

    def get_regs(self) -> dict[str, int]:
        """The registers a VMM saves (KVM_DEV_ARM_VGIC_GRP_ITS_REGS and redistributors)."""
        from sim.its.abi import get_regs

        return get_regs(self)

    def set_regs(self, regs: dict[str, int]) -> None:
        """Restore registers in the documented order, GITS_CTLR last (after tables)."""
        from sim.its.abi import set_regs

        set_regs(self, regs)


def _linux_probe(its: VirtualITS, lpi_id_bits: int, two_level: bool) -> ITSLayout:
    """What Linux's irq-gic-v3-its.c sets up at boot, as guest writes and register writes.

    The guest is mainline Linux since b08e2f42e86b: every ITS and LPI table comes from
    pages it shares with the host when it is protected. ITTs are the caller's business.
    Register values carry Linux's memory attributes (RaWaWb, inner shareable: KVM keeps
    them as written) and PENDBASER has no PTZ, as its_cpu_init_lpis() writes it.

    Allocations are 64 KiB aligned from the bottom of RAM, all below ``ram_base +
    probe_area()``: 16 MiB, or for more than 238 vCPUs (a 64 KiB pending table each) the
    next 16 MiB multiple that holds them.
    Linux would pick a two-level device table against KVM (512 KiB > 2 x 64 KiB) and
    allocate level-2 pages on demand; with ``two_level`` we allocate every level-2 page
    up front so any DeviceID can be mapped, and otherwise use a flat 512 KiB table.
    """
    cursor = its.kvm.ram_base
    guest_labels = its.memory.labels

    ownership = its.memory.ownership
    guest = its.guest.who.component

    def alloc(size: int, label: Label) -> int:
        nonlocal cursor
        addr = cursor
        cursor += -(-size // r.SZ_64K) * r.SZ_64K
        guest_labels.set(addr, size, label)
        # its_alloc_pages_node(): set_memory_decrypted() is MEM_SHARE, page by page, on
        # a protected guest (one whose pages it owns); a no-op on a non-protected one.
        for pfn in range(addr >> PAGE_SHIFT, cursor >> PAGE_SHIFT):
            if ownership.state(guest, pfn) is PageState.OWNED:
                ownership.apply(
                    Transition.GUEST_SHARE_HOST, pfn, guest=guest, cause="set_memory_decrypted"
                )
        return addr

    nr_lpi_bytes = (1 << lpi_id_bits) - r.GIC_LPI_OFFSET
    prop = alloc(max(1 << lpi_id_bits, r.SZ_64K), Label(LabelKind.PROP_TABLE))
    # Every LPI enabled, default priority, group 1 (Linux enables each one on unmask).
    its.guest.write(
        prop, bytes([LPI_PROP_DEFAULT_PRIO | LPI_PROP_GROUP1 | LPI_PROP_ENABLED]) * nr_lpi_bytes
    )
    pend_size = max((1 << lpi_id_bits) // 8, r.SZ_64K)
    pends = tuple(
        alloc(pend_size, Label(LabelKind.PEND_TABLE, f"vcpu{v.vcpu_id}")) for v in its.vcpus
    )
    for vcpu, pend in zip(its.vcpus, pends, strict=True):
        its.write_propbaser(vcpu.vcpu_id, r.make_propbaser(prop, lpi_id_bits))
        its.write_pendbaser(vcpu.vcpu_id, r.make_pendbaser(pend, ptz=False))

    dt_full = (1 << VITS_TYPER_DEVBITS) * DTE_ESZ
    l2_pages: tuple[int, ...] = ()
    if two_level:
        nr_l2 = dt_full // r.SZ_64K
        dt_size = r.SZ_64K
        dt = alloc(dt_size, Label(LabelKind.DEVICE_TABLE))
        l2_pages = tuple(
            alloc(r.SZ_64K, Label(LabelKind.DEVICE_TABLE_L2, f"l1[{i}]")) for i in range(nr_l2)
        )
        for i, l2 in enumerate(l2_pages):
            its.guest.write_u64(dt + i * 8, (1 << 63) | l2)
    else:
        dt_size = dt_full
        dt = alloc(dt_size, Label(LabelKind.DEVICE_TABLE))
    ct_size = (1 << 16) * DTE_ESZ
    ct = alloc(ct_size, Label(LabelKind.COLLECTION_TABLE))
    cmdq_size = r.SZ_64K
    cmdq = alloc(cmdq_size, Label(LabelKind.CMDQ))
    area = probe_area(len(its.vcpus), two_level, lpi_id_bits)
    assert cursor <= its.kvm.ram_base + area, "probe_area() undercounts the probe's tables"

    its.mmio_write(r.GITS_BASER0, r.make_baser(dt, dt_size, indirect=two_level))
    its.mmio_write(r.GITS_BASER1, r.make_baser(ct, ct_size))
    its.mmio_write(r.GITS_CBASER, r.make_cbaser(cmdq, cmdq_size))
    its.mmio_write(r.GITS_CWRITER, 0)
    return ITSLayout(
        prop_table=prop,
        pend_tables=pends,
        device_table=dt,
        device_table_size=dt_size,
        device_l2_pages=l2_pages,
        collection_table=ct,
        collection_table_size=ct_size,
        cmdq=cmdq,
        cmdq_size=cmdq_size,
        free_base=its.kvm.ram_base + area,
    )


PROBE_AREA_ALIGN = 16 << 20  # the probe's area: a multiple of 16 MiB at the bottom of RAM
PROBE_ITT_ROOM = 16 << 20  # RAM a probed ITS needs above the probe's area, for ITTs


def probe_area(nr_vcpus: int, two_level: bool, lpi_id_bits: int = 16) -> int:
    """Bytes at the bottom of RAM that :func:`_linux_probe` lays its tables out in.

    The sum of its 64 KiB-rounded allocations (property table, a pending table per vCPU,
    device table, collection table, command queue), rounded up to 16 MiB: 16 MiB for up
    to 238 vCPUs with 16 INTID bits, 48 MiB at 512."""

    def pad(size: int) -> int:
        return -(-size // r.SZ_64K) * r.SZ_64K

    dt_full = (1 << VITS_TYPER_DEVBITS) * DTE_ESZ
    dt = r.SZ_64K + dt_full if two_level else dt_full
    total = (
        pad(max(1 << lpi_id_bits, r.SZ_64K))
        + nr_vcpus * pad(max((1 << lpi_id_bits) // 8, r.SZ_64K))
        + dt
        + pad((1 << 16) * DTE_ESZ)
        + r.SZ_64K
    )
    return -(-total // PROBE_AREA_ALIGN) * PROBE_AREA_ALIGN
