"""Live update: the host kernel replaced under running VMs on the same machine.

``migration.mode: live-update``. At ``migration.at_ms`` the VMM pauses the VM, saves
its ITS the proposal's way, the host kexecs into a new kernel that is handed the VM's
memory, EL2 and the VMM's buffers (KHO-style preservation: nothing crosses a network,
no page is exported or re-imported, EL2 with its page states and IOMMU domains stays
resident), the new kernel's KVM creates a fresh vITS and the proposal restores into it.
Guest memory never moves, so what the save dirtied costs nothing to send.

``migration.vms`` VMs alike are updated together; the run simulates one of them. The VMs
are independent (each its own vITS, memory, EL2 VM state), so one VM's work per phase
(save, restore) scales to N analytically, with two resources shared between them:

- the host CPUs (``migration.host_cpus``) that run each VM's save and restore ioctls in
  parallel (KVM takes per-VM locks: ``kvm->lock``, ``its->its_lock``);
- pKVM's ``host_mmu.lock``, which every page-state transition holds
  (``arch/arm64/kvm/hyp/nvhe/mem_protect.c``: ``host_lock_component()`` in
  ``__pkvm_guest_share_host`` and the host-side share paths): EL2's stage-2 updates and
  TLB invalidations of all VMs run one at a time.

With ``P`` the parallel and ``S`` the serialised time of one VM's phase and
``W = ceil(N / CPUs)`` waves, the phase takes at least ``max(W (P + S), N S)`` and at
most ``W P + N S`` (the lock held for the whole serialised part, never overlapped); the
ITS blackout is the sum over save and restore. The run waits out the upper bound, so
``its_downtime_ms`` of a live-update result is the N-VM blackout's upper bound.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim.actors.guest import intid_of

if TYPE_CHECKING:
    from sim.migration import Correctness
    from sim.world import World

# The N the live-update chart and table sweep (the scenario's own N is marked).
VM_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class PhaseCost:
    """One VM's save or restore, as simulated."""

    wall_us: float  # the phase's duration for one VM alone
    serial_us: float  # of which EL2 holds host_mmu.lock (stage-2 updates, TLBIs)
    hypercalls: int
    page_transitions: int  # pages whose pKVM state changed
    tlbis: int

    def bounds(self, vms: int, cpus: int) -> tuple[float, float]:
        """(least, most) time the phase takes for ``vms`` such VMs on ``cpus`` CPUs."""
        waves = -(-vms // cpus)
        parallel = self.wall_us - self.serial_us
        low = max(waves * self.wall_us, vms * self.serial_us)
        return low, waves * parallel + vms * self.serial_us


@dataclass(frozen=True)
class LiveUpdateCost:
    save: PhaseCost
    restore: PhaseCost
    vms: int
    host_cpus: int

    def blackout_us(self, vms: int | None = None) -> tuple[float, float]:
        """(least, most) ITS blackout of a live update of ``vms`` VMs (default: the
        scenario's)."""
        n = self.vms if vms is None else vms
        s_low, s_high = self.save.bounds(n, self.host_cpus)
        r_low, r_high = self.restore.bounds(n, self.host_cpus)
        return s_low + r_low, s_high + r_high


def _phase(world: World, what: str, action: Callable[[], Generator]) -> Generator:
    """Run one VM's phase; return (its result, its PhaseCost), then wait for the others."""
    env, costs = world.env, world.costs
    own = world.src.memory.ownership
    start, first, tlbis = env.now, len(own.history), own.tlb_invalidations
    hypercalls = sum(world.ledger.hypercalls.values())
    result = yield from action()
    pages = sum(ch.nr_pages for ch in own.history[first:])
    tlbis = own.tlb_invalidations - tlbis
    cost = PhaseCost(
        wall_us=env.now - start,
        serial_us=pages * costs.s2_update_us + tlbis * costs.tlbi_us,
        hypercalls=sum(world.ledger.hypercalls.values()) - hypercalls,
        page_transitions=pages,
        tlbis=tlbis,
    )
    spec = world.scenario.migration
    _, most = cost.bounds(spec.vms, spec.host_cpus)
    if most > cost.wall_us:
        yield env.timeout(most - cost.wall_us)  # the other VMs' share of CPUs and lock
    world.span("migration", f"{what} ({spec.vms} VMs)", start)
    return result, cost


def live_update(world: World, correctness: Correctness) -> Generator:
    from sim.actors.host import Host
    from sim.migration import _check, memory_map

    env = world.env
    machine = world.src
    spec = world.scenario.migration
    yield env.timeout(spec.at_ms * 1000.0)
    with world.vcpus.request() as vcpus:
        yield vcpus  # kvm_trylock_all_vcpus: wait for the guest's current step
        world.paused = True
        start = env.now
        correctness.ok_before, correctness.expected = _check(
            machine, world.guest, "before the update", correctness.mismatches
        )
        for behaviour in machine.host.behaviours:
            yield from behaviour.before_save()
        world.memory_map = memory_map(world, machine)
        payload, save = yield from _phase(world, "save", lambda: world.proposal.save(world))
        for behaviour in machine.host.behaviours:
            yield from behaviour.after_save(payload)
        # kexec of the host: the old kernel's KVM and its vITS go; the new kernel gets the
        # VM's memory, EL2 and the VMM's buffers as they were.
        old = machine.host
        old.destroy_vm()
        machine.host = Host(world, machine)
        machine.host.behaviours = old.behaviours
        machine.host.new_vits()
        _, restore = yield from _phase(
            world, "restore", lambda: world.proposal.restore(world, payload)
        )
        world.ledger.its_downtime_us = env.now - start
        world.live_update_cost = LiveUpdateCost(save, restore, spec.vms, spec.host_cpus)
        yield env.timeout(world.costs.other_downtime_ms * 1000.0)
        world.ledger.downtime_us = env.now - start
        correctness.ok_after, _ = _check(
            machine, world.guest, "after the update", correctness.mismatches
        )
        world.paused = False
        world.resumed.succeed()
        world.resumed = env.event()

    for dev in world.guest.devices.values():
        if dev.mapped:
            correctness.resume_msis += 1
            ok = yield from machine.host.inject_msi(dev.spec.device_id, 0)
            lpi = machine.host.its.lpis.get(intid_of(dev.lpi_base, 0))
            if (
                ok
                and lpi is not None
                and lpi.pending
                and lpi.target_vcpu == world.guest.vcpu_of(dev, 0)
            ):
                correctness.resume_msis_delivered += 1
