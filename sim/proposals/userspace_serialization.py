"""userspace-serialization: KVM hands the vITS state to the VMM in a buffer.

No guest page is shared for the tables: SAVE copies the state into a VMM buffer in host
memory, the buffer travels in the migration stream, RESTORE rebuilds the destination
vITS from it, pending bits included. The blob is host data; it holds no guest byte.

A serializing KVM keeps the ITS tables out of guest memory altogether: guest memory
holds no DTE or ITE of KVM's, so MAPD V=0 and DISCARD have nothing to clear there and
KVM does not write guest memory for them (mainline zeroes the DTE and the ITE, which
here would fault on an ITT page the host cannot reach: -EFAULT for every DISCARD).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from sim.its.blob import deserialize, serialize
from sim.proposals.base import Payload, Proposal

if TYPE_CHECKING:
    from sim.world import World

VMM_BUFFER_ALIGN = 1 << 30  # the VMM's buffer starts on the first 1 GiB boundary past RAM


def vmm_buffer_base(world: World) -> int:
    """Where the VMM's buffer lies: host memory just past the end of guest RAM.

    The VMM's own memory is host memory outside every guest memslot; placing it past the
    guest's RAM, whatever its size, keeps it out of the guest (a fixed address would land
    inside a large guest's RAM, which a protected guest owns)."""
    from sim.world import RAM_BASE

    end = RAM_BASE + world.ram_size
    return -(-end // VMM_BUFFER_ALIGN) * VMM_BUFFER_ALIGN


class UserspaceSerialization(Proposal):
    name = "userspace-serialization"
    summary = "KVM serializes the vITS into a VMM buffer; no guest memory shared"
    kvm_clears_entries = False  # no KVM table entry in guest memory to clear
    el2_lines_source = "none: KVM (EL1) serializes into a VMM buffer; EL2 is unchanged"

    def save(self, world: World) -> Generator[object, object, Payload]:
        src = world.src
        host = src.host
        blob = serialize(host.its)
        host.vmm_write(vmm_buffer_base(world), blob)  # copy_to_user into the VMM's buffer
        world.ledger.bytes_copied += len(blob)
        costs = world.costs
        yield world.charge(host.name, 2 * costs.ioctl_us + len(blob) / (costs.memcpy_gbps * 1e3))
        return Payload(regs=host.its_regs(), blob=blob)

    def restore(self, world: World, payload: Payload) -> Generator:
        dst = world.dst
        host = dst.host
        buffer = vmm_buffer_base(world)
        host.vmm_write(buffer, payload.blob)
        yield from host.restore_regs(payload.regs)
        blob = host.vmm_read(buffer, len(payload.blob))  # copy_from_user
        error = deserialize(host.its, blob)
        if error is not None:
            world.its_errors.append(f"dst RESTORE (blob): {error}")
        world.ledger.bytes_copied += len(blob)
        costs = world.costs
        yield world.charge(host.name, costs.ioctl_us + len(blob) / (costs.memcpy_gbps * 1e3))
        host.enable_its(payload.regs)
