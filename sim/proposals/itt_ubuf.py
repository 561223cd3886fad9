"""itt-ubuf: Ilias Stamatis' RFC: the ITTs go to a VMM buffer, the other tables stay put.

SAVE_TABLES with ``KVM_DEV_ARM_ITS_ITT_UBUF`` writes every ITT into the buffer passed in
``kvm_device_attr.addr`` (copy_to_user into VMM memory) and the DTEs and CTEs into the
device and collection tables in guest memory; SAVE_PENDING_TABLES writes the pending
bits into guest memory as usual. The buffer travels in the migration stream; RESTORE
walks the guest's tables and takes the ITEs from the buffer (``sim.its.ittbuf``, whose
byte format is this model's own: the RFC's is not available to us).

What "the tables stay in guest memory" means under pKVM: KVM (the host) must write and
read those pages, so they must be shared with the host. The RFC assumes the guest does
it; the model has the guest's driver share its BASER pages (the device and collection
tables, and the pending tables) as mainline Linux already does (``its_alloc_pages`` from
shared memory since b08e2f42e86b). So the DTEs and CTEs are exposed to the host and
corruptible by it; the ITTs are not: with the flag KVM never writes an ITT in guest
memory. That includes DISCARD: mainline zeroes the ITE in guest memory, which on an ITT
the guest keeps private would fault (-EFAULT for every DISCARD); a KVM whose ITTs live
in the buffer has no ITE there to clear (the RFC's patch is not available to say whether
it changes DISCARD: this is the model's reading). MAPD V=0 still zeroes the DTE.

Distinct from ``userspace-serialization`` (``sim.its.blob``), which moves the whole vITS,
pending bits included, into the buffer and leaves no KVM entry in guest memory.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from sim.its.ittbuf import restore_tables_ubuf, save_tables_ubuf
from sim.proposals.base import Payload, Proposal

if TYPE_CHECKING:
    from sim.world import World


class ITTUbuf(Proposal):
    name = "itt-ubuf"
    summary = (
        "SAVE/RESTORE_TABLES with KVM_DEV_ARM_ITS_ITT_UBUF: ITTs into a VMM buffer, device"
        " and collection tables in (guest-shared) guest memory"
    )
    el2_lines_source = (
        "none: a KVM (EL1) change; the guest shares its tables through mainline MEM_SHARE"
    )
    kvm_clears_ites = False  # the ITTs are the buffer's, not guest memory's

    def save(self, world: World) -> Generator[object, object, Payload]:
        from sim.proposals.userspace_serialization import vmm_buffer_base

        host = world.src.host
        costs = world.costs
        error, buf = save_tables_ubuf(host.its)
        if error is not None:
            world.its_errors.append(f"src SAVE_TABLES (ITT_UBUF): {error}")
        host.vmm_write(vmm_buffer_base(world), buf)  # copy_to_user to kvm_device_attr.addr
        world.ledger.bytes_copied += len(buf)
        error = host.its.save_pending_tables()
        if error is not None:
            world.its_errors.append(f"src SAVE_PENDING_TABLES: {error}")
        entries = len(host.its.devices) + len(host.its.collections)  # DTEs and CTEs
        cost = 2 * costs.ioctl_us + entries * costs.guest_entry_us
        yield world.charge(host.name, cost + len(buf) / (costs.memcpy_gbps * 1e3))
        return Payload(regs=host.its_regs(), blob=buf)

    def restore(self, world: World, payload: Payload) -> Generator:
        from sim.proposals.userspace_serialization import vmm_buffer_base

        host = world.dst.host
        host.vmm_write(vmm_buffer_base(world), payload.blob)
        yield from host.restore_regs(payload.regs)
        buf = host.vmm_read(vmm_buffer_base(world), len(payload.blob))  # copy_from_user
        error = restore_tables_ubuf(host.its, buf)
        if error is not None:
            world.its_errors.append(f"dst RESTORE_TABLES (ITT_UBUF): {error}")
        world.ledger.bytes_copied += len(buf)
        costs = world.costs
        entries = len(host.its.devices) + len(host.its.collections)
        cost = costs.ioctl_us + entries * costs.guest_entry_us
        yield world.charge(host.name, cost + len(buf) / (costs.memcpy_gbps * 1e3))
        host.enable_its(payload.regs)
