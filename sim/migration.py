"""Live migration as the VMM runs it: pause, save the ITS, transfer, restore, resume.

Only the stop-and-copy phase is modelled in detail: guest RAM was pre-copied while the
guest ran, so the downtime carries the ITS work (save, the pages the save dirtied or
the serialized blob on the wire, restore) plus a fixed ``other_downtime_ms`` for the rest
of the VM. Afterwards every translation the guest believes in is checked on the
destination, and one MSI per device is raised there.
"""

from __future__ import annotations

import bisect
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sim.actors.guest import intid_of
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from sim.actors.guest import Guest
    from sim.world import Machine, PageView, World


@dataclass
class Correctness:
    expected: int = 0
    ok_before: int = 0  # translations that held on the source before the pause
    ok_after: int = 0  # ... and on the destination after resume
    mismatches: list[str] = field(default_factory=list)
    resume_msis: int = 0
    resume_msis_delivered: int = 0


def _check(machine: Machine, guest: Guest, tag: str, out: list[str]) -> tuple[int, int]:
    """(translations that hold on ``machine``, translations the guest expects)."""
    ok = expected = 0
    translate = machine.host.its.translate
    for (dev, ev), want in guest.translations():
        expected += 1
        got = translate(dev, ev)
        if got == want:
            ok += 1
        elif len(out) < 20:
            out.append(f"{tag}: ({dev:#x}, {ev}) -> {got}, expected {want}")
    return ok, expected


def _pages_written(machine: Machine, since: float, actors: set[str]) -> list[int]:
    """Distinct pages the given initiators wrote since ``since`` (the save dirtied them)."""
    return sorted(machine.memory.log.pages_written(since, actors))


def stream_pages(world: World, machine: Machine, pfns: list[int]) -> Generator:
    """Put the pages the save dirtied into the migration stream.

    A page the host's stage-2 maps (the guest shared it) travels in the clear: the VMM
    reads it like any host memory, and whatever secret sits on it is read. A page still
    private to the guest is exported by EL2, encrypted and integrity-protected with a key
    only the two machines' EL2 hold (the model's choice: upstream pKVM migrates no
    protected VM; TDX's MigTD and CCA's planned migration move private state encrypted),
    so the host handles ciphertext and reads no guest byte of it.
    """
    from sim.memory.ownership import HOST

    state = machine.memory.ownership.state
    for pfn in pfns:
        addr = pfn << PAGE_SHIFT
        if state(HOST, pfn).accessible:
            machine.memory.read(machine.host.cpu, addr, PAGE_SIZE)
        else:
            yield from machine.lowvisor.export_private_page(pfn)


@dataclass(frozen=True)
class MemoryMap:
    """Every guest page that holds something at one moment (the migration pause), with
    its labels and host reachability; iterating it gives one ``PageView`` a page, in pfn
    order. The moment's label runs and the host's stage-2 runs are kept; the pages are
    built only when read (the charts), not in every run."""

    labels: list  # (start, end, Label): the non-free label runs over guest RAM
    host: list  # (first_pfn, end_pfn, PageState): the host's view over the same pages

    def __iter__(self) -> Iterator[PageView]:
        from sim.world import PageView

        starts = [first for first, _, _ in self.host]
        pages: dict[int, dict[str, int]] = {}
        for start, end, label in self.labels:
            kind = str(label.kind)
            for pfn in range(start >> PAGE_SHIFT, ((end - 1) >> PAGE_SHIFT) + 1):
                lo, hi = max(start, pfn << PAGE_SHIFT), min(end, (pfn + 1) << PAGE_SHIFT)
                kinds = pages.setdefault(pfn, {})
                kinds[kind] = kinds.get(kind, 0) + hi - lo
        for pfn, kinds in sorted(pages.items()):
            state = self.host[bisect.bisect_right(starts, pfn) - 1][2]
            yield PageView(pfn, kinds, state.accessible)


def memory_map(world: World, machine: Machine) -> MemoryMap:
    """The guest's pages on ``machine`` now: what each holds, whether the host reaches it."""
    from sim.memory.ownership import HOST
    from sim.world import RAM_BASE

    first, nr = RAM_BASE >> PAGE_SHIFT, world.ram_size >> PAGE_SHIFT
    labels = [
        run
        for run in machine.memory.labels.run_list(RAM_BASE, world.ram_size)
        if run[2].kind != "free"
    ]
    return MemoryMap(labels, list(machine.memory.ownership.runs(HOST, first, nr)))


def migrate(world: World, correctness: Correctness) -> Generator:
    if world.live_update:  # the host kernel replaced on the same machine
        from sim.liveupdate import live_update

        yield from live_update(world, correctness)
        return
    env = world.env
    costs = world.costs
    src, dst = world.src, world.dst
    yield env.timeout(world.scenario.migration.at_ms * 1000.0)
    with world.vcpus.request() as vcpus:
        yield vcpus  # kvm_trylock_all_vcpus: wait for the guest's current step
        world.paused = True
        start = env.now
        # The guest is paused: what it expects stays as it is until resume.
        correctness.ok_before, correctness.expected = _check(
            src, world.guest, "source", correctness.mismatches
        )

        for behaviour in src.host.behaviours:
            yield from behaviour.before_save()
        world.memory_map = memory_map(world, src)
        phase = env.now
        payload = yield from world.proposal.save(world)
        world.span("migration", "save", phase)
        for behaviour in src.host.behaviours:
            yield from behaviour.after_save(payload)
        its_actors = {src.host.its.kvm.who.name}
        dirtied = _pages_written(src, start, its_actors)
        yield from stream_pages(world, src, dirtied)
        stream = len(dirtied) * PAGE_SIZE + len(payload.blob)
        world.ledger.stream_bytes += stream
        phase = env.now
        yield env.timeout(stream * 8 / (costs.network_gbps * 1e3))
        world.span("migration", "transfer", phase)

        phase = env.now
        yield from dst.lowvisor.import_guest(src)
        world.span("migration", "import guest pages", phase)
        world.guest.moved_to(dst)
        phase = env.now
        yield from world.proposal.restore(world, payload)
        world.span("migration", "restore", phase)
        world.ledger.its_downtime_us = env.now - start

        yield env.timeout(costs.other_downtime_ms * 1000.0)
        world.ledger.downtime_us = env.now - start
        correctness.ok_after, _ = _check(dst, world.guest, "destination", correctness.mismatches)
        world.paused = False
        world.resumed.succeed()
        world.resumed = env.event()
        src.lowvisor.teardown_vm()
        src.host.destroy_vm()

    for dev in world.guest.devices.values():
        if dev.mapped:
            correctness.resume_msis += 1
            ok = yield from dst.host.inject_msi(dev.spec.device_id, 0)
            lpi = dst.host.its.lpis.get(intid_of(dev.lpi_base, 0))
            vcpu = world.guest.vcpu_of(dev, 0)
            if ok and lpi is not None and lpi.pending and lpi.target_vcpu == vcpu:
                correctness.resume_msis_delivered += 1
