"""The protected guest's Linux kernel, as far as its GICv3 ITS driver goes.

Modelled on drivers/irqchip/irq-gic-v3-its.c:

- probe: LPI property table (64 KiB, default priority, group 1, disabled), one 64 KiB
  pending table per vCPU, the device table (two-level against KVM: a 64 KiB level-1 page
  and level-2 pages on demand, or flat), a flat 64 KiB collection table and a 64 KiB
  command queue; then MAPC, SYNC, INVALL, SYNC per vCPU.
- a device: ITT of ``max(2, roundup_pow_of_two(nvecs))`` 8-byte entries, at least 256
  bytes; MAPD; per vector MAPTI + SYNC, then at unmask the property byte and INV + SYNC.
- affinity changes: MOVI + SYNC; removal: DISCARD + SYNC per vector, then MAPD V=0.

Driver profiles: ``linux`` sends commands as Linux does, one or two per GITS_CWRITER write
(its_send_single_command). ``bulk`` is a synthetic driver for scale, not Linux: it enables
a device's LPIs in the property table first, then fills the queue with the device's
MAPTIs, an INV for each LPI it is the first to map and a SYNC per target collection, as
many per CWRITER write as the queue holds. With more vectors than the VM's 57,344 LPIs it
maps the surplus onto LPIs already in use, which only kernel 6.1's KVM accepts (its
vgic_add_lpi shares the refcounted LPI; 7.3's vgic_its_map_lpi fails the second MAPTI
with -EEXIST), so such a scenario must say ``kernel: "6.1"`` and the benchmark's bulk runs
do; it moves an LPI by sending MOVI for every ITE that maps it, so its ITEs keep one
collection.

Allocator profiles: ``linux-shared-pool`` is mainline since b08e2f42e86b (tables from
shared pages, ITTs from a pool of shared pages). ``linux-kzalloc`` is the classic ITT path
(``kzalloc`` of ``max(sz, 256) + 255`` bytes, aligned up to 256, in a kmalloc slab shared
with other kernel objects), with the tables still shared: without a shared command queue
no protected guest can use an emulated ITS at all, so only the ITTs differ.
"""

from __future__ import annotations

from array import array
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim.actors.alloc import (
    KMALLOC_MAX_CACHE_SIZE,
    KmallocCache,
    PageAllocator,
    SharedPool,
    kmalloc_size_class,
    slub_order,
)
from sim.its import regs as r
from sim.its.commands import DISCARD, INV, INVALL, MAPC, MAPD, MAPTI, MOVI, SYNC, ITSCommand
from sim.memory.access import Initiator
from sim.memory.labels import Label, LabelKind
from sim.memory.ownership import PageState
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from sim.scenario import DeviceSpec
    from sim.world import Machine, World

ITS_ITT_ALIGN = 256
ITS_QUEUE_TIMEOUT_US = 1_000_000  # its_wait_for_range_completion: 1 s
LPI_PROP_DEFAULT = 0xA0 | 0x2  # LPI_PROP_DEFAULT_PRIO | LPI_PROP_GROUP1, disabled
LPI_PROP_ENABLED = 0x1
# The rest of the kernel heap: slab pages of other users' objects (some of them secrets),
# present in every guest whatever its ITS allocator, so every run has secrets to lose.
HEAP_SLAB_CLASSES = (256, 512, 1024)
HEAP_SLAB_PAGES = 8
NR_LPIS = (1 << 16) - r.GIC_LPI_OFFSET  # 16 INTID bits (KVM's INTERRUPT_ID_BITS_ITS)


@dataclass
class GuestDevice:
    spec: DeviceSpec
    itt_addr: int = 0
    itt_size: int = 0  # bytes the ITT needs
    itt_object: tuple[int, int] = (0, 0)  # (address, size) of the allocation holding it
    itt_cache: KmallocCache | None = None  # the kmalloc cache it came from (linux-kzalloc)
    lpi_base: int = 0  # INTID of vector 0; vector i maps intid(lpi_base, i)
    mapped: bool = False


def lpi_indices(dev: GuestDevice) -> list[int]:
    """``intid_of(dev.lpi_base, i) - 8192`` for each of the device's vectors."""
    start, n = dev.lpi_base - r.GIC_LPI_OFFSET, dev.spec.vectors
    if start + n <= NR_LPIS:
        return list(range(start, start + n))
    return [(start + i) % NR_LPIS for i in range(n)]


def intid_of(lpi_base: int, vector: int) -> int:
    """The INTID a device's vector maps: consecutive from ``lpi_base``, wrapping past the
    last of the VM's LPIs (only a ``bulk`` guest maps that many)."""
    return r.GIC_LPI_OFFSET + (lpi_base - r.GIC_LPI_OFFSET + vector) % NR_LPIS


class Guest:
    def __init__(self, world: World, machine: Machine) -> None:
        from sim.world import GUEST, RAM_BASE

        self.world = world
        self.machine = machine
        self.spec = world.scenario.guest
        self.name = "guest"
        self.cpu = Initiator(f"{self.name}.vcpu", GUEST)
        self.ram_base = RAM_BASE
        self.queue_timeouts = 0  # "ITS queue timeout" messages the guest logged
        self.unmaps: list[tuple[float, str, range]] = []  # (MAPD V=0 time, machine, ITT pfns)
        self.new_kernel()
        # RAM holds another kernel's bytes (after kexec or under a hibernation's boot
        # kernel): what __GFP_ZERO and kzalloc zero must then be written (kernel_swap.py).
        self.dirty_ram = False

    def new_kernel(self, stream: str = "guest", offset: int = 0) -> None:
        """A freshly booted kernel's ITS driver state and allocators: its page allocator
        above the first 16 MiB (firmware, kernel; ``offset`` more), kmalloc caches drawing
        from the ``{stream}.heap`` random stream, and the shared ITT pool. At boot, and
        for a kexec'd or hibernation boot kernel (sim/actors/kernel_swap.py)."""
        world, labels = self.world, self.machine.memory.labels
        self.devices = {d.name: GuestDevice(d) for d in world.scenario.devices}
        self.next_lpi = r.GIC_LPI_OFFSET  # grows past the last LPI only in a bulk guest
        # Per LPI (INTID - 8192): the vCPU the guest targets it at, and its mapped vectors.
        # (arrays: made and freed at once, where a list's every slot is an object)
        self.lpi_vcpu = array("H", [0]) * NR_LPIS  # vCPUs number at most 512
        self.lpi_users = array("q", [0]) * NR_LPIS  # signed, as a list of ints was
        self.cwriter = 0
        self.driver_shared: set[int] = set()  # pages the ITS driver itself shared
        base = self.ram_base
        self.pages = PageAllocator(base + (16 << 20) + offset, base + world.ram_size)
        rng = world.rng(f"{stream}.heap")
        self.kmalloc = {
            size: KmallocCache(
                size,
                self.pages,
                labels,
                rng,
                self.spec.secret_density,
                order=slub_order(size, self.spec.vcpus),
            )
            for size in HEAP_SLAB_CLASSES
        }
        self.pool = SharedPool(self.pages, labels, self._share_now)
        self._pending_shares: list[int] = []

    # ---- memory and hypercalls ------------------------------------------------------------

    @property
    def protected(self) -> bool:
        return self.world.proposal.protected

    def write(self, addr: int, data: bytes) -> None:
        self.machine.memory.write(self.cpu, addr, data)

    def share(self, addr: int, size: int, cause: str) -> Generator:
        """``set_memory_decrypted()``: MEM_SHARE each page (a no-op on a normal VM)."""
        if not self.protected:
            return
        lowvisor = self.machine.lowvisor
        for pfn in range(addr >> PAGE_SHIFT, (addr + size - 1 >> PAGE_SHIFT) + 1):
            if lowvisor.guest_state(pfn) is PageState.OWNED:
                yield from lowvisor.mem_share(pfn, cause)

    def unshare(self, addr: int, size: int, cause: str) -> Generator:
        if not self.protected:
            return
        lowvisor = self.machine.lowvisor
        for pfn in range(addr >> PAGE_SHIFT, (addr + size - 1 >> PAGE_SHIFT) + 1):
            if lowvisor.guest_state(pfn) is PageState.SHARED_OWNED:
                yield from lowvisor.mem_unshare(pfn, cause)

    def _share_now(self, page: int) -> None:
        # SharedPool refills from inside an allocation; the hypercall follows it.
        self._pending_shares.append(page)

    def _flush_pool_shares(self) -> Generator:
        while self._pending_shares:
            page = self._pending_shares.pop(0)
            if self.world.proposal.guest_shares_tables:
                self.driver_shared.add(page >> PAGE_SHIFT)
                yield from self.share(page, PAGE_SIZE, "driver: itt_pool refill")

    def alloc_table(
        self, size: int, label: Label, align: int = r.SZ_64K, share: bool = True
    ) -> Generator:
        """``its_alloc_pages_node()``: zeroed pages, shared with the host (unless not
        ``share``: a queue the proposal keeps private)."""
        addr = self.pages.alloc(size, align)
        self.machine.memory.labels.set(addr, size, label)
        if self.dirty_ram:
            self.write(addr, bytes(size))
        if share and self.world.proposal.guest_shares_tables:
            self.driver_shared.update(
                range(addr >> PAGE_SHIFT, (addr + size - 1 >> PAGE_SHIFT) + 1)
            )
            yield from self.share(addr, size, f"driver: its_alloc_pages {label}")
        return addr

    # ---- talking to the ITS ----------------------------------------------------------------

    def send(self, *cmds: ITSCommand) -> Generator:
        """its_send_single_command: write at GITS_CWRITER, bump it, wait for GITS_CREADR.

        Linux polls CREADR for up to a second (its_wait_for_range_completion), then
        logs "ITS queue timeout" and carries on as if the commands had run.
        """
        size = self.cmdq_size
        for cmd in cmds:
            self.write(self.cmdq + self.cwriter, cmd.encode())
            self.cwriter = (self.cwriter + r.ITS_CMD_SIZE) % size
        yield from self._kick()

    def send_bulk(self, raw: list[bytes]) -> Generator:
        """The bulk driver: encoded commands, as many per CWRITER write as the queue holds
        (all but one slot: CWRITER = CREADR means empty), each run written at once."""
        size = self.cmdq_size
        room = size // r.ITS_CMD_SIZE - 1
        for first in range(0, len(raw), room):
            batch = raw[first : first + room]
            while batch:
                fit = (size - self.cwriter) // r.ITS_CMD_SIZE  # slots before the wrap
                run, batch = batch[:fit], batch[fit:]
                self.write(self.cmdq + self.cwriter, b"".join(run))
                self.cwriter = (self.cwriter + len(run) * r.ITS_CMD_SIZE) % size
            yield from self._kick()

    def _kick(self) -> Generator:
        host = self.machine.host
        yield from self.machine.lowvisor.guest_mmio_trap(r.GITS_CWRITER, self.cwriter)
        deadline = self.world.env.now + ITS_QUEUE_TIMEOUT_US
        while host.its.creadr != self.cwriter:
            left = deadline - self.world.env.now
            if left <= 0:
                self.queue_timeouts += 1
                return
            yield host.processed | self.world.env.timeout(left)

    def mmio(self, offset: int, val: int) -> Generator:
        yield from self.machine.lowvisor.guest_mmio_trap(offset, val)

    # ---- probe -------------------------------------------------------------------------

    def probe(self) -> Generator:
        """its_probe_one() and its_cpu_init() on every vCPU."""
        vcpus = self.spec.vcpus
        for cache in self.kmalloc.values():
            cache.populate(HEAP_SLAB_PAGES)  # other kernel users' objects
        nr_lpi_bytes = (1 << 16) - r.GIC_LPI_OFFSET
        self.prop = yield from self.alloc_table(r.SZ_64K, Label(LabelKind.PROP_TABLE))
        self.write(self.prop, bytes([LPI_PROP_DEFAULT]) * nr_lpi_bytes)
        self.pend = []
        for v in range(vcpus):
            pend = yield from self.alloc_table(r.SZ_64K, Label(LabelKind.PEND_TABLE, f"vcpu{v}"))
            self.pend.append(pend)
        host = self.machine.host
        for v in range(vcpus):
            yield from host.handle_redist(v, "GICR_PROPBASER", r.make_propbaser(self.prop, 16))
            yield from host.handle_redist(v, "GICR_PENDBASER", r.make_pendbaser(self.pend[v]))
            yield from host.handle_redist(v, "GICR_CTLR", 1)
        two_level = self.spec.two_level_device_table
        dt_size = r.SZ_64K if two_level else (1 << 16) * 8
        self.device_table = yield from self.alloc_table(dt_size, Label(LabelKind.DEVICE_TABLE))
        self.device_table_size = dt_size
        self.l2_pages: dict[int, int] = {}
        self.collection_table = yield from self.alloc_table(
            r.SZ_64K, Label(LabelKind.COLLECTION_TABLE)
        )
        self.cmdq_size = r.SZ_64K
        self.cmdq = yield from self.alloc_table(
            self.cmdq_size, Label(LabelKind.CMDQ), share=self.world.proposal.guest_shares_cmdq
        )
        yield from self.world.proposal.after_probe(self)
        baser0 = r.make_baser(self.device_table, dt_size, indirect=two_level)
        yield from self.mmio(r.GITS_BASER0, baser0)
        yield from self.mmio(r.GITS_BASER1, r.make_baser(self.collection_table, r.SZ_64K))
        yield from self.mmio(r.GITS_CBASER, r.make_cbaser(self.cmdq, self.cmdq_size))
        yield from self.mmio(r.GITS_CWRITER, 0)
        yield from self.mmio(r.GITS_CTLR, r.GITS_CTLR_ENABLE)
        for v in range(vcpus):
            yield from self.send(MAPC(v, v, True), SYNC(v))
            yield from self.send(INVALL(v), SYNC(v))

    # ---- devices ---------------------------------------------------------------------------

    def is_mapped(self, name: str) -> bool:
        return self.devices[name].mapped

    def _ensure_l2(self, device_id: int) -> Generator:
        """its_alloc_table_entry(): a level-2 page of the device table, on demand."""
        if not self.spec.two_level_device_table:
            return
        index = device_id // (r.SZ_64K // 8)
        if index in self.l2_pages:
            return
        l2 = yield from self.alloc_table(r.SZ_64K, Label(LabelKind.DEVICE_TABLE_L2, f"l1[{index}]"))
        self.l2_pages[index] = l2
        yield from self.world.proposal.on_table_alloc(self, l2, r.SZ_64K)
        self.write(self.device_table + index * 8, ((1 << 63) | l2).to_bytes(8, "little"))

    def _alloc_itt(self, dev: GuestDevice, nr_ites: int) -> Generator:
        size = max(nr_ites * 8, ITS_ITT_ALIGN)
        label = Label(LabelKind.ITT, f"dev{dev.spec.device_id:#x}")
        if self.spec.allocator == "linux-kzalloc" and size + ITS_ITT_ALIGN - 1 > (
            KMALLOC_MAX_CACHE_SIZE
        ):
            # kmalloc_large(): beyond the biggest kmalloc cache kzalloc takes whole pages.
            request = size + ITS_ITT_ALIGN - 1
            held = -(-request // PAGE_SIZE) * PAGE_SIZE
            itt = self.pages.alloc(held)
            self.machine.memory.labels.set(itt, size, label)
            dev.itt_object = (itt, held)
            dev.itt_cache = None
        elif self.spec.allocator == "linux-kzalloc":
            request = size + ITS_ITT_ALIGN - 1
            size_class = kmalloc_size_class(request)
            cache = self.kmalloc.get(size_class)
            if cache is None:
                cache = self.kmalloc[size_class] = KmallocCache(
                    size_class,
                    self.pages,
                    self.machine.memory.labels,
                    self.world.rng(f"guest.kmalloc-{size_class}"),
                    self.spec.secret_density,
                    order=slub_order(size_class, self.spec.vcpus),
                )
            obj = cache.alloc(Label(LabelKind.KERNEL, "kzalloc slack"))
            dev.itt_cache = cache
            itt = -(-obj // ITS_ITT_ALIGN) * ITS_ITT_ALIGN
            self.machine.memory.labels.set(itt, size, label)
            dev.itt_object = (obj, cache.size)
        elif size < PAGE_SIZE:
            itt = self.pool.alloc(size, label)
            yield from self._flush_pool_shares()
            dev.itt_object = (itt, size)
        else:
            itt = yield from self.alloc_table(size, label, align=PAGE_SIZE)
            dev.itt_object = (itt, -(-size // PAGE_SIZE) * PAGE_SIZE)
        dev.itt_addr, dev.itt_size = itt, size
        if self.dirty_ram:
            self.write(itt, bytes(size))
        yield from self.world.proposal.on_itt_alloc(self, itt, size)

    def add_device(self, name: str) -> Generator:
        """its_msi_prepare() + activation + unmask of every vector."""
        dev = self.devices[name]
        nvecs = dev.spec.vectors
        nr_ites = max(2, 1 << (nvecs - 1).bit_length())
        yield from self._ensure_l2(dev.spec.device_id)
        yield from self._alloc_itt(dev, nr_ites)
        if not dev.lpi_base:
            dev.lpi_base = intid_of(self.next_lpi, 0)
            self.next_lpi += nvecs
        dev_id = dev.spec.device_id
        yield from self.send(MAPD(dev_id, nr_ites.bit_length() - 2, dev.itt_addr, True))
        first_user = self._claim_lpis(dev)
        if self.spec.its_driver == "bulk":
            yield from self._map_vectors_bulk(dev, first_user)
        else:
            yield from self._map_vectors_linux(dev)
        dev.mapped = True

    def _claim_lpis(self, dev: GuestDevice) -> list[bool]:
        """Count the device's vectors against their LPIs; an LPI nobody maps yet targets
        vCPU ``INTID % nr_vcpus``. Returns, per vector, whether it is the LPI's first."""
        vcpus, users, where = self.spec.vcpus, self.lpi_users, self.lpi_vcpu
        first = []
        for idx in lpi_indices(dev):
            first.append(not users[idx])
            if not users[idx]:
                where[idx] = (idx + r.GIC_LPI_OFFSET) % vcpus
            users[idx] += 1
        return first

    def vcpu_of(self, dev: GuestDevice, vector: int) -> int:
        return self.lpi_vcpu[intid_of(dev.lpi_base, vector) - r.GIC_LPI_OFFSET]

    def _map_vectors_linux(self, dev: GuestDevice) -> Generator:
        dev_id = dev.spec.device_id
        for i in range(dev.spec.vectors):
            vcpu = self.vcpu_of(dev, i)
            yield from self.send(MAPTI(dev_id, i, dev.lpi_base + i, vcpu), SYNC(vcpu))
        for i in range(dev.spec.vectors):
            intid = dev.lpi_base + i
            prop = self.prop + intid - r.GIC_LPI_OFFSET
            self.write(prop, bytes([LPI_PROP_DEFAULT | LPI_PROP_ENABLED]))
            yield from self.send(INV(dev_id, i), SYNC(self.vcpu_of(dev, i)))

    def _map_vectors_bulk(self, dev: GuestDevice, first_user: list[bool]) -> Generator:
        dev_id, nvecs = dev.spec.device_id, dev.spec.vectors
        enabled = LPI_PROP_DEFAULT | LPI_PROP_ENABLED
        start, count = dev.lpi_base - r.GIC_LPI_OFFSET, min(nvecs, NR_LPIS)
        first = min(count, NR_LPIS - start)  # the run may wrap once
        self.write(self.prop + start, bytes([enabled]) * first)
        if count > first:
            self.write(self.prop, bytes([enabled]) * (count - first))
        raw, targets, where = [], set(), self.lpi_vcpu
        for i, idx in enumerate(lpi_indices(dev)):
            raw.append(MAPTI.pack(dev_id, i, idx + r.GIC_LPI_OFFSET, where[idx]))
            targets.add(where[idx])
        raw += [INV(dev_id, i).encode() for i in range(nvecs) if first_user[i]]
        raw += [SYNC(v).encode() for v in sorted(targets)]
        yield from self.send_bulk(raw)

    def remove_device(self, name: str) -> Generator:
        """Deactivate every vector (DISCARD + SYNC), MAPD V=0, free the ITT."""
        dev = self.devices[name]
        dev_id = dev.spec.device_id
        for i, idx in enumerate(lpi_indices(dev)):
            yield from self.send(DISCARD(dev_id, i), SYNC(self.lpi_vcpu[idx]))
            self.lpi_users[idx] -= 1
        unmapped_at = self.world.env.now
        yield from self.send(MAPD(dev_id, 0, 0, False))
        dev.mapped = False
        first, end = dev.itt_addr >> PAGE_SHIFT, (dev.itt_addr + dev.itt_size - 1 >> PAGE_SHIFT) + 1
        self.unmaps.append((unmapped_at, self.machine.name, range(first, end)))
        yield from self.world.proposal.on_itt_free(self, dev.itt_addr, dev.itt_size)
        obj, obj_size = dev.itt_object
        if self.spec.allocator == "linux-kzalloc" and dev.itt_cache is None:
            self.machine.memory.labels.clear(obj, obj_size)  # pages back to the allocator
        elif self.spec.allocator == "linux-kzalloc":
            # kfree(); the slot is soon someone else's kmalloc: reuse.
            dev.itt_cache.put_kernel_object(obj, f"kmalloc-{obj_size}@{obj:#x} (reused)")
        elif dev.itt_size < PAGE_SIZE:
            self.pool.free(dev.itt_addr, dev.itt_size)
        else:
            self.machine.memory.labels.clear(obj, obj_size)

    def move_vector(self, name: str, vector: int, vcpu: int) -> Generator:
        """An affinity change: MOVI + SYNC, for every mapped ITE of the vector's LPI (one,
        unless a bulk guest maps it several times)."""
        dev = self.devices[name]
        intid = intid_of(dev.lpi_base, vector)
        self.lpi_vcpu[intid - r.GIC_LPI_OFFSET] = vcpu
        for other, ev in self.ites_of(intid):
            yield from self.send(MOVI(other.spec.device_id, ev, vcpu), SYNC(vcpu))

    def ites_of(self, intid: int) -> list[tuple[GuestDevice, int]]:
        """Every mapped (device, vector) that maps ``intid``, in device order."""
        out = []
        for dev in self.devices.values():
            if dev.mapped:
                first = (intid - dev.lpi_base) % NR_LPIS
                out += [(dev, ev) for ev in range(first, dev.spec.vectors, NR_LPIS)]
        return out

    def itt_memory(self) -> tuple[int, int]:
        """(bytes the allocator holds for ITTs, bytes the ITTs need), mapped devices."""
        needed = sum(d.itt_size for d in self.devices.values() if d.mapped)
        if self.spec.allocator == "linux-kzalloc":
            held = sum(d.itt_object[1] for d in self.devices.values() if d.mapped)
        else:
            large = [d for d in self.devices.values() if d.mapped and d.itt_size >= PAGE_SIZE]
            held = self.pool.pool_pages * PAGE_SIZE + sum(d.itt_object[1] for d in large)
        return held, needed

    def expected_translations(self) -> dict[tuple[int, int], tuple[int, int]]:
        """What the guest believes: every mapped (DeviceID, EventID) -> (INTID, vCPU)."""
        return dict(self.translations())

    def translations(self) -> Iterator[tuple[tuple[int, int], tuple[int, int]]]:
        """``expected_translations`` one at a time, in (DeviceID, EventID) order."""
        where = self.lpi_vcpu
        for dev in sorted(self.devices.values(), key=lambda d: d.spec.device_id):
            if dev.mapped:
                dev_id = dev.spec.device_id
                for i, idx in enumerate(lpi_indices(dev)):
                    yield (dev_id, i), (idx + r.GIC_LPI_OFFSET, where[idx])

    # ---- the guest's life ---------------------------------------------------------------

    def step(self, action: Generator) -> Generator:
        """Run one driver action with the vCPUs held: migration waits for it to finish."""
        with self.world.vcpus.request() as req:
            yield req
            yield from action

    def boot(self) -> Generator:
        yield from self.probe()
        for name in self.devices:
            yield from self.add_device(name)

    def run(self) -> Generator:
        """Boot the ITS, bring up every device, then change affinities until the end."""
        world = self.world
        yield from self.step(self.boot())
        for event in world.scenario.workload.churn:
            world.env.process(self._churn(event))
        for event in world.scenario.workload.events:
            world.env.process(self._kernel_event(event))
        rate = world.scenario.workload.affinity_moves_per_s
        if rate <= 0:
            return
        rng = world.rng("guest.affinity")
        end = world.scenario.workload.duration_ms * 1000.0
        while True:
            yield world.env.timeout(rng.expovariate(rate / 1e6))
            if world.env.now >= end:
                return
            mapped = [d for d in self.devices.values() if d.mapped]
            if not mapped:
                continue
            dev = rng.choice(mapped)
            vector, vcpu = rng.randrange(dev.spec.vectors), rng.randrange(self.spec.vcpus)
            yield from self.step(self._move_if_mapped(dev.spec.name, vector, vcpu))

    def _move_if_mapped(self, name: str, vector: int, vcpu: int) -> Generator:
        if self.devices[name].mapped:
            yield from self.move_vector(name, vector, vcpu)

    def _churn(self, event) -> Generator:
        yield self.world.env.timeout(max(0.0, event.at_ms * 1000.0 - self.world.env.now))
        if event.action == "remove":
            yield from self.step(self._remove_if_mapped(event.device))
        else:
            yield from self.step(self._add_if_unmapped(event.device))

    def _kernel_event(self, event) -> Generator:
        """hibernate-resume or kexec: the kernel replaced under its vITS (kernel_swap.py)."""
        from sim.actors.kernel_swap import replace_kernel

        yield self.world.env.timeout(max(0.0, event.at_ms * 1000.0 - self.world.env.now))
        yield from self.step(replace_kernel(self, event))

    # (Each looks its device up once the vCPUs are held: a kernel replaced while it
    # waited has devices of its own.)
    def _remove_if_mapped(self, name: str) -> Generator:
        if self.devices[name].mapped:
            yield from self.remove_device(name)

    def _add_if_unmapped(self, name: str) -> Generator:
        if not self.devices[name].mapped:
            yield from self.add_device(name)

    def moved_to(self, machine: Machine) -> None:
        """After migration the guest runs on ``machine``; its allocators label there."""
        self.machine = machine
        for cache in self.kmalloc.values():
            cache.labels = machine.memory.labels
        self.pool.labels = machine.memory.labels
