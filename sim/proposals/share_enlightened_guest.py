"""share-enlightened-guest: the guest shares the pages holding its ITTs itself.

Whole pages are the granule: an ITT in a kmalloc slab takes its neighbours with it, for
as long as the device is mapped. A page is unshared when no ITT is left on it.
KVM's writes while it runs the queue reach what they must: the guest unshares an ITT
only after the MAPD V=0 that follows its DISCARDs has run (the ITE each DISCARD zeroes
is still shared), and the device table holding the DTE MAPD V=0 zeroes is the driver's.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from sim.memory.labels import LabelKind
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE
from sim.proposals.base import Proposal

if TYPE_CHECKING:
    from sim.actors.guest import Guest


class ShareEnlightenedGuest(Proposal):
    name = "share-enlightened-guest"
    summary = "the guest shares the pages holding its ITTs (MEM_SHARE)"
    el2_lines_source = (
        "none: MEM_SHARE / MEM_UNSHARE are mainline pKVM hypercalls (arm-pkvm-guest.c)"
    )

    def on_itt_alloc(self, guest: Guest, addr: int, size: int) -> Generator:
        yield from guest.share(addr, size, "enlightened guest: ITT page")

    def on_itt_free(self, guest: Guest, addr: int, size: int) -> Generator:
        labels = guest.machine.memory.labels
        for pfn in range(addr >> PAGE_SHIFT, ((addr + size - 1) >> PAGE_SHIFT) + 1):
            page = pfn << PAGE_SHIFT
            others = [
                (s, e)
                for s, e, label in labels.runs(page, PAGE_SIZE)
                if label.kind is LabelKind.ITT and not (addr <= s and e <= addr + size)
            ]
            if not others:
                yield from guest.unshare(page, PAGE_SIZE, "enlightened guest: last ITT gone")
