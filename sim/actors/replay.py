"""A replay guest: plays a real Linux guest's captured ITS command stream (``its_driver:
replay``, ``guest.capture: FILE``; the file format is :mod:`sim.capture.format`).

What it does, where the :class:`~sim.actors.guest.Guest` model would decide for itself:

- placement: the device table, collection table and command queue sit where the
  capture's GITS_BASER0/1 and GITS_CBASER put them, each ITT at its MAPD address. When
  the span of captured addresses (64 KiB aligned) lies inside the scenario's RAM above
  the first 16 MiB, addresses are kept; otherwise every captured address moves by one
  constant (a multiple of 64 KiB) so the span starts 16 MiB into RAM, and each MAPD's
  ITT_addr is rewritten by the same amount (no other command carries an address). The
  guest's own page allocator (LPI property and pending tables, which no capture holds,
  level-2 device-table pages, the background heap) uses the larger free side of the span.
- co-location: every other object the capture found on an ITT's page becomes guest data
  on that page from boot, labelled by ``guest.colocated_as``: ``secret``, ``kernel-data``,
  or ``density`` (each a secret with probability ``guest.secret_density``, as the model's
  kmalloc neighbours are). A free object or unused pool space stays free. A slab-held ITT
  is the ``kzalloc`` object of the capture (its slack kernel data, as in the model); a
  pool page is shared by the driver when its first ITT is placed (``itt_alloc_pool``).
- the stream: each captured ``boot`` command in order, a command and the SYNC after it in
  one GITS_CWRITER write (``its_send_single_command`` queues a command and its SYNC
  together; the capture does not record CWRITER boundaries), at boot; the ``shutdown``
  commands when the guest powers off (``guest.power_off``), at the end of the workload.
  Before an INV the guest writes the LPI's property byte, as ``lpi_update_config`` does:
  enabled, unless the event's next command is its DISCARD (``free_irq`` masks first).
  MAPTI/MOVI/DISCARD/MAPD keep what the guest believes, for the correctness check.
- affinity moves send MOVI + SYNC for the mapped event, like the model; device churn is
  not played (the scenario refuses it).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sim.actors.alloc import PageAllocator
from sim.actors.guest import HEAP_SLAB_PAGES, LPI_PROP_DEFAULT, LPI_PROP_ENABLED, Guest
from sim.capture.format import (
    Capture,
    CaptureError,
    ITTPage,
    bundled_captures,
    load_capture,
    resolve_capture,
)
from sim.its import regs as r
from sim.its.commands import DISCARD, INV, MAPC, MAPD, MAPTI, MOVI, SYNC, decode
from sim.memory.labels import Label, LabelKind
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from sim.scenario import Scenario
    from sim.world import Machine, World

FIRMWARE_BYTES = 16 << 20  # the guest kernel's own pages start above the first 16 MiB
ALLOCATOR_ROOM = 8 << 20  # what the guest's own allocations need beside the captured span


def cached_capture(path: str) -> Capture:
    """A comparison loads each capture once for all its proposals (keyed by the file's
    modification time and size too, so an edited file is read again)."""
    try:
        st = os.stat(path)
    except OSError:
        return load_capture(path)  # raises CaptureError naming the file
    return _load(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _load(path: str, mtime_ns: int, size: int) -> Capture:
    return load_capture(path)


def capture_of(scenario: Scenario) -> Capture:
    spec = scenario.guest
    return cached_capture(str(resolve_capture(spec.capture or "")))


def mapped_events(capture: Capture) -> dict[int, dict[int, int]]:
    """Per DeviceID, the events mapped at the end of the boot phase: event -> INTID."""
    out: dict[int, dict[int, int]] = {}
    for cmd in capture.commands:
        if cmd.phase != "boot":
            break
        c = decode(cmd.encode())
        if isinstance(c, MAPTI):
            out.setdefault(c.device_id, {})[c.event_id] = c.intid
        elif isinstance(c, DISCARD):
            out.get(c.device_id, {}).pop(c.event_id, None)
        elif isinstance(c, MAPD) and not c.valid:
            out.pop(c.device_id, None)
    return out


def check_scenario(scenario: Scenario, capture: Capture) -> list[tuple[tuple, str]]:
    """What a replay scenario gets wrong about its capture: ``(field location, message)``."""
    problems = []
    if scenario.guest.vcpus < capture.guest.vcpus:
        problems.append(
            (
                ("guest", "vcpus"),
                f"the capture's guest maps collections on {capture.guest.vcpus} vCPUs,"
                f" expected at least that many, got {scenario.guest.vcpus}",
            )
        )
    kinds = {p.allocator.kind for p in capture.colocation}
    want = (
        "linux-kzalloc" if kinds == {"slab"} else "linux-shared-pool" if kinds == {"pool"} else None
    )
    if want is not None and scenario.guest.allocator != want:
        what = "kmalloc slabs" if want == "linux-kzalloc" else "the itt_pool"
        problems.append(
            (
                ("guest", "allocator"),
                f"the capture's ITTs come from {what}, expected {want!r},"
                f" got {scenario.guest.allocator!r}",
            )
        )
    events = mapped_events(capture)
    for i, dev in enumerate(scenario.devices):
        if dev.device_id not in events:
            known = ", ".join(f"{d:#x}" for d in sorted(events))
            problems.append(
                (
                    ("devices", i, "device_id"),
                    f"{dev.device_id:#x} is not mapped by the capture's boot (it maps {known})",
                )
            )
        elif sorted(events[dev.device_id]) != list(range(dev.vectors)):
            n = len(events[dev.device_id])
            problems.append(
                (
                    ("devices", i, "vectors"),
                    f"the capture maps events 0..{n - 1} of {dev.device_id:#x}, expected"
                    f" {n}, got {dev.vectors}",
                )
            )
    return problems


class Placement:
    """Where the capture's addresses land in the simulated RAM: ``addr + delta``."""

    def __init__(self, capture: Capture, ram_base: int, ram_size: int) -> None:
        lo_hi = []
        cbaser = capture.registers.gits_cbaser
        lo_hi.append((r.cbaser_addr(cbaser), r.cbaser_size(cbaser)))
        for baser in capture.registers.gits_baser[:2]:
            if baser >> 63:
                lo_hi.append((r.baser_addr(baser), r.baser_nr_pages(baser) * r.SZ_64K))
        for dev in capture.devices:
            lo_hi += [(t.addr & ~(PAGE_SIZE - 1), PAGE_SIZE) for t in dev.itts]
        lo = min(a for a, _ in lo_hi) & ~(r.SZ_64K - 1)
        hi = -(-max(a + n for a, n in lo_hi) // r.SZ_64K) * r.SZ_64K
        first, end = ram_base + FIRMWARE_BYTES, ram_base + ram_size
        if hi - lo + ALLOCATOR_ROOM > end - first:
            raise CaptureError(
                f"the capture's tables and ITTs span {(hi - lo) >> 20} MiB, more than"
                f" {ram_size >> 20} MiB of guest RAM holds"
            )
        self.delta = 0 if first <= lo and hi <= end else first - lo
        lo, hi = lo + self.delta, hi + self.delta
        # The guest's own allocations take the larger free side of the captured span.
        below, above = (first, lo), (hi, end)
        side = above if above[1] - above[0] >= below[1] - below[0] else below
        if side[1] - side[0] < ALLOCATOR_ROOM:
            raise CaptureError(
                f"the capture's tables and ITTs leave less than {ALLOCATOR_ROOM >> 20} MiB"
                " of guest RAM for the guest's other allocations"
            )
        self.free_range = side

    def __call__(self, addr: int) -> int:
        return addr + self.delta


class ReplayGuest(Guest):
    """A guest whose ITS driver is a captured command stream."""

    def __init__(self, world: World, machine: Machine) -> None:
        super().__init__(world, machine)
        self.capture = capture_of(world.scenario)
        self.place = Placement(self.capture, self.ram_base, world.ram_size)
        self.pages = PageAllocator(*self.place.free_range)
        for cache in self.kmalloc.values():
            cache.pages = self.pages
        self.pool.pages = self.pages
        self.itt_pages = {p.page: p for p in self.capture.colocation}
        self.pool_pages: set[int] = set()
        self.pooled: set[int] = set()  # DeviceIDs whose ITT sits in a pool page
        by_id = {d.spec.device_id: d for d in self.devices.values()}
        self.by_id = by_id
        self.icid_vcpu: dict[int, int] = {}
        # What the guest believes: (DeviceID, EventID) -> (INTID, vCPU), mapped events.
        self.ites: dict[tuple[int, int], tuple[int, int]] = {}
        self.replayed = 0  # commands written into the queue

    # ---- placement -----------------------------------------------------------------------

    def _table(self, addr: int, size: int, label: Label, share: bool = True) -> Generator:
        """A table at its captured address, shared as the driver does (unless not
        ``share``: a queue the proposal keeps private)."""
        self.machine.memory.labels.set(addr, size, label)
        if share and self.world.proposal.guest_shares_tables:
            self.driver_shared.update(
                range(addr >> PAGE_SHIFT, (addr + size - 1 >> PAGE_SHIFT) + 1)
            )
            yield from self.share(addr, size, f"driver: its_alloc_pages {label}")
        return addr

    def _neighbours(self) -> None:
        """The capture's other objects on each ITT page, guest data from boot."""
        how = self.spec.colocated_as
        rng = self.world.rng("guest.colocation")
        labels = self.machine.memory.labels
        for page in self.capture.colocation:
            for obj in page.objects:
                if obj.kind != "kernel" or not obj.live:
                    continue
                name = f"{obj.what} @{obj.addr:#x} ({self.capture.kernel.release})"
                secret = how == "secret" or (
                    how == "density" and rng.random() < self.spec.secret_density
                )
                kind = LabelKind.SECRET if secret else LabelKind.KERNEL
                labels.set(self.place(obj.addr), obj.size, Label(kind, name))

    def probe(self) -> Generator:
        """Tables where the capture has them, then its GITS_BASER/CBASER values."""
        cap, place = self.capture, self.place
        for cache in self.kmalloc.values():
            cache.populate(HEAP_SLAB_PAGES)  # the rest of the kernel heap, as in the model
        self._neighbours()
        nr_lpi_bytes = (1 << 16) - r.GIC_LPI_OFFSET
        self.prop = yield from self.alloc_table(r.SZ_64K, Label(LabelKind.PROP_TABLE))
        self.write(self.prop, bytes([LPI_PROP_DEFAULT]) * nr_lpi_bytes)
        self.pend = []
        for v in range(self.spec.vcpus):
            pend = yield from self.alloc_table(r.SZ_64K, Label(LabelKind.PEND_TABLE, f"vcpu{v}"))
            self.pend.append(pend)
        host = self.machine.host
        for v in range(self.spec.vcpus):
            yield from host.handle_redist(v, "GICR_PROPBASER", r.make_propbaser(self.prop, 16))
            yield from host.handle_redist(v, "GICR_PENDBASER", r.make_pendbaser(self.pend[v]))
            yield from host.handle_redist(v, "GICR_CTLR", 1)
        baser0, baser1 = cap.registers.gits_baser[:2]
        dt, ct = place(r.baser_addr(baser0)), place(r.baser_addr(baser1))
        self.device_table_size = r.baser_nr_pages(baser0) * r.SZ_64K
        self.device_table = yield from self._table(
            dt, self.device_table_size, Label(LabelKind.DEVICE_TABLE)
        )
        self.two_level = bool(baser0 >> 62 & 1)
        self.l2_pages: dict[int, int] = {}
        ct_size = r.baser_nr_pages(baser1) * r.SZ_64K
        self.collection_table = yield from self._table(
            ct, ct_size, Label(LabelKind.COLLECTION_TABLE)
        )
        cbaser = cap.registers.gits_cbaser
        self.cmdq_size = r.cbaser_size(cbaser)
        self.cmdq = yield from self._table(
            place(r.cbaser_addr(cbaser)),
            self.cmdq_size,
            Label(LabelKind.CMDQ),
            share=self.world.proposal.guest_shares_cmdq,
        )
        yield from self.world.proposal.after_probe(self)
        yield from self.mmio(r.GITS_BASER0, _moved(baser0, dt, r.baser_addr(baser0)))
        yield from self.mmio(r.GITS_BASER1, _moved(baser1, ct, r.baser_addr(baser1)))
        yield from self.mmio(r.GITS_CBASER, _moved(cbaser, self.cmdq, r.cbaser_addr(cbaser)))
        yield from self.mmio(r.GITS_CWRITER, 0)
        yield from self.mmio(r.GITS_CTLR, r.GITS_CTLR_ENABLE)

    def _ensure_l2(self, device_id: int) -> Generator:
        if not self.two_level:
            return
        index = device_id // (r.SZ_64K // 8)
        if index in self.l2_pages:
            return
        l2 = yield from self.alloc_table(r.SZ_64K, Label(LabelKind.DEVICE_TABLE_L2, f"l1[{index}]"))
        self.l2_pages[index] = l2
        yield from self.world.proposal.on_table_alloc(self, l2, r.SZ_64K)
        self.write(self.device_table + index * 8, ((1 << 63) | l2).to_bytes(8, "little"))

    def _place_itt(self, device_id: int, addr: int, size_field: int) -> Generator:
        """The ITT the captured MAPD names: labelled, shared as its allocator shares it."""
        nbytes = max(8 << size_field + 1, 256)
        page = self.itt_pages.get(addr & ~(PAGE_SIZE - 1))
        label = Label(LabelKind.ITT, f"dev{device_id:#x}")
        labels = self.machine.memory.labels
        itt = self.place(addr)
        obj = _object_at(page, addr)
        kind = page.allocator.kind if page is not None else _default_kind(self.spec.allocator)
        if kind == "slab" and obj is not None:
            labels.set(self.place(obj.addr), obj.size, Label(LabelKind.KERNEL, "kzalloc slack"))
            held = (self.place(obj.addr), obj.size)
        elif kind == "pool" and nbytes < PAGE_SIZE:
            self.pooled.add(device_id)
            first = itt & ~(PAGE_SIZE - 1)
            if first not in self.pool_pages:
                self.pool_pages.add(first)
                self.pool.pool_pages += 1
                if self.world.proposal.guest_shares_tables:
                    self.driver_shared.add(first >> PAGE_SHIFT)
                    yield from self.share(first, PAGE_SIZE, "driver: itt_pool refill")
            held = (itt, nbytes)
        else:
            held = (itt, -(-nbytes // PAGE_SIZE) * PAGE_SIZE)
            if self.world.proposal.guest_shares_tables and kind != "slab":
                self.driver_shared.update(
                    range(itt >> PAGE_SHIFT, (itt + nbytes - 1 >> PAGE_SHIFT) + 1)
                )
                yield from self.share(itt, nbytes, f"driver: its_alloc_pages {label}")
        labels.set(itt, nbytes, label)
        dev = self.by_id.get(device_id)
        if dev is not None:
            dev.itt_addr, dev.itt_size, dev.itt_object, dev.itt_cache = itt, nbytes, held, None
        yield from self.world.proposal.on_itt_alloc(self, itt, nbytes)

    def _free_itt(self, device_id: int) -> Generator:
        dev = self.by_id.get(device_id)
        if dev is None or not dev.itt_size:
            return
        first, end = dev.itt_addr >> PAGE_SHIFT, (dev.itt_addr + dev.itt_size - 1 >> PAGE_SHIFT) + 1
        self.unmaps.append((self.world.env.now, self.machine.name, range(first, end)))
        yield from self.world.proposal.on_itt_free(self, dev.itt_addr, dev.itt_size)
        obj, size = dev.itt_object
        self.machine.memory.labels.clear(obj, size)  # kfree / gen_pool_free: free space again
        dev.itt_size = 0

    # ---- the stream ----------------------------------------------------------------------

    def _commands(self, phase: str) -> list[bytes]:
        out = []
        for cmd in self.capture.commands:
            if cmd.phase != phase:
                continue
            raw = cmd.encode()
            if self.place.delta and raw[0] == MAPD.CMD:
                c = decode(raw)
                raw = MAPD(c.device_id, c.size, self.place(c.itt_addr), c.valid).encode()
            out.append(raw)
        return out

    def play(self, phase: str) -> Generator:
        """The captured commands of ``phase``, in order; a command and its SYNC together."""
        raws = self._commands(phase)
        cmds = [decode(raw) for raw in raws]
        masking = _masking_invs(cmds)
        i = 0
        while i < len(raws):
            c = cmds[i]
            yield from self._before(c, i in masking)
            n = 2 if i + 1 < len(raws) and isinstance(cmds[i + 1], SYNC) else 1
            size = self.cmdq_size
            for raw in raws[i : i + n]:
                self.write(self.cmdq + self.cwriter, raw)
                self.cwriter = (self.cwriter + r.ITS_CMD_SIZE) % size
            self.replayed += n
            yield from self._kick()
            yield from self._after(c, i in masking)
            i += n

    def _before(self, c, masking: bool) -> Generator:
        if isinstance(c, MAPD) and c.valid:
            yield from self._ensure_l2(c.device_id)
            yield from self._place_itt(c.device_id, c.itt_addr - self.place.delta, c.size)
        elif isinstance(c, INV):
            key = (c.device_id, c.event_id)
            if key in self.ites:
                prop = LPI_PROP_DEFAULT | (0 if masking else LPI_PROP_ENABLED)
                self.write(self.prop + self.ites[key][0] - r.GIC_LPI_OFFSET, bytes([prop]))

    def _after(self, c, masking: bool) -> Generator:
        if isinstance(c, MAPC):
            if c.valid:
                self.icid_vcpu[c.icid] = c.target
            else:
                self.icid_vcpu.pop(c.icid, None)
        elif isinstance(c, MAPTI):
            self.ites[c.device_id, c.event_id] = (c.intid, self.icid_vcpu.get(c.icid, c.icid))
            dev = self.by_id.get(c.device_id)
            if dev is not None and c.event_id == 0:
                dev.lpi_base = c.intid
        elif isinstance(c, INV):
            # The device raises MSIs once its last vector is unmasked, until the first mask
            # (the model's GuestDevice.mapped).
            dev = self.by_id.get(c.device_id)
            if dev is not None and masking:
                dev.mapped = False
            elif dev is not None and c.event_id == dev.spec.vectors - 1:
                dev.mapped = True
        elif isinstance(c, MOVI):
            key = (c.device_id, c.event_id)
            if key in self.ites:
                self.ites[key] = (self.ites[key][0], self.icid_vcpu.get(c.icid, c.icid))
        elif isinstance(c, DISCARD):
            self.ites.pop((c.device_id, c.event_id), None)
        elif isinstance(c, MAPD) and not c.valid:
            for key in [k for k in self.ites if k[0] == c.device_id]:
                del self.ites[key]
            dev = self.by_id.get(c.device_id)
            if dev is not None:
                dev.mapped = False
            yield from self._free_itt(c.device_id)

    # ---- what the guest believes -----------------------------------------------------------

    def translations(self) -> Iterator[tuple[tuple[int, int], tuple[int, int]]]:
        for dev_id in sorted(self.by_id):
            if self.by_id[dev_id].mapped:
                for ev in range(self.by_id[dev_id].spec.vectors):
                    if (dev_id, ev) in self.ites:
                        yield (dev_id, ev), self.ites[dev_id, ev]

    def vcpu_of(self, dev, vector: int) -> int:
        return self.ites.get((dev.spec.device_id, vector), (0, 0))[1]

    def move_vector(self, name: str, vector: int, vcpu: int) -> Generator:
        dev = self.devices[name]
        key = (dev.spec.device_id, vector)
        if key in self.ites:
            self.ites[key] = (self.ites[key][0], vcpu)
            yield from self.send(MOVI(key[0], vector, vcpu), SYNC(vcpu))

    def itt_memory(self) -> tuple[int, int]:
        """(bytes held for ITTs: pool pages, plus the slab objects or pages of the others;
        bytes the ITTs need), mapped devices."""
        mapped = [d for d in self.devices.values() if d.mapped and d.itt_size]
        needed = sum(d.itt_size for d in mapped)
        others = sum(d.itt_object[1] for d in mapped if d.spec.device_id not in self.pooled)
        return len(self.pool_pages) * PAGE_SIZE + others, needed

    # ---- the guest's life ------------------------------------------------------------------

    def boot(self) -> Generator:
        yield from self.probe()
        yield from self.play("boot")

    def run(self) -> Generator:
        yield from super().run()
        if self.spec.power_off:
            end = self.world.scenario.workload.duration_ms * 1000.0
            yield self.world.env.timeout(max(0.0, end - self.world.env.now))
            yield from self.step(self.play("shutdown"))


def _moved(value: int, new_addr: int, old_addr: int) -> int:
    """A BASER/CBASER value with its address field moved (PA[47:12] in place)."""
    return value - old_addr + new_addr


def _object_at(page: ITTPage | None, addr: int):
    if page is None:
        return None
    for obj in page.objects:
        if obj.addr <= addr < obj.addr + obj.size:
            return obj
    return None


def _default_kind(allocator: str) -> str:
    return "slab" if allocator == "linux-kzalloc" else "pool"


def _masking_invs(cmds: list) -> set[int]:
    """Indexes of the INVs whose event's next command (SYNCs aside) is its DISCARD: the
    mask of ``free_irq``; every other INV follows an unmask. One pass from the end."""
    nxt: dict[tuple[int, int], object] = {}
    out = set()
    for i in range(len(cmds) - 1, -1, -1):
        c = cmds[i]
        if isinstance(c, SYNC) or not hasattr(c, "event_id"):
            continue
        key = (c.device_id, c.event_id)
        if isinstance(c, INV) and isinstance(nxt.get(key), DISCARD):
            out.add(i)
        nxt[key] = c
    return out


def bind_scenario(scenario: Scenario, path: Path, line_of: Callable[[tuple], int]) -> Scenario:
    """Resolve ``guest.capture`` against the scenario file's directory (or the bundled
    captures), load it and check the scenario against it; the scenario returned names the
    capture by absolute path. Problems raise ``ScenarioError`` naming the scenario's line
    and field (and, for a capture that does not load, the capture's own file and line)."""
    from sim.scenario import ScenarioError, _field_name

    try:
        found = resolve_capture(scenario.guest.capture or "", path.parent).resolve()
        capture = cached_capture(str(found))
    except CaptureError as exc:
        loc = ("guest", "capture")
        raise ScenarioError(f"{path}:{line_of(loc)}: guest.capture: {exc}") from None
    for loc, msg in check_scenario(scenario, capture):
        raise ScenarioError(f"{path}:{line_of(loc)}: {_field_name(loc)}: {msg}")
    # A bundled capture keeps its name (it resolves on any machine, so results.json's
    # provenance does not carry this checkout's path); any other file its absolute path.
    name = scenario.guest.capture or ""
    bundled = bundled_captures()
    keep = name if name in bundled and bundled[name].resolve() == found else str(found)
    guest = scenario.guest.model_copy(update={"capture": keep})
    return scenario.model_copy(update={"guest": guest})
