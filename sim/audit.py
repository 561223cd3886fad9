"""The audit: memory-exposure violations, each pointing at real bytes and its causes.

Three kinds, all read off what happened in a run:

- confidentiality: a secret byte the host *could* read through its stage-2, or a DMA
  master it drives could read or write (exposure intervals from the trackers, with their
  durations), or *did* read (an allowed host or DMA read in the access log that
  overlapped it), before or after teardown (pKVM hands shared pages back unpoisoned);
- integrity: a guest byte the host or a DMA master wrote that is guest data (labelled
  secret or kernel data), or that sits on a private page the writer's IOMMU domain does
  not grant (only DMA can); ITS structures the guest shared or granted, and free bytes
  there, are the guest's accepted risk; a page the guest has left (torn down) is
  no longer the guest's to corrupt, though reading its secrets is still a read;
- trust: an ownership change EL2 made on the host's word alone: a host claim, a MAPD
  EL2 parsed from queue bytes the host wrote (judged at EL2's read of the slot: what it
  read, and whether those are the bytes the guest left there), or a page the destination
  re-shared because the source had shared it on the host's word.

Each violation names time, actor, address range, victim label, proposal and the chain
of events behind it: the access, the transition that opened the page, its cause.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from sim.exposure import ExposureInterval
from sim.its.regs import ITS_CMD_SIZE
from sim.memory.access import AccessRecord, Initiator
from sim.memory.labels import LabelKind
from sim.memory.ownership import HOST, OwnershipChange, PageState, Transition
from sim.memory.physmem import PAGE_SHIFT

if TYPE_CHECKING:
    from sim.world import Machine, World

GUEST_DATA = {LabelKind.SECRET, LabelKind.KERNEL}
# What the audit acts on: secrets read, guest data and queue slots written, and any DMA
# write (which may reach a private page).
READS_WATCHED = (LabelKind.SECRET,)
WRITES_WATCHED = (LabelKind.SECRET, LabelKind.KERNEL, LabelKind.CMDQ)
# Transitions after which the host no longer holds a page the guest had shared.
SHARE_ENDS = (Transition.GUEST_UNSHARE_HOST, Transition.HOST_RECLAIM_SHARED_PAGE)


class Violation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["confidentiality", "integrity", "trust"]
    how: Literal["could-read", "dma-reachable", "did-read", "wrote", "unverified-share"]
    machine: str
    proposal: str
    time_ms: float
    end_ms: float | None = None
    actor: str
    addr: int
    length: int
    victim: str
    byte_ms: float = 0.0
    chain: tuple[str, ...]


def _describe(change: OwnershipChange | None) -> str:
    if change is None:
        return "the page was host-readable from the start (VM creation)"
    return (
        f"t={change.time / 1000:.3f} ms {change.transition.spec.kernel_name}"
        f" pfn {change.first_pfn:#x}+{change.nr_pages}: {change.cause or 'no cause given'}"
    )


def _dma_opening(interval: ExposureInterval) -> str:
    """What made a secret DMA-reachable: the guest put it on a page the master already
    reached, the page entered the master's IOMMU domain, or a page-state change."""
    at = f"t={interval.start / 1000:.3f} ms"
    if interval.trigger == "label":
        return f"opened at {at} when the guest stored the secret on a page already reached"
    if interval.trigger == "iommu":
        return f"opened at {at} when the page was mapped into the master's IOMMU domain"
    return f"opened by {_describe(interval.opened_by)}"


_MIGRATED = re.compile(r"migration: as on ([\w-]+), ")  # a share carried across
_QUEUE_SLOT = re.compile(r"queue slot (0x[0-9a-f]+)")


class Auditor:
    """Watches every access on both machines while the world runs."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.violations: list[Violation] = []
        self.claims: list[Violation] = []
        # Command-queue slots, by (machine, address). A slot the host (or a DMA master)
        # wrote since the guest last wrote it: who, and what the slot held as the guest
        # left it (the guest writes whole commands).
        self._host_wrote: dict[tuple[str, int], tuple[str, bytes]] = {}
        # At EL2's latest read of a slot: the host actor whose bytes it read, if the
        # bytes were not the guest's. EL2 acting on them acts on host input, whatever
        # it believes; rewriting the guest's bytes unchanged, or after EL2 read them,
        # gives the host nothing.
        self._el2_read: dict[tuple[str, int], str] = {}
        # Pages shared on the host's word and still shared: (machine, pfn) -> why.
        self._host_word: dict[tuple[str, int], str] = {}
        from sim.world import RAM_BASE

        self._ram_lo, self._ram_hi = RAM_BASE, RAM_BASE + world.ram_size
        for machine in world.machines.values():
            machine.memory.watch(
                partial(self._on_access, machine), READS_WATCHED, WRITES_WATCHED, dma_writes=True
            )
            machine.memory.watch(
                partial(self._on_queue_read, machine),
                (LabelKind.CMDQ,),
                (),
                by=machine.lowvisor.name,  # (_on_queue_read judges EL2's reads only)
            )
            machine.memory.ownership.watchers.append(
                lambda pfn, nr, done, m=machine: done and self._on_change(m)
            )

    def _on_access(self, machine: Machine, who: Initiator, rec: AccessRecord) -> None:
        if not rec.allowed:
            return
        host = who.component == HOST
        if not (host or who.dma) and not (rec.write and self._host_wrote):
            return  # a guest or EL2 read, or a write that drops no host bytes: nothing to note
        memory = machine.memory
        kinds = memory.labels.kinds(rec.addr, rec.length)
        if rec.write and LabelKind.CMDQ in kinds:
            self._note_queue_write(machine, who, rec)
        if not (host or who.dma):
            return
        if not rec.write and LabelKind.SECRET not in kinds:
            return  # the common case: a read that overlaps no secret
        if rec.write and not who.dma and not GUEST_DATA.intersection(kinds):
            return  # no guest data; a CPU the stage-2 let through cannot hit a private page
        first, last = max(rec.addr, self._ram_lo), min(rec.addr + rec.length, self._ram_hi)
        domain = memory.iommu.get(who.name) if who.dma else None
        for pfn in range(first >> PAGE_SHIFT, ((last - 1) >> PAGE_SHIFT) + 1):
            page_lo = max(first, pfn << PAGE_SHIFT)
            page_hi = min(last, (pfn + 1) << PAGE_SHIFT)
            guest_state = memory.ownership.state(self.world.guest_name, pfn)
            if rec.write and guest_state is PageState.NOPAGE:
                continue  # the guest left this page (teardown): a write harms no guest
            private = guest_state is PageState.OWNED
            # A DMA master may touch a private page only where its IOMMU domain grants it.
            granted = domain is not None and domain.allows(pfn, rec.write)
            for start, end, label in memory.labels.runs(page_lo, page_hi - page_lo):
                if rec.write:
                    hit = label.kind in GUEST_DATA or (private and not granted)
                else:
                    hit = label.kind is LabelKind.SECRET
                if hit:
                    self._record(machine, who, rec, start, end, str(label), pfn, private)

    @staticmethod
    def _slots(machine: Machine, addr: int, length: int) -> Iterator[int]:
        """The command-queue slots an access touches (the queue is slot aligned)."""
        for start, end, label in machine.memory.labels.runs(addr, length):
            if label.kind is LabelKind.CMDQ:
                yield from range(start - start % ITS_CMD_SIZE, end, ITS_CMD_SIZE)

    def _note_queue_write(self, machine: Machine, who: Initiator, rec: AccessRecord) -> None:
        """A write to the queue, seen before its bytes land: a guest write makes the
        slots the guest's again; the host's first write over the guest's bytes keeps a
        copy of them; EL2 importing the guest's memory brings the source's record along
        with the source's bytes."""
        if not self._host_wrote and who.component != HOST:
            return  # a guest's or EL2's write, and no slot holds host bytes: nothing to drop
        source = self.world.src.name
        for slot in self._slots(machine, rec.addr, rec.length):
            key = (machine.name, slot)
            if who.component == HOST:
                before = self._host_wrote.get(key)
                guests = before[1] if before else machine.memory.peek(slot, ITS_CMD_SIZE)
                self._host_wrote[key] = (rec.actor, guests)
            elif who.name == machine.lowvisor.name and (source, slot) in self._host_wrote:
                self._host_wrote[key] = self._host_wrote[source, slot]
            else:
                self._host_wrote.pop(key, None)

    def _on_queue_read(self, machine: Machine, who: Initiator, rec: AccessRecord) -> None:
        """EL2 reads queue slots: judge, for each, whose bytes it is reading."""
        if rec.write or not rec.allowed or who.name != machine.lowvisor.name:
            return
        if not (self._host_wrote or self._el2_read):
            return  # the host never wrote the queue: every slot holds the guest's bytes
        for slot in self._slots(machine, rec.addr, rec.length):
            key = (machine.name, slot)
            wrote = self._host_wrote.get(key)
            if wrote and machine.memory.peek(slot, ITS_CMD_SIZE) != wrote[1]:
                self._el2_read[key] = wrote[0]
            else:
                self._el2_read.pop(key, None)

    def _record(self, machine, who, rec, start, end, victim, pfn, private) -> None:
        if who.dma:
            via = "DMA, IOMMU grants it" if machine.memory.iommu.get(who.name) else "DMA, no IOMMU"
        elif private:
            via = "the page is private"  # cannot happen through a stage-2; kept for clarity
        else:
            via = _describe(machine.memory.ownership.last_change(pfn))
        op = "wrote" if rec.write else "read"
        self.violations.append(
            Violation(
                kind="integrity" if rec.write else "confidentiality",
                how="wrote" if rec.write else "did-read",
                machine=machine.name,
                proposal=self.world.proposal.name,
                time_ms=rec.time / 1000,
                actor=rec.actor,
                addr=start,
                length=end - start,
                victim=victim,
                chain=(
                    f"t={rec.time / 1000:.3f} ms {rec.actor} {op} {rec.length} bytes"
                    f" at {rec.addr:#x}",
                    f"page {pfn << PAGE_SHIFT:#x} reachable: {via}",
                ),
            )
        )

    def _on_change(self, machine: Machine) -> None:
        """EL2 just shared a page on host input: a host claim, queue bytes the host
        wrote, or a share the source made on host input, carried across. A trust
        violation, with what the page held at that moment."""
        change = machine.memory.ownership.history[-1]
        pfns = range(change.first_pfn, change.first_pfn + change.nr_pages)
        if change.transition in SHARE_ENDS:
            for pfn in pfns:
                self._host_word.pop((machine.name, pfn), None)
            return
        if change.transition is not Transition.GUEST_SHARE_HOST:
            return
        migrated = _MIGRATED.match(change.cause)
        if migrated:
            if not self._host_word:
                return  # (no page anywhere was shared on the host's word)
            source = sorted(
                {w for p in pfns if (w := self._host_word.get((migrated[1], p))) is not None}
            )
            if not source:
                return  # the guest's own share, or EL2's on the guest's word
            why = (
                f"EL2 re-shared the page because {migrated[1]} had shared it on the host's"
                f" word: {'; '.join(source)}"
            )
        elif change.cause.startswith("host claim"):
            why = (
                f"the host asked EL2 to share page {change.first_pfn << PAGE_SHIFT:#x}"
                f" ({change.cause})"
            )
        else:
            if not self._el2_read:
                return  # (no slot EL2 read holds host bytes: no writer to find below)
            slot = _QUEUE_SLOT.search(change.cause)
            writer = slot and self._el2_read.get((machine.name, int(slot[1], 16)))
            if not writer:
                return
            why = (
                f"{writer} wrote the bytes EL2 read from the queue slot, not the guest"
                f" ({change.cause})"
            )
        for pfn in pfns:
            self._host_word[machine.name, pfn] = why
        addr = change.first_pfn << PAGE_SHIFT
        length = change.nr_pages << PAGE_SHIFT
        labels = machine.memory.labels
        victims = sorted({str(label) for _, _, label in labels.runs(addr, length)})
        self.claims.append(
            Violation(
                kind="trust",
                how="unverified-share",
                machine=machine.name,
                proposal=self.world.proposal.name,
                time_ms=change.time / 1000,
                actor=f"{machine.name}.lowvisor",
                addr=addr,
                length=length,
                victim=", ".join(victims),
                chain=(
                    why,
                    f"EL2 ran {change.transition.spec.kernel_name} without checking"
                    " that the page holds an ITS table",
                ),
            )
        )

    def _exposures(self) -> list[Violation]:
        out = []
        for machine in self.world.machines.values():
            for tracker in (machine.exposure, machine.dma_exposure):
                dma = tracker.reach == "dma"
                for interval in tracker.intervals:
                    end = interval.end
                    where = (
                        f"secret bytes a DMA master the host drives reaches ({interval.via})"
                        if dma
                        else "secret bytes on a host-readable page"
                    )
                    out.append(
                        Violation(
                            kind="confidentiality",
                            how="dma-reachable" if dma else "could-read",
                            machine=machine.name,
                            proposal=self.world.proposal.name,
                            time_ms=interval.start / 1000,
                            end_ms=end / 1000,
                            actor=f"{machine.name}.host",
                            addr=interval.addr,
                            length=interval.length,
                            victim=f"secret:{interval.secret}",
                            byte_ms=round(interval.byte_us(tracker.window_end) / 1000, 6),
                            chain=(
                                f"{where} from {interval.start / 1000:.3f} to"
                                f" {end / 1000:.3f} ms (byte x ms counted up to"
                                f" {tracker.window_end / 1000:g} ms)",
                                _dma_opening(interval)
                                if dma
                                else f"opened by {_describe(interval.opened_by)}",
                            ),
                        )
                    )
        return out

    def all(self) -> list[Violation]:
        found = self._exposures() + self.violations + self.claims
        return sorted(found, key=lambda v: (v.time_ms, v.machine, v.kind, v.addr))
