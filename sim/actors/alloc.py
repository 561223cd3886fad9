"""The guest kernel's allocators, as far as they decide where ITS memory lands.

- :class:`PageAllocator`: whole pages (``alloc_pages``), bump-allocated from guest RAM.
- :class:`KmallocCache`: one kmalloc size class. A new slab (``2**order`` pages, the order
  SLUB picks: :func:`slub_order`) is shared with other kernel objects of that size class;
  each is a named secret with probability ``secret_density``. This is where a classic
  ``kzalloc``'d ITT lands.
- :class:`SharedPool`: the ``itt_pool`` genpool of Linux since b08e2f42e86b, refilled one
  page at a time with pages already shared with the host, so its pages hold only ITTs.

Allocators only pick addresses and set labels (simulator ground truth); the caller writes
memory and makes the hypercalls that sharing takes.

:data:`PROFILES` says which kernel generation each ``guest.allocator`` profile models and
the figures it is calibrated to, each from a bundled capture
(``sim/data/captures/*.capture.json``, converted from the whole-RAM dumps of
``sim/data/real-guests/``; ``tests/capture/test_alloc_calibration.py`` checks every figure
against the capture and against what the allocator does).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from sim.memory.labels import Label, LabelKind, LabelMap
from sim.memory.physmem import PAGE_SIZE


@dataclass(frozen=True)
class AllocatorProfile:
    """What one ``guest.allocator`` profile models, and the measured layout it matches."""

    name: str
    generation: str  # the kernel generation (sim.its.kernel.KernelGen) it models
    source: str  # the capture its figures come from
    itt_home: str  # where an ITT lives
    object_size: int | None  # the slab object holding a small ITT (None: no slab)
    slab_order: int | None  # on the capture's 2-vCPU guest
    objects_per_slab: int | None
    objects_per_page: int | None
    align: int  # the alignment of an ITT's allocation
    others_per_itt_page: int  # other live objects on a small ITT's 4 KiB page


PROFILES: dict[str, AllocatorProfile] = {
    # linux-6.1.192.capture.json: all 5 ITT pages are kmalloc-512 slab pages (struct
    # page -> kmem_cache name), order-1 slabs of 16 objects (8 KiB), 8 objects per 4 KiB
    # page, objects 512-byte aligned; each ITT page holds 7 other live objects (slab
    # counters inuse == objects, or only a freelist pointer in a free one).
    "linux-kzalloc": AllocatorProfile(
        name="linux-kzalloc",
        generation="6.1",
        source="linux-6.1.192.capture.json",
        itt_home="kzalloc(max(sz, 256) + 255): a kmalloc-512 object",
        object_size=512,
        slab_order=1,
        objects_per_slab=16,
        objects_per_page=8,
        align=512,
        others_per_itt_page=7,
    ),
    # linux-7.3.4.capture.json: the 4 ITTs share one page, not a slab page (struct page
    # has no slab_cache), at +0x000, +0x100, +0x200 and +0x300 (the 1 KiB nvme ITT is not
    # 1 KiB aligned: itt_pool is gen_pool_create(get_order(256) = 0), first fit), the
    # rest of the page zero: no other object.
    "linux-shared-pool": AllocatorProfile(
        name="linux-shared-pool",
        generation="7.3",
        source="linux-7.3.4.capture.json",
        itt_home="itt_alloc_pool(): first fit in whole zeroed shared pages",
        object_size=None,
        slab_order=None,
        objects_per_slab=None,
        objects_per_page=None,
        align=256,
        others_per_itt_page=0,
    ),
}

# What the other live objects on the 6.1 ITT pages were (linux-6.1.192.capture.json, the 4
# pages of live ITTs, 28 objects, named from the symbols their pointers resolve to): a
# kmalloc-512 neighbour is named after one of these, in these proportions.
KMALLOC_512_NEIGHBOURS: tuple[tuple[str, int], ...] = (
    ("kernel object (pointers into the heap only)", 16),
    ("irq descriptor (alloc_desc)", 5),
    ("crypto scomp transform", 2),
    ("sysfs module parameters", 1),
    ("network qdisc", 1),
    ("virtio-blk driver data", 1),
    ("zeroed allocation", 1),
    ("block layer (blkcg) data", 1),
)
NEIGHBOUR_KINDS: dict[int, tuple[str, ...]] = {
    512: tuple(kind for kind, n in KMALLOC_512_NEIGHBOURS for _ in range(n)),
}

KMALLOC_MIN = 8
KMALLOC_MAX_CACHE_SIZE = 2 * PAGE_SIZE  # SLUB: KMALLOC_SHIFT_HIGH = PAGE_SHIFT + 1
SLUB_MAX_ORDER = 3
ITT_ALIGN = 256  # ITS_ITT_ALIGN  # mm/slub.c: slub_max_order = PAGE_ALLOC_COSTLY_ORDER


def kmalloc_size_class(size: int) -> int:
    """The kmalloc cache a request of ``size`` bytes lands in (power-of-two classes)."""
    if size > KMALLOC_MAX_CACHE_SIZE:
        raise ValueError("kmalloc beyond two pages goes to the page allocator")
    return max(KMALLOC_MIN, 1 << (size - 1).bit_length())


def slub_order(size: int, nr_cpus: int) -> int:
    """The page order of a kmalloc-``size`` slab, as SLUB's ``calculate_order()`` picks it
    (mm/slub.c, v6.1, no ``slub_min_objects`` / ``slub_min_order`` on the command line).

    ``min_objects = 4 * (fls(nr_cpus) + 1)``, capped at what an order-3 slab holds; the
    smallest order holding that many objects wins (power-of-two sizes leave no remainder,
    so the leftover-fraction test always passes). With 4 KiB pages and 4 CPUs:
    kmalloc-256 order 0, -512 order 1 (16 objects, as on a real 6.1 guest), -1k order 2,
    -2k, -4k and -8k order 3 (the last with 4 objects: an object spans two pages).
    """
    min_objects = 4 * (nr_cpus.bit_length() + 1)
    min_objects = min(min_objects, (PAGE_SIZE << SLUB_MAX_ORDER) // size)
    need = max(min_objects, 1) * size
    return max(0, (need - 1).bit_length() - PAGE_SIZE.bit_length() + 1)


class PageAllocator:
    """Guest pages, handed out in order from ``base`` with a given alignment."""

    def __init__(self, base: int, end: int) -> None:
        self.cursor = base
        self.end = end

    def alloc(self, size: int, align: int = PAGE_SIZE) -> int:
        addr = -(-self.cursor // align) * align
        size = -(-size // PAGE_SIZE) * PAGE_SIZE
        if addr + size > self.end:
            raise MemoryError("guest RAM exhausted")
        self.cursor = addr + size
        return addr


class KmallocCache:
    """kmalloc-<size>: slabs of ``2**order`` pages of equal objects, shared by unrelated
    users. A slab is naturally aligned, as the buddy allocator hands it out."""

    def __init__(
        self,
        size: int,
        pages: PageAllocator,
        labels: LabelMap,
        rng: random.Random,
        secret_density: float,
        on_new_slab: Callable[[int], None] | None = None,
        order: int = 0,
    ) -> None:
        if PAGE_SIZE << order < size:
            raise ValueError(f"kmalloc-{size}: an order-{order} slab holds no object")
        self.size = size
        self.order = order
        self.slab_bytes = PAGE_SIZE << order
        self.pages = pages
        self.labels = labels
        self.rng = rng
        self.secret_density = secret_density
        self.on_new_slab = on_new_slab
        self.free: list[int] = []
        self.slab_pages: list[int] = []
        self.secret_bytes = 0
        self.neighbour_kinds = NEIGHBOUR_KINDS.get(size, ())
        self._named = 0

    @property
    def objects_per_slab(self) -> int:
        return self.slab_bytes // self.size

    def _new_slab(self, neighbours: int) -> None:
        """Open a slab: ``neighbours`` slots go to other kernel objects, the rest free."""
        slab = self.pages.alloc(self.slab_bytes, align=self.slab_bytes)
        self.slab_pages.extend(range(slab, slab + self.slab_bytes, PAGE_SIZE))
        slots = [slab + i * self.size for i in range(self.objects_per_slab)]
        self.labels.set_runs(
            slab,
            self.slab_bytes,
            [
                (
                    addr,
                    addr + self.size,
                    self._kernel_object(f"kmalloc-{self.size}@{slab:#x}+{i * self.size:#x}"),
                )
                for i, addr in enumerate(slots[:neighbours])
            ],
        )
        self.free.extend(reversed(slots[neighbours:]))
        if self.on_new_slab is not None:
            self.on_new_slab(slab)

    def put_kernel_object(self, addr: int, name: str) -> None:
        """Another kernel user's object in a slot (:meth:`_kernel_object`)."""
        self.labels.set(addr, self.size, self._kernel_object(name))

    def _kernel_object(self, name: str) -> Label:
        """Another kernel user's object: a secret with ``secret_density``, named after a
        measured neighbour kind where the capture has them (no random draw)."""
        if self.neighbour_kinds:
            kinds = self.neighbour_kinds
            name = f"{kinds[self._named * 11 % len(kinds)]} in {name}"
            self._named += 1
        if self.rng.random() < self.secret_density:
            self.secret_bytes += self.size
            return Label(LabelKind.SECRET, name)
        return Label(LabelKind.KERNEL, name)

    def alloc(self, label: Label) -> int:
        """One object for us; a new slab page is mostly taken by other objects already."""
        if not self.free:
            self._new_slab(neighbours=self.objects_per_slab - 1)
        addr = self.free.pop()
        self.labels.set(addr, self.size, label)
        return addr

    def populate(self, nr_pages: int) -> None:
        """Background heap: ``nr_pages`` pages (whole slabs) full of other users' objects."""
        for _ in range(-(-nr_pages * PAGE_SIZE // self.slab_bytes)):
            self._new_slab(neighbours=self.objects_per_slab)


class SharedPool:
    """``itt_pool``: a genpool of pages shared with the host, holding only ITTs.

    ``gen_pool_create(get_order(ITS_ITT_ALIGN))`` is order 0 (``get_order`` counts pages):
    ``gen_pool_alloc`` is first fit at byte granularity, and since every ITT is a multiple
    of 256 bytes each lands 256-aligned, not size-aligned (a 1 KiB ITT after three 256-byte
    ones sits at +0x300, as in linux-7.3.4.capture.json)."""

    def __init__(
        self, pages: PageAllocator, labels: LabelMap, share_page: Callable[[int], None]
    ) -> None:
        self.pages = pages
        self.labels = labels
        self.share_page = share_page
        self.chunks: list[tuple[int, int]] = []  # free (addr, size), in address order
        self.pool_pages = 0

    def alloc(self, size: int, label: Label) -> int:
        """``gen_pool_alloc``: first fit; refill with one shared page when it fails."""
        if size > PAGE_SIZE:
            raise ValueError("ITTs of a page or more come from the page allocator")
        for i, (addr, free) in enumerate(self.chunks):
            aligned = -(-addr // ITT_ALIGN) * ITT_ALIGN  # chunks are 256-byte multiples
            if aligned + size <= addr + free:
                self._take(i, aligned, size)
                self.labels.set(aligned, size, label)
                return aligned
        page = self.pages.alloc(PAGE_SIZE)
        self.share_page(page)
        self.pool_pages += 1
        self.chunks.append((page, PAGE_SIZE))
        return self.alloc(size, label)

    def _take(self, i: int, addr: int, size: int) -> None:
        start, free = self.chunks.pop(i)
        pieces = [(start, addr - start), (addr + size, start + free - addr - size)]
        for piece in reversed(pieces):
            if piece[1] > 0:
                self.chunks.insert(i, piece)

    def free(self, addr: int, size: int) -> None:
        self.labels.clear(addr, size)
        self.chunks.append((addr, size))
        self.chunks.sort()
        merged: list[tuple[int, int]] = []
        for start, length in self.chunks:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], merged[-1][1] + length)
            else:
                merged.append((start, length))
        self.chunks = merged
