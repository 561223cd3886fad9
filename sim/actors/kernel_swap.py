"""The guest's kernel replaced under its vITS: hibernate-resume and kexec.

Neither path unmaps the old kernel's devices, so KVM keeps DTEs whose ITT addresses the
running kernel no longer uses; a later SAVE_TABLES writes ITEs there. What each path
does to the ITS follows ``drivers/irqchip/irq-gic-v3-its.c`` (same in 6.1 and 7.3):

- kexec: the old kernel sends nothing (the ITS has no syscore ``shutdown``; the model
  assumes, as Woodhouse's report does, that no driver frees its MSI vectors on the way
  down). The new kernel finds the ITS enabled: ``its_map_one()`` runs
  ``its_force_quiescent()`` (GITS_CTLR.Enable cleared), ``its_alloc_tables()`` writes
  GITS_BASER<n> with its own tables, then CBASER, CWRITER, CTLR, MAPC/INVALL per CPU, and
  MAPD + MAPTI for each device it drives. It finds LPIs enabled on the redistributors:
  without EFI's persistent reservation (QEMU's direct kernel boot) ``enabled_lpis_allowed()``
  fails and ``redist_disable_lpis()`` clears GICR_CTLR.EnableLPIs ("Booted with LPIs
  enabled, memory probably corrupted") before PROPBASER/PENDBASER are rewritten (with EFI
  the reserved old tables are kept: no ITT changes either way).
- hibernate-resume: the image kernel writes its image (``create_image()`` brackets the
  snapshot with ``its_save_disable()`` / ``its_restore_enable()``), powers off; the VMM
  resets the VM (QEMU's ``kvm_arm_its_reset()``: KVM_DEV_ARM_ITS_CTRL_RESET, a fresh
  vITS); a boot kernel probes the ITS and maps its devices with its own ITTs, loads the
  image over its own memory, runs ``its_save_disable()`` and jumps; the resumed kernel's
  ``its_restore_enable()`` rewrites CBASER, CWRITER = 0, GITS_BASER<n> from its cache and
  GITS_CTLR, and sends no MAPD (nor MAPC: KVM's GITS_TYPER.HCC is 0).

The redistributors are not reprogrammed on resume (``its_restore_enable()`` leaves them
alone; ``its_cpu_init_lpis()`` returns early on a CPU whose restored flags say
RD_LOCAL_LPI_ENABLED), so GICR_PENDBASER keeps the boot kernel's pending tables, which
SAVE_PENDING_TABLES then writes (:func:`stale_pending_tables`); after kexec the new
kernel reprograms them (above).

What KVM keeps is then the kernels' difference (``vgic_mmio_write_its_baser``, the
``kernel`` behaviour ``baser_change_frees``): 7.3 frees the device and collection lists
only if the rewritten value differs ("The ITS driver rewrites an unchanged GITS_BASER<n>
on resume"), 6.1 only if Valid is 0, which Linux never writes. A MAPD for a DeviceID
KVM still holds replaces the old device (``vgic_its_cmd_handle_mapd``), so only the
devices the new kernel does not map keep stale DTEs after kexec; after resume every
device the boot kernel mapped does. (Linux's probe also rewrites each GITS_BASER<n> with
its old value while it sizes the pages, ``its_probe_baser_psz()``; unchanged, that frees
nothing on either kernel, so one write of the new value stands for them.)

Memory, as the model simplifies it: a kernel's page allocations are deterministic
(``tables: same-address``: the same kernel booted the same way puts its ITS tables and
slabs where the first boot did; ``moved``: ``moved_mib`` higher), so the boot kernel's
ITTs coincide with the resumed kernel's except where its history moved them (a device
removed and re-added). The old (kexec) or boot (hibernate) kernel's bytes are data of
the running kernel's: every free byte of a stale ITT, and of a page left shared by a
kernel that no longer knows it shared it, is labelled the running kernel's data (a
secret with ``guest.secret_density``), which the audit then protects. The reset VM
keeps its memory and pKVM page states (a protected VM cannot be reset in place under
pKVM; a fresh VM would start with every page private, which removes stale shares, not
stale DTEs).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from sim.its import regs as r
from sim.memory.labels import Label, LabelKind
from sim.memory.ownership import PageState
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from sim.actors.guest import Guest
    from sim.scenario import KernelEvent

# Guest attributes that are one kernel's ITS driver and allocator state.
DRIVER_STATE = (
    "devices",
    "next_lpi",
    "lpi_vcpu",
    "lpi_users",
    "cwriter",
    "driver_shared",
    "pages",
    "kmalloc",
    "pool",
    "_pending_shares",
    "prop",
    "pend",
    "device_table",
    "device_table_size",
    "l2_pages",
    "collection_table",
    "cmdq_size",
    "cmdq",
)
ITS_TABLE_KINDS = frozenset(LabelKind) - {LabelKind.FREE, LabelKind.KERNEL, LabelKind.SECRET}


def replace_kernel(guest: Guest, event: KernelEvent) -> Generator:
    """Run one kernel replacement (the vCPUs held by the caller)."""
    world = guest.world
    start = world.env.now
    if event.action == "kexec":
        record = yield from _kexec(guest, event)
    else:
        record = yield from _hibernate_resume(guest, event)
    record.update(action=event.action, at_ms=round(start / 1000, 6))
    world.kernel_events.append(record)


# ---- the two paths ---------------------------------------------------------------------


def _kexec(guest: Guest, event: KernelEvent) -> Generator:
    machine = guest.machine
    old_shared = _shared_pages(guest)
    labels = machine.memory.labels
    from sim.world import RAM_BASE

    labels.clear(RAM_BASE, guest.world.ram_size)  # the old kernel's data is nobody's now
    _fresh_driver_state(guest, event, "kexec-kernel")
    host = machine.host
    yield from guest.mmio(r.GITS_CTLR, 0)  # its_map_one -> its_force_quiescent
    for v in range(guest.spec.vcpus):  # redist_disable_lpis (no EFI memreserve)
        yield from host.handle_redist(v, "GICR_CTLR", 0)
    yield from _boot(guest, event)
    return _label_leftovers(guest, old_shared, "kexec: new kernel's data")


def _hibernate_resume(guest: Guest, event: KernelEvent) -> Generator:
    machine = guest.machine
    # The image kernel snapshots itself: create_image() brackets it with syscore ops.
    yield from _its_save_disable(guest)
    yield from _its_restore_enable(guest)
    image = _snapshot(guest)
    state = {name: getattr(guest, name) for name in DRIVER_STATE}
    regs = {
        "GITS_CBASER": machine.host.its.cbaser,
        "GITS_BASER0": machine.host.its.baser_device_table,
        "GITS_BASER1": machine.host.its.baser_coll_table,
    }
    shared_before = _shared_pages(guest)
    # Power off; the VMM resets the VM (kvm_arm_its_reset: KVM_DEV_ARM_ITS_CTRL_RESET).
    machine.host.new_vits()
    # The boot kernel: its own probe and devices, its own ITTs.
    _fresh_driver_state(guest, event, "boot-kernel")
    yield from _boot(guest, event)
    boot_shared = _shared_pages(guest) - shared_before
    # It loads the image over its own memory (swsusp writes every image page back).
    _restore_image(guest, image)
    yield from _its_save_disable(guest)  # resume_target_kernel -> syscore_suspend
    for name, value in state.items():  # ... and jumps into the image kernel
        setattr(guest, name, value)
    guest.cwriter = 0  # its_restore_enable: its->cmd_write = its->cmd_base
    yield from guest.mmio(r.GITS_CTLR, 0)  # its_force_quiescent (already quiescent)
    yield from guest.mmio(r.GITS_CBASER, regs["GITS_CBASER"])
    yield from guest.mmio(r.GITS_CWRITER, 0)
    yield from guest.mmio(r.GITS_BASER0, regs["GITS_BASER0"])
    yield from guest.mmio(r.GITS_BASER1, regs["GITS_BASER1"])
    yield from guest.mmio(r.GITS_CTLR, r.GITS_CTLR_ENABLE)
    return _label_leftovers(guest, boot_shared, "hibernate: resumed kernel's data")


# ---- pieces ----------------------------------------------------------------------------


def _its_save_disable(guest: Guest) -> Generator:
    """``its_save_disable()``: save GITS_CTLR and CBASER, quiesce (Enable cleared)."""
    yield from guest.mmio(r.GITS_CTLR, 0)


def _its_restore_enable(guest: Guest) -> Generator:
    """``its_restore_enable()`` with the running kernel's own register cache."""
    its = guest.machine.host.its
    cbaser, baser0, baser1 = its.cbaser, its.baser_device_table, its.baser_coll_table
    yield from guest.mmio(r.GITS_CTLR, 0)
    yield from guest.mmio(r.GITS_CBASER, cbaser)
    guest.cwriter = 0
    yield from guest.mmio(r.GITS_CWRITER, 0)
    yield from guest.mmio(r.GITS_BASER0, baser0)
    yield from guest.mmio(r.GITS_BASER1, baser1)
    yield from guest.mmio(r.GITS_CTLR, r.GITS_CTLR_ENABLE)


def _fresh_driver_state(guest: Guest, event: KernelEvent, stream: str) -> None:
    """A newly booted kernel's driver and allocators, over RAM another kernel wrote."""
    guest.new_kernel(stream, event.moved_mib << 20 if event.tables == "moved" else 0)
    guest.dirty_ram = True  # its tables (__GFP_ZERO) and ITTs (kzalloc) are zeroed


def _boot(guest: Guest, event: KernelEvent) -> Generator:
    yield from guest.probe()
    wanted = event.remap if event.remap is not None else list(guest.devices)
    for name in guest.devices:
        if name in wanted:
            yield from guest.add_device(name)


def _shared_pages(guest: Guest) -> set[int]:
    from sim.world import RAM_BASE

    own = guest.machine.memory.ownership
    first = RAM_BASE >> PAGE_SHIFT
    return {
        pfn
        for start, stop, state in own.runs(
            guest.world.guest_name, first, guest.world.ram_size >> PAGE_SHIFT
        )
        if state is PageState.SHARED_OWNED
        for pfn in range(start, stop)
    }


def _snapshot(guest: Guest) -> tuple[dict[int, bytes], list[tuple[int, int, Label]]]:
    """The image: every resident page's bytes and every label (simulator ground truth)."""
    from sim.world import RAM_BASE

    memory = guest.machine.memory
    first = RAM_BASE >> PAGE_SHIFT
    end = first + (guest.world.ram_size >> PAGE_SHIFT)
    pages = {
        pfn: memory.peek(pfn << PAGE_SHIFT, PAGE_SIZE) for pfn in memory.resident_pfns(first, end)
    }
    return pages, list(memory.labels.runs(RAM_BASE, guest.world.ram_size))


def _restore_image(guest: Guest, image: tuple[dict[int, bytes], list]) -> None:
    """The boot kernel writes the image back (guest CPU writes): bytes, then labels."""
    from sim.world import RAM_BASE

    pages, runs = image
    memory = guest.machine.memory
    first = RAM_BASE >> PAGE_SHIFT
    end = first + (guest.world.ram_size >> PAGE_SHIFT)
    zero = bytes(PAGE_SIZE)
    for pfn in sorted(set(memory.resident_pfns(first, end)) | set(pages)):
        guest.write(pfn << PAGE_SHIFT, pages.get(pfn, zero))
    labels = memory.labels
    labels.clear(RAM_BASE, guest.world.ram_size)
    for start, stop, label in runs:
        if label.kind is not LabelKind.FREE:
            labels.set(start, stop - start, label)


def stale_itts(guest: Guest) -> list[tuple[int, int, int]]:
    """``(DeviceID, ITT address, ITT bytes)`` of each device KVM maps at an ITT the
    running kernel does not use for it."""
    from sim.its.tables import ITE_ESZ

    mine = {d.spec.device_id: d.itt_addr for d in guest.devices.values() if d.mapped}
    out = []
    for device in sorted(guest.machine.host.its.devices.values(), key=lambda d: d.device_id):
        if mine.get(device.device_id) != device.itt_addr:
            size = (1 << device.num_eventid_bits) * ITE_ESZ
            out.append((device.device_id, device.itt_addr, size))
    return out


def stale_pending_tables(guest: Guest) -> list[tuple[int, int, int]]:
    """``(vCPU, address, bytes)`` of each redistributor whose GICR_PENDBASER KVM holds at
    a pending table the running kernel does not use: after resume the boot kernel's
    (``its_restore_enable()`` leaves the redistributors alone, and ``its_cpu_init_lpis()``
    returns early on a CPU whose restored flags say RD_LOCAL_LPI_ENABLED), so
    SAVE_PENDING_TABLES writes pending bits there."""
    its = guest.machine.host.its
    out = []
    for v, mine in enumerate(guest.pend):
        addr = r.pendbaser_addr(its.vcpus[v].pendbaser)
        if addr != mine:
            out.append((v, addr, r.SZ_64K))
    return out


def _label_leftovers(guest: Guest, leftover_shared: set[int], what: str) -> dict:
    """Free bytes of stale ITTs, and of pages shared by a kernel that is gone and holding
    no ITS structure of the running kernel's, become the running kernel's data."""
    world = guest.world
    memory = guest.machine.memory
    labels = memory.labels
    rng = world.rng("kernel-swap.data")
    density = guest.spec.secret_density
    stale = stale_itts(guest)
    spans = [(addr, size, f"{what} over a stale ITT of dev{dev:#x}") for dev, addr, size in stale]
    pend = stale_pending_tables(guest)
    spans += [
        (addr, size, f"{what} over a stale pending table of vcpu{v}") for v, addr, size in pend
    ]
    for pfn in sorted(leftover_shared):
        addr = pfn << PAGE_SHIFT
        if memory.ownership.state(world.guest_name, pfn) is not PageState.SHARED_OWNED:
            continue
        kinds = set(labels.kinds(addr, PAGE_SIZE))
        if kinds & ITS_TABLE_KINDS:
            continue
        spans.append((addr, PAGE_SIZE, f"{what} on a page left shared"))
    relabelled = 0
    for addr, size, name in spans:
        for start, stop, label in list(labels.runs(addr, size)):
            if label.kind is not LabelKind.FREE:
                continue
            kind = LabelKind.SECRET if rng.random() < density else LabelKind.KERNEL
            labels.set(start, stop - start, Label(kind, f"{name} @{start:#x}"))
            relabelled += stop - start
    return {
        "stale_devices": [f"{dev:#x}" for dev, _, _ in stale],
        "stale_ranges": [(addr, size) for _, addr, size in stale],
        "stale_pending_tables": [(addr, size) for _, addr, size in pend],
        "stale_itt_bytes": sum(size for _, _, size in stale),
        "relabelled_bytes": relabelled,
        "left_shared_pages": len(leftover_shared),
    }
