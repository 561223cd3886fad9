"""The ``linux`` ITS driver as one kernel generation runs it (``guest.kernel: "6.1"|"7.3"``).

:class:`~sim.actors.guest.Guest` models the pattern both generations share. With
``guest.kernel`` set, :class:`LinuxGuest` also follows what the bundled captures
(``sim/data/captures/``) show each generation doing, from
``drivers/irqchip/irq-gic-v3-its.c`` of Debian 6.1.192 and 7.3.4:

- LPIs: ``its_lpi_alloc(nvecs)`` takes a power-of-two block, first fit in the free LPI
  ranges (``alloc_lpi_range``), given back on free (``free_lpi_range``). Event ``i`` maps
  ``lpi_base + i``.
- ITT size: ``nr_ites = max(2, nvecs)`` with ``nvecs`` rounded up to a power of two. On
  6.1 ``nvecs`` is what the driver allocates (``its_msi_prepare`` per allocation); on 7.3
  the per-device MSI domain is prepared once with the MSI-X table size (the captured
  nvme: MAPD Size 6, 128 events, for QEMU's 65-entry table; virtio-net Size 2).
- target CPU (``its_select_cpu``): an unmanaged vector goes to the online CPU with the
  fewest unmanaged LPIs (``cpumask_pick_least_loaded``, lowest CPU on a tie); a managed
  one to the least loaded (managed count) CPU of its affinity mask. The masks spread the
  managed vectors over the CPUs in contiguous groups (``group_cpus_evenly``; simplified:
  no NUMA or sibling grouping).
- free (``free_irq`` then ``pci_free_irq_vectors``), last vector first: the mask (property
  byte cleared, INV + SYNC), then DISCARD + SYNC. On 6.1 freeing the last vector frees the
  device (``its_irq_domain_free``): MAPD V=0 with its Size and ITT address still encoded,
  the ITT and LPIs freed. On 7.3 the device lives as long as its MSI domain
  (``its_msi_teardown``): freeing vectors sends no MAPD, and a re-allocation maps the same
  events onto the same LPIs.
- a driver that probes with fewer vectors first (``probe_vectors``: nvme's admin vector,
  ``nvme_pci_enable``) frees them and allocates its full set (``nvme_setup_io_queues``);
  a device that frees its vectors at power-off (``frees_at_shutdown``) does so when the
  guest powers off (``guest.power_off``). Device removal (churn) frees the vectors and
  tears the device down (MAPD V=0) on both.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from sim.actors.guest import LPI_PROP_DEFAULT, LPI_PROP_ENABLED, Guest, GuestDevice
from sim.its import regs as r
from sim.its.commands import DISCARD, INV, MAPD, MAPTI, MOVI, SYNC
from sim.its.kernel import KernelGen
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from sim.world import Machine, World

NR_LPIS = (1 << 16) - r.GIC_LPI_OFFSET


def pow2ceil(n: int) -> int:
    return 1 << (n - 1).bit_length()


def affinity_masks(nr_managed: int, nr_cpus: int) -> list[range]:
    """The CPUs each managed vector may target: ``nr_managed`` groups spread evenly."""
    if nr_managed >= nr_cpus:
        return [range(j % nr_cpus, j % nr_cpus + 1) for j in range(nr_managed)]
    base, extra = divmod(nr_cpus, nr_managed)
    out, cpu = [], 0
    for j in range(nr_managed):
        n = base + (j < extra)
        out.append(range(cpu, cpu + n))
        cpu += n
    return out


class LinuxGuest(Guest):
    """The linux driver with one generation's choices (see the module docstring)."""

    def __init__(self, world: World, machine: Machine) -> None:
        super().__init__(world, machine)
        self.gen = KernelGen(self.spec.kernel)
        self.lpi_free: list[tuple[int, int]] = [(r.GIC_LPI_OFFSET, NR_LPIS)]  # (INTID, count)
        cpus = self.spec.vcpus
        self.load = {False: [0] * cpus, True: [0] * cpus}  # its_inc_lpi_count: by managed
        self.present: dict[str, tuple[int, int]] = {}  # its_device alive: name -> (Size, ITT)
        self.lpi_block: dict[str, tuple[int, int]] = {}  # name -> (lpi_base, nr_lpis)
        self.active: dict[str, list[tuple[int, bool]]] = {}  # per vector: (vCPU, managed)
        self.probed: set[str] = set()

    # ---- LPIs and CPUs -------------------------------------------------------------------

    def _lpi_alloc(self, n: int) -> int:
        for i, (start, count) in enumerate(self.lpi_free):
            if count >= n:
                self.lpi_free[i] = (start + n, count - n)
                if count == n:
                    del self.lpi_free[i]
                return start
        raise MemoryError("no free LPI range")

    def _lpi_release(self, start: int, n: int) -> None:
        merged: list[tuple[int, int]] = []
        for s, c in sorted([*self.lpi_free, (start, n)]):
            if merged and merged[-1][0] + merged[-1][1] == s:
                merged[-1] = (merged[-1][0], merged[-1][1] + c)
            else:
                merged.append((s, c))
        self.lpi_free = merged

    def _select_cpu(self, vector: int, nvecs: int, managed_count: int) -> tuple[int, bool]:
        first_managed = nvecs - managed_count
        managed = vector >= first_managed
        if managed:
            mask = affinity_masks(managed_count, self.spec.vcpus)[vector - first_managed]
        else:
            mask = range(self.spec.vcpus)
        counts = self.load[managed]
        cpu = min(mask, key=lambda c: (counts[c], c))
        counts[cpu] += 1
        return cpu, managed

    # ---- bring-up and free ---------------------------------------------------------------

    def add_device(self, name: str) -> Generator:
        dev = self.devices[name]
        spec = dev.spec
        if spec.probe_vectors and name not in self.probed:
            self.probed.add(name)
            yield from self._bring_up(dev, spec.probe_vectors)
            yield from self._free_vectors(dev, keep_device=self.gen is KernelGen.V7_3)
        yield from self._bring_up(dev, spec.vectors)

    def _bring_up(self, dev: GuestDevice, nvecs: int) -> Generator:
        """its_msi_prepare (when the device is new), then activate and unmask each vector."""
        name, spec = dev.spec.name, dev.spec
        dev_id = spec.device_id
        if name not in self.present:
            sized = spec.msix_table_size or spec.vectors if self.gen is KernelGen.V7_3 else nvecs
            n = pow2ceil(sized)
            nr_ites = max(2, n)
            yield from self._ensure_l2(dev_id)
            yield from self._alloc_itt(dev, nr_ites)
            lpi_base = self._lpi_alloc(n)
            self.lpi_block[name] = (lpi_base, n)
            dev.lpi_base = lpi_base
            size = nr_ites.bit_length() - 2
            self.present[name] = (size, dev.itt_addr)
            yield from self.send(MAPD(dev_id, size, dev.itt_addr, True))
        managed = spec.managed_vectors if nvecs == spec.vectors else 0
        active = []
        for i in range(nvecs):
            vcpu, is_managed = self._select_cpu(i, nvecs, managed)
            active.append((vcpu, is_managed))
            idx = dev.lpi_base + i - r.GIC_LPI_OFFSET
            self.lpi_vcpu[idx] = vcpu
            self.lpi_users[idx] += 1
            yield from self.send(MAPTI(dev_id, i, dev.lpi_base + i, vcpu), SYNC(vcpu))
        self.active[name] = active
        for i in range(nvecs):
            self.write(
                self.prop + dev.lpi_base + i - r.GIC_LPI_OFFSET,
                bytes([LPI_PROP_DEFAULT | LPI_PROP_ENABLED]),
            )
            yield from self.send(INV(dev_id, i), SYNC(active[i][0]))
        dev.mapped = nvecs == spec.vectors

    def _free_vectors(self, dev: GuestDevice, keep_device: bool) -> Generator:
        """free_irq + pci_free_irq_vectors, last vector first; the device too unless kept."""
        name, dev_id = dev.spec.name, dev.spec.device_id
        active = self.active.pop(name, [])
        dev.mapped = False
        for i in reversed(range(len(active))):
            vcpu, managed = active[i]
            idx = dev.lpi_base + i - r.GIC_LPI_OFFSET
            self.write(self.prop + idx, bytes([LPI_PROP_DEFAULT]))
            yield from self.send(INV(dev_id, i), SYNC(vcpu))
            yield from self.send(DISCARD(dev_id, i), SYNC(vcpu))
            self.load[managed][vcpu] -= 1
            self.lpi_users[idx] -= 1
        if keep_device:
            return
        size, itt = self.present.pop(name)
        unmapped_at = self.world.env.now
        yield from self.send(MAPD(dev_id, size, itt, False))
        self._lpi_release(*self.lpi_block.pop(name))
        first, end = dev.itt_addr >> PAGE_SHIFT, (dev.itt_addr + dev.itt_size - 1 >> PAGE_SHIFT) + 1
        self.unmaps.append((unmapped_at, self.machine.name, range(first, end)))
        yield from self.world.proposal.on_itt_free(self, dev.itt_addr, dev.itt_size)
        obj, obj_size = dev.itt_object
        if self.spec.allocator == "linux-kzalloc" and dev.itt_cache is not None:
            dev.itt_cache.put_kernel_object(obj, f"kmalloc-{obj_size}@{obj:#x} (reused)")
        elif self.spec.allocator != "linux-kzalloc" and dev.itt_size < PAGE_SIZE:
            self.pool.free(dev.itt_addr, dev.itt_size)
        else:
            self.machine.memory.labels.clear(obj, obj_size)

    def remove_device(self, name: str) -> Generator:
        """Hot-unplug: the vectors freed and the device torn down (MAPD V=0), both kernels."""
        yield from self._free_vectors(self.devices[name], keep_device=False)

    def power_off(self) -> Generator:
        """Devices whose drivers free their vectors at shutdown do so (nvme_shutdown)."""
        for dev in self.devices.values():
            if dev.spec.frees_at_shutdown and dev.mapped:
                yield from self._free_vectors(dev, keep_device=self.gen is KernelGen.V7_3)

    def move_vector(self, name: str, vector: int, vcpu: int) -> Generator:
        """its_set_affinity: the LPI counts follow the vector (its_inc/dec_lpi_count)."""
        dev = self.devices[name]
        active = self.active.get(name)
        if active is not None and vector < len(active):
            old, managed = active[vector]
            self.load[managed][old] -= 1
            self.load[managed][vcpu] += 1
            active[vector] = (vcpu, managed)
        idx = dev.lpi_base + vector - r.GIC_LPI_OFFSET
        self.lpi_vcpu[idx] = vcpu
        yield from self.send(MOVI(dev.spec.device_id, vector, vcpu), SYNC(vcpu))

    def run(self) -> Generator:
        yield from super().run()
        if self.spec.power_off:
            end = self.world.scenario.workload.duration_ms * 1000.0
            yield self.world.env.timeout(max(0.0, end - self.world.env.now))
            yield from self.step(self.power_off())
