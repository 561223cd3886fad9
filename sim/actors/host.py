"""The EL1 host: KVM's vITS emulation, the MSI workload of the VMM's devices, the VMM.

The host is honest here: it emulates what the guest asks and migrates the way the
proposal says. Every guest-memory access it makes goes through the access check.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Generator
from typing import TYPE_CHECKING

from sim.its import regs as r
from sim.its.vits import VirtualITS
from sim.memory.access import Initiator
from sim.memory.ownership import HOST

if TYPE_CHECKING:
    from sim.world import Machine, World


class Host:
    def __init__(self, world: World, machine: Machine) -> None:
        self.world = world
        self.machine = machine
        self.name = f"{machine.name}.host"
        self.its: VirtualITS | None = None
        self.cpu = Initiator(f"{self.name}.vmm", HOST)
        self.processed = world.env.event()  # fires each time the queue has been run
        self.behaviours: list = []  # sim.attacks behaviours acting as this host
        self.vm_destroyed = False  # the VM left: KVM_DESTROY freed its vITS with it
        self.cwriter_written = 0  # the last GITS_CWRITER value the guest wrote here
        from sim.proposals.base import hooks_of

        self._hooks = hooks_of(world.proposal)  # the trap hooks that can do something

    def create_vm(self) -> None:
        """KVM_CREATE_VM and the vITS device; the lowvisor takes the guest's RAM."""
        self.machine.lowvisor.create_vm(self.world.proposal.protected)
        self.new_vits()

    def new_vits(self) -> None:
        """A vITS as KVM_CREATE_DEVICE makes it (also KVM_DEV_ARM_ITS_CTRL_RESET's result:
        no device, no collection, registers at reset) with the redistributors' LPI state."""
        from sim.world import GUEST, RAM_BASE

        proposal = self.world.proposal
        initiator = proposal.its_initiator(self.machine)
        self.its = VirtualITS(
            nr_vcpus=self.world.scenario.guest.vcpus,
            ram_base=RAM_BASE,
            ram_size=self.world.ram_size,
            memory=self.machine.memory,
            guest=GUEST,
            name=self.machine.name,
            probe=False,
            initiator=initiator,
            kernel=self.world.scenario.kernel,
            clears_entries=proposal.kvm_clears_entries,
            clears_ites=proposal.kvm_clears_ites,
        )

    def handle_mmio(self, offset: int, val: int) -> Generator:
        """Emulate one trapped ITS register write.

        KVM runs the command queue inside the CWRITER write; a host that delays the work
        (a behaviour) returns to the guest first and processes later. Either way EL2 is
        told once the queue has been processed.
        """
        delay = self.processing_delay(offset, val)
        if offset == r.GITS_CWRITER:
            self.cwriter_written = val
        if offset != r.GITS_CWRITER or delay <= 0:
            yield from self._process(offset, val)
            return
        yield self.world.charge(self.name, self.world.costs.mmio_trap_us)
        self.world.env.process(self._process_later(offset, delay))

    def _process_later(self, offset: int, delay: float) -> Generator:
        """Run the queue ``delay`` us late, up to the GITS_CWRITER the guest wrote last
        (the deferred write took the register; replaying an older value would send KVM
        round the whole ring)."""
        yield self.world.env.timeout(delay)
        if self.vm_destroyed:
            return  # the vITS went with the VM: nothing is left to run the queue
        yield from self._process(offset, self.cwriter_written)

    def destroy_vm(self) -> None:
        """The VMM destroys the VM once it runs elsewhere; its vITS goes with it."""
        self.vm_destroyed = True

    def _process(self, offset: int, val: int) -> Generator:
        its = self.its
        before = len(its.command_log)
        if offset == r.GITS_CWRITER and "before_process" in self._hooks:
            yield from self.world.proposal.before_process(self.machine, offset, val)
        its.mmio_write(offset, val)
        commands = len(its.command_log) - before
        costs = self.world.costs
        yield self.world.charge(self.name, costs.mmio_trap_us + commands * costs.its_cmd_us)
        if commands:
            if "after_process" in self._hooks:
                yield from self.world.proposal.after_process(self.machine)
            processed, self.processed = self.processed, self.world.env.event()
            processed.succeed()

    def processing_delay(self, offset: int, val: int) -> float:
        """How long this host sits on a CWRITER write before running the queue (us)."""
        behaviours = self.behaviours
        if len(behaviours) == 1:  # the usual host: one behaviour, no generator for max()
            return behaviours[0].processing_delay(self, offset, val)
        return max((b.processing_delay(self, offset, val) for b in behaviours), default=0.0)

    def handle_redist(self, vcpu: int, reg: str, val: int) -> Generator:
        """A trapped GICR_PROPBASER / GICR_PENDBASER / GICR_CTLR write."""
        its = self.its
        if reg == "GICR_PROPBASER":
            its.write_propbaser(vcpu, val)
        elif reg == "GICR_PENDBASER":
            its.write_pendbaser(vcpu, val)
        elif reg == "GICR_CTLR":
            its.set_lpis_enabled(vcpu, bool(val & 1))
        else:
            raise ValueError(f"no redistributor register {reg}")
        yield self.world.charge(self.name, self.world.costs.mmio_trap_us)

    def inject_msi(self, device_id: int, event_id: int) -> Generator[object, object, bool]:
        """The VMM's device raises an MSI (irqfd): KVM translates it through the vITS."""
        yield self.world.charge(self.name, self.world.costs.msi_inject_us)
        error = self.its.inject_msi(device_id, event_id)
        if error is not None:
            self.world.ledger.msis_failed += 1
            return False
        self.world.ledger.msis_delivered += 1
        return True

    def msi_workload(self) -> Generator:
        """Each device raises MSIs on random vectors as a Poisson process."""
        world = self.world
        env = world.env
        devices = [d for d in world.scenario.devices if d.rate_hz > 0]
        if not devices:
            return
        rng = world.rng(f"{self.machine.name}.msi")
        rate = sum(d.rate_hz for d in devices) / 1e6
        cum_weights = list(itertools.accumulate(d.rate_hz for d in devices))
        total, last = cum_weights[-1] + 0.0, len(devices) - 1
        end = world.scenario.workload.duration_ms * 1000.0
        guest = world.guest
        state = [guest.devices[d.name] for d in devices]
        timeout, random, getrandbits, log = env.timeout, rng.random, rng.getrandbits, math.log
        ledger, name = world.ledger, self.name
        inject_us = world.costs.msi_inject_us
        ids = [d.device_id for d in devices]
        vectors = [d.vectors for d in devices]
        vector_bits = [n.bit_length() for n in vectors]
        machine = self.machine
        pick = bisect.bisect
        while True:  # the hot loop of most runs: keep it lean
            # rng.expovariate(rate), the same draw without its frame (random.py: CPython
            # 3.11 to 3.13 compute it so)
            yield timeout(-log(1.0 - random()) / rate)
            if env._now >= end:  # (env.now, without the property's Python frame)
                return
            if world.paused or guest.machine is not machine:
                continue  # backends are quiesced while the VM is paused or elsewhere
            # rng.choices(devices, cum_weights)[0], the same draw without the list
            i = pick(cum_weights, random() * total, 0, last)
            # rng.randrange(vectors[i]), the same draw: CPython's rejection sampling on
            # getrandbits (Random._randbelow_with_getrandbits), without its two frames
            n, bits = vectors[i], vector_bits[i]
            vector = getrandbits(bits)
            while vector >= n:
                vector = getrandbits(bits)
            if state[i].mapped:
                # inject_msi(), inline: charge the injection (World.charge, inline: not
                # paused, so no span), then translate (VirtualITS._trigger_msi)
                ledger.cpu_us[name] += inject_us
                yield timeout(inject_us)
                if self.its._trigger_msi(ids[i], vector) is None:
                    ledger.msis_delivered += 1
                else:
                    ledger.msis_failed += 1

    # ---- the VMM's side of migration -----------------------------------------------------

    def vmm_write(self, addr: int, data: bytes) -> None:
        """The VMM writes its own (host) memory, e.g. a buffer for KVM to fill."""
        self.machine.memory.write(self.cpu, addr, data)

    def vmm_read(self, addr: int, length: int) -> bytes:
        return self.machine.memory.read(self.cpu, addr, length)

    def its_regs(self) -> dict[str, int]:
        return self.its.get_regs()

    def restore_regs(self, regs: dict[str, int]) -> Generator:
        """Registers through KVM_SET_DEVICE_ATTR, one ioctl each, GITS_CTLR last."""
        self.its.set_regs(regs)
        yield self.world.charge(self.name, len(regs) * self.world.costs.ioctl_us)

    def enable_its(self, regs: dict[str, int]) -> None:
        self.its.mmio_write(r.GITS_CTLR, regs["GITS_CTLR"])
