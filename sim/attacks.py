"""Host behaviours: what an untrusted host can try, as plain host actions.

Every behaviour acts only through what a real host has: its own vITS state, the guest
memory its stage-2 lets it touch (every access checked and logged under the initiator
``<machine>.host.attack``), the hypercalls EL2 offers it, the physical ITS, and the
migration stream. What an attack achieves is whatever those actions achieve under the
ownership rules; nothing here declares an outcome. Where an attacker would need to know
where a guest secret lives, it is given that knowledge (the worst case for the guest).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from sim.its import regs as r
from sim.its.commands import MAPD, MAPTI, CommandDecodeError, decode
from sim.its.tables import ITE_ESZ
from sim.its.vits import LPI
from sim.memory.access import Initiator, Stage2Fault
from sim.memory.labels import LabelKind
from sim.memory.ownership import HOST
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from sim.actors.host import Host
    from sim.proposals.base import Payload
    from sim.scenario import Scenario
    from sim.world import Machine, World

KERNEL_TABLE_LABELS = {
    LabelKind.DEVICE_TABLE,
    LabelKind.DEVICE_TABLE_L2,
    LabelKind.COLLECTION_TABLE,
    LabelKind.ITT,
    LabelKind.PEND_TABLE,
}


class Behaviour:
    """The honest host: no hook does anything. Attacks override what they use."""

    kind = "honest"

    def __init__(self, spec, world: World, machine: Machine) -> None:
        self.spec = spec
        self.world = world
        self.machine = machine
        self.who = Initiator(f"{machine.name}.host.attack", HOST)
        self.blocked: list[str] = []  # why attempts failed, for the audit matrix

    @property
    def host(self) -> Host:
        return self.machine.host

    def start(self) -> None:
        """Called once the world is built; may start SimPy processes."""

    def processing_delay(self, host: Host, offset: int, val: int) -> float:
        return 0.0

    def extra_claims(self) -> list[int]:
        """Pages to name to EL2 on top of the real table pages (share-host-claims)."""
        return []

    def keeps_claims(self) -> bool:
        return False

    def before_save(self) -> Generator:
        yield from ()

    def after_save(self, payload: Payload) -> Generator:
        yield from ()

    def on_access_gained(self, pages: list[int]) -> None:
        """The host's own request just made ``pages`` reachable (e.g. its claims)."""

    # ---- helpers: plain host actions --------------------------------------------------

    def guest_ram(self) -> tuple[int, int]:
        from sim.world import RAM_BASE

        return RAM_BASE, RAM_BASE + self.world.ram_size

    def reachable_pages(self) -> list[int]:
        """Guest pages the host's stage-2 maps (it knows its own page tables) that hold
        data; pages never written read as zeros and are skipped."""
        lo, hi = self.guest_ram()
        memory = self.machine.memory
        state = memory.ownership.state
        return [
            pfn
            for pfn in memory.resident_pfns(lo >> PAGE_SHIFT, hi >> PAGE_SHIFT)
            if state(HOST, pfn).accessible
        ]

    def read(self, addr: int, length: int) -> bytes | None:
        try:
            return self.machine.memory.read(self.who, addr, length)
        except Stage2Fault as fault:
            self.blocked.append(f"stage-2 fault: {fault.reason}")
            return None

    def write(self, addr: int, data: bytes) -> bool:
        try:
            self.machine.memory.write(self.who, addr, data)
        except Stage2Fault as fault:
            self.blocked.append(f"stage-2 fault: {fault.reason}")
            return False
        return True

    def loot(self, pages: list[int]) -> None:
        for pfn in pages:
            self.read(pfn << PAGE_SHIFT, PAGE_SIZE)

    def claim(self, pfn: int, why: str) -> Generator[object, object, bool]:
        lowvisor = self.machine.lowvisor
        before = len(lowvisor.refusals)
        ok = yield from lowvisor.host_share_guest_page(pfn, f"host claim: {why}")
        if not ok:
            refused = lowvisor.refusals[before:] or ["EL2 refused the share (-EPERM)"]
            self.blocked.extend(refused)
        return ok

    def secret_pages(self, count: int) -> list[int]:
        """Pages holding guest secrets (the attacker is assumed to know where they are)."""
        lo, hi = self.guest_ram()
        pages: list[int] = []
        for start, _end, label in self.machine.memory.labels.runs(lo, hi - lo):
            if label.kind is LabelKind.SECRET and start >> PAGE_SHIFT not in pages:
                pages.append(start >> PAGE_SHIFT)
                if len(pages) == count:
                    break
        return pages


class SecretPageAsITT(Behaviour):
    kind = "secret-page-as-itt"

    def extra_claims(self) -> list[int]:
        return self.secret_pages(self.spec.pages)

    def before_save(self) -> Generator:
        got = []
        for pfn in self.secret_pages(self.spec.pages):
            if (yield from self.claim(pfn, "secret page named as an ITT")):
                got.append(pfn)
        self.loot(got)


class OversizedITT(Behaviour):
    kind = "oversized-itt"

    def _pages(self) -> list[int]:
        pages = []
        for device in self.host.its.devices.values():
            size = (1 << device.num_eventid_bits) * ITE_ESZ * self.spec.factor
            first, last = device.itt_addr >> PAGE_SHIFT, (device.itt_addr + size - 1) >> PAGE_SHIFT
            pages.extend(range(first, last + 1))
        lo, hi = self.guest_ram()
        return sorted({p for p in pages if lo >> PAGE_SHIFT <= p < hi >> PAGE_SHIFT})

    def extra_claims(self) -> list[int]:
        return self._pages()

    def before_save(self) -> Generator:
        got = []
        for pfn in self._pages():
            if self.machine.memory.ownership.state(HOST, pfn).accessible:
                continue
            if (yield from self.claim(pfn, "oversized ITT")):
                got.append(pfn)
        self.loot(got)


class ReadEverything(Behaviour):
    kind = "read-everything"

    def start(self) -> None:
        self.world.env.process(self._poll())

    def _poll(self) -> Generator:
        env = self.world.env
        end = self.world.scenario.workload.duration_ms * 1000.0
        while env.now < end:
            self.loot(self.reachable_pages())
            yield env.timeout(self.spec.period_ms * 1000.0)

    def before_save(self) -> Generator:
        self.loot(self.reachable_pages())
        yield from ()

    def after_save(self, payload: Payload) -> Generator:
        self.loot(self.reachable_pages())
        yield from ()

    def on_access_gained(self, pages: list[int]) -> None:
        self.loot(pages)


class WriteOutsideEntries(Behaviour):
    kind = "write-outside-entries"

    def _table_spans(self) -> list[tuple[int, int]]:
        """What the host knows to be KVM table memory, from its own vITS state."""
        its = self.host.its
        spans = [(d.itt_addr, (1 << d.num_eventid_bits) * ITE_ESZ) for d in its.devices.values()]
        dt_size = r.baser_nr_pages(its.baser_device_table) * r.SZ_64K
        spans.append((its.device_table_gpa, dt_size))
        if its.baser_device_table & r.GITS_BASER_INDIRECT:
            l1 = self.read(its.device_table_gpa, dt_size) or b""
            for i in range(0, len(l1), 8):
                entry = int.from_bytes(l1[i : i + 8], "little")
                if entry >> 63:
                    spans.append((entry & r.genmask(51, 16), r.SZ_64K))
        spans.append((its.collection_table_gpa, r.baser_nr_pages(its.baser_coll_table) * r.SZ_64K))
        spans.append((r.cbaser_addr(its.cbaser), r.cbaser_size(its.cbaser)))
        spans.append((r.propbaser_addr(its.propbaser), r.SZ_64K))
        spans += [(r.pendbaser_addr(v.pendbaser), r.SZ_64K) for v in its.vcpus]
        return spans

    def _scribble(self, pages: list[int]) -> None:
        spans = self._table_spans()
        for pfn in pages:
            page = pfn << PAGE_SHIFT
            cursor = page
            cuts = sorted(
                (max(s, page), min(s + n, page + PAGE_SIZE))
                for s, n in spans
                if s < page + PAGE_SIZE and page < s + n
            )
            for lo, hi in [*cuts, (page + PAGE_SIZE, page + PAGE_SIZE)]:
                if lo > cursor:
                    self.write(cursor, bytes([self.spec.pattern]) * (lo - cursor))
                cursor = max(cursor, hi)

    def after_save(self, payload: Payload) -> Generator:
        self._scribble(self.reachable_pages())
        yield from ()

    def on_access_gained(self, pages: list[int]) -> None:
        self._scribble(pages)


class KeepStaleShare(Behaviour):
    kind = "keep-stale-share"

    def start(self) -> None:
        self.world.env.process(self._claim_early())

    def keeps_claims(self) -> bool:
        return True

    def _claim_early(self) -> Generator:
        """Claim each ITT's pages as soon as the device shows up in the vITS."""
        env = self.world.env
        seen: set[int] = set()
        end = self.world.scenario.workload.duration_ms * 1000.0
        while env.now < end:
            yield self.host.processed
            its = self.host.its
            for device in list(its.devices.values()):
                if device.device_id in seen:
                    continue
                seen.add(device.device_id)
                size = (1 << device.num_eventid_bits) * ITE_ESZ
                for pfn in range(
                    device.itt_addr >> PAGE_SHIFT, ((device.itt_addr + size - 1) >> PAGE_SHIFT) + 1
                ):
                    if not self.machine.memory.ownership.state(HOST, pfn).accessible:
                        yield from self.claim(pfn, "ITT claimed early, kept")

    def processing_delay(self, host: Host, offset: int, val: int) -> float:
        """Sit on a queue that unmaps a device (MAPD V=0)."""
        its = host.its
        base, size = r.cbaser_addr(its.cbaser), r.cbaser_size(its.cbaser)
        slot, end = its.creadr, r.cmd_offset(val)
        while slot != end and end < size:
            raw = self.read(base + slot, r.ITS_CMD_SIZE)
            slot = (slot + r.ITS_CMD_SIZE) % size
            try:
                cmd = decode(raw) if raw else None
            except CommandDecodeError:
                continue
            if isinstance(cmd, MAPD) and not cmd.valid:
                return self.spec.hold_ms * 1000.0
        return 0.0


class DelayCommands(Behaviour):
    kind = "delay-commands"

    def processing_delay(self, host: Host, offset: int, val: int) -> float:
        return self.spec.delay_ms * 1000.0


class ReplayStaleMapd(Behaviour):
    kind = "replay-stale-mapd"

    def before_save(self) -> Generator:
        """Re-run the newest MAPD V=1 (and its MAPTIs) of a device now unmapped."""
        its = self.host.its
        base, size = r.cbaser_addr(its.cbaser), r.cbaser_size(its.cbaser)
        raw = self.read(base, size) or b""
        cmds = []
        for off in range(0, len(raw), r.ITS_CMD_SIZE):
            try:
                cmds.append((off, decode(raw[off : off + r.ITS_CMD_SIZE])))
            except CommandDecodeError:
                continue
        stale = [
            c for _, c in cmds if isinstance(c, MAPD) and c.valid and c.device_id not in its.devices
        ]
        if not stale:
            self.blocked.append("no stale MAPD left in the queue ring")
            return
        target = stale[-1]
        for off, cmd in cmds:
            if cmd == target or (isinstance(cmd, MAPTI) and cmd.device_id == target.device_id):
                its._handle_command(off, cmd.encode())
        yield from ()


class ITSDMA(Behaviour):
    kind = "its-dma"

    def start(self) -> None:
        self.world.env.process(self._dma())

    def _dma(self) -> Generator:
        env = self.world.env
        yield env.timeout(self.spec.at_ms * 1000.0)
        # Wait, until the migration pauses the VM, for a secret the ITS reaches.
        end = self.world.scenario.workload.duration_ms * 1000.0
        victim, reachable = self._victim()
        while victim is not None and not reachable and not self.world.paused and env.now < end:
            yield env.timeout(1000.0)
            victim, reachable = self._victim()
        if victim is None:
            self.blocked.append("no guest secret to aim at")
            return
        itt = victim & ~0xFF  # an ITT is 256-byte aligned
        if self._map(0xFFFF, itt, victim):
            return
        # EL2 checks that an ITT is host memory: put a 2-event ITT on a host page and
        # name an EventID whose ITE would land on the secret (the ITS must refuse it).
        lo, _hi = self.guest_ram()
        self._map(0xFFFE, lo - PAGE_SIZE, victim, size=0)

    def _map(self, device_id: int, itt: int, victim: int, size: int | None = None) -> bool:
        """MAPD an ITT at ``itt`` and MAPTI the EventID whose ITE is at ``victim``; False
        if EL2 refused the MAPD (the caller may try another way)."""
        from sim.actors.its_hw import MediationRefused

        event = (victim - itt) // ITE_ESZ
        if size is None:
            size = max(event.bit_length(), 1) - 1  # an ITT of 2^(size+1) events holds it
        its_hw = self.machine.its_hw
        try:
            for cmd in (MAPD(device_id, size, itt, True), MAPTI(device_id, event, 8192, 0)):
                error = its_hw.host_command(cmd)
                if error is not None:
                    self.blocked.append(f"ITS command error: {error}")
                    break
        except MediationRefused as exc:
            self.blocked.append(str(exc))
            return False
        except Stage2Fault as fault:
            self.blocked.append(f"IOMMU fault: {fault.reason}")
        return True

    def _victim(self) -> tuple[int | None, bool]:
        """Where an attacker aims, and whether its DMA master reaches it: a secret of the
        guest's on a page the ITS reaches (a co-located secret on a page the ITS's IOMMU
        domain maps, say), else the guest's first secret. The host knows what its ITS
        may reach (the ITTs it was told of); where the secrets are it is told (the worst
        case for the guest). Pages the guest no longer holds (torn down) are no target."""
        lo, hi = self.guest_ram()
        memory = self.machine.memory
        state = memory.ownership.state
        guest = self.world.guest_name
        first = None
        for start, _end, label in memory.labels.runs(lo, hi - lo):
            pfn = start >> PAGE_SHIFT
            if label.kind is not LabelKind.SECRET or not state(guest, pfn).accessible:
                continue
            if memory.dma_reaches(pfn) is not None:
                return start, True
            first = start if first is None else first
        return first, False


class TamperState(Behaviour):
    kind = "tamper-state"

    def after_save(self, payload: Payload) -> Generator:
        """Give the first saved ITE another INTID, in the blob or in guest memory."""
        if payload.blob.startswith(b"KVMITT"):  # itt-ubuf's buffer: the first saved ITE
            from sim.its.ittbuf import DEVICE, ENTRY, HEADER

            data = bytearray(payload.blob)
            first_ite = HEADER.size + DEVICE.size + ENTRY.size - 8
            if len(data) >= first_ite + 8:
                val = int.from_bytes(data[first_ite : first_ite + 8], "little")
                data[first_ite : first_ite + 8] = (val ^ (1 << 16)).to_bytes(8, "little")
            payload.blob = bytes(data)
            yield from ()
            return
        if payload.blob:
            from sim.its.blob import MAGIC

            data = bytearray(payload.blob)
            assert data.startswith(MAGIC)
            nr_coll = int.from_bytes(data[12:16], "little")
            first_ite = 24 + nr_coll * 8 + 16  # header, CTEs, first device header
            if len(data) >= first_ite + 16:
                val = int.from_bytes(data[first_ite + 8 : first_ite + 16], "little")
                data[first_ite + 8 : first_ite + 16] = (val ^ (1 << 16)).to_bytes(8, "little")
            payload.blob = bytes(data)
            yield from ()
            return
        its = self.host.its
        for device in sorted(its.devices.values(), key=lambda d: d.device_id):
            if device.ites:
                event = min(device.ites)
                raw = self.read(device.itt_addr + event * ITE_ESZ, 8)
                if raw is not None:
                    val = int.from_bytes(raw, "little") ^ (1 << 16)
                    self.write(device.itt_addr + event * ITE_ESZ, val.to_bytes(8, "little"))
                return
        yield from ()


class RedirectPendingTable(Behaviour):
    kind = "redirect-pending-table"

    # A pending bit for INTID n lands at PENDBASER + n / 8, with 8192 <= n < 65536.
    REACH = (r.GIC_LPI_OFFSET // 8, (1 << 16) // 8)

    def _victim(self) -> int | None:
        """A host-writable guest byte a pending table can reach, guest data first."""
        its = self.host.its
        labels = self.machine.memory.labels
        own = {r.pendbaser_addr(v.pendbaser) >> PAGE_SHIFT for v in its.vcpus}
        lo, hi = self.REACH
        best = None
        for pfn in self.reachable_pages():
            page = pfn << PAGE_SHIFT
            offset = page & 0xFFFF
            if pfn in own or offset >= hi:
                continue
            first = page + max(0, lo - offset)
            for start, _end, label in labels.runs(first, page + PAGE_SIZE - first):
                if label.kind in KERNEL_TABLE_LABELS:
                    continue
                rank = 0 if label.kind in (LabelKind.SECRET, LabelKind.KERNEL) else 1
                if best is None or rank < best[0]:
                    best = (rank, start)
                break
            if best is not None and best[0] == 0:
                break
        return None if best is None else best[1]

    def before_save(self) -> Generator:
        """Point vCPU 0's PENDBASER so that a forged pending LPI's bit hits guest data."""
        victim = self._victim()
        if victim is None:
            self.blocked.append("no host-writable guest byte a pending table can reach")
            return
        its = self.host.its
        pendbase = victim & ~0xFFFF
        intid = (victim - pendbase) * 8
        its.vcpus[0].pendbaser = pendbase
        lpi = its.lpis.setdefault(intid, LPI(intid, 0, refcount=1))
        lpi.target_vcpu, lpi.pending = 0, True
        yield from ()


class ForgeQueuedMapd(Behaviour):
    kind = "forge-queued-mapd"

    def start(self) -> None:
        self.forged = 0
        self.machine.memory.watch(self._on_access, reads=(), writes=[LabelKind.CMDQ])

    def _on_access(self, who, record) -> None:
        """A host core spinning on the shared queue sees the guest's MAPD land."""
        if who.component == HOST or not record.write or not record.allowed:
            return
        label = self.machine.memory.labels.at(record.addr)
        if label.kind is not LabelKind.CMDQ or record.length != r.ITS_CMD_SIZE:
            return
        self.world.env.process(self._forge(record.addr))

    def _forge(self, slot: int) -> Generator:
        yield self.world.env.timeout(self.spec.reaction_us)
        raw = self.read(slot, r.ITS_CMD_SIZE)
        try:
            cmd = decode(raw) if raw else None
        except CommandDecodeError:
            return
        if not isinstance(cmd, MAPD) or not cmd.valid or self.forged:
            return
        pages = self.secret_pages(1)
        if not pages:
            return
        forged = MAPD(cmd.device_id, cmd.size, pages[0] << PAGE_SHIFT, True)
        if self.write(slot, forged.encode()):
            self.forged += 1
            self.world.env.process(self._loot_later(pages))

    def _loot_later(self, pages: list[int]) -> Generator:
        yield self.world.env.timeout(10.0)
        if self.machine.memory.ownership.state(HOST, pages[0]).accessible:
            self.loot(pages)
        else:
            self.blocked.append("the forged ITT page was never shared with the host")


# Every behaviour a scenario can name, by its ``kind`` (the classes above).
BEHAVIOURS: dict[str, type[Behaviour]] = {
    cls.kind: cls for cls in (Behaviour, *Behaviour.__subclasses__())
}


def behaviour_class(kind: str) -> type[Behaviour]:
    """A behaviour's class by kind: a built-in above, or an installed plugin's."""
    if kind in BEHAVIOURS:
        return BEHAVIOURS[kind]
    from sim.registry import plugin_behaviours

    return plugin_behaviours(frozenset(BEHAVIOURS))[kind]


def install(world: World, scenario: Scenario) -> None:
    """Give both hosts (source and destination) the scenario's behaviours."""
    for machine in world.machines.values():
        for spec in scenario.host.behaviours:
            behaviour = behaviour_class(spec.kind)(spec, world, machine)
            machine.host.behaviours.append(behaviour)


def start(world: World) -> None:
    for machine in world.machines.values():
        for behaviour in machine.host.behaviours:
            behaviour.start()


__all__ = ["BEHAVIOURS", "Behaviour", "behaviour_class", "install", "start"]
