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
"""

from __future__ import annotations

import random
from collections.abc import Callable

from sim.memory.labels import Label, LabelKind, LabelMap
from sim.memory.physmem import PAGE_SIZE

KMALLOC_MIN = 8
KMALLOC_MAX_CACHE_SIZE = 2 * PAGE_SIZE  # SLUB: KMALLOC_SHIFT_HIGH = PAGE_SHIFT + 1
SLUB_MAX_ORDER = 3  # mm/slub.c: slub_max_order = PAGE_ALLOC_COSTLY_ORDER


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

    @property
    def objects_per_slab(self) -> int:
        return self.slab_bytes // self.size

    def _new_slab(self, neighbours: int) -> None:
        """Open a slab: ``neighbours`` slots go to other kernel objects, the rest free."""
        slab = self.pages.alloc(self.slab_bytes, align=self.slab_bytes)
        self.slab_pages.extend(range(slab, slab + self.slab_bytes, PAGE_SIZE))
        slots = [slab + i * self.size for i in range(self.objects_per_slab)]
        for i, addr in enumerate(slots[:neighbours]):
            self.put_kernel_object(addr, f"kmalloc-{self.size}@{slab:#x}+{i * self.size:#x}")
        self.free.extend(reversed(slots[neighbours:]))
        if self.on_new_slab is not None:
            self.on_new_slab(slab)

    def put_kernel_object(self, addr: int, name: str) -> None:
        """Another kernel user's object in a slot: a secret with ``secret_density``."""
        if self.rng.random() < self.secret_density:
            self.labels.set(addr, self.size, Label(LabelKind.SECRET, name))
            self.secret_bytes += self.size
        else:
            self.labels.set(addr, self.size, Label(LabelKind.KERNEL, name))

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
    """``itt_pool``: a genpool of pages shared with the host, holding only ITTs."""

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
            aligned = -(-addr // size) * size  # ITT sizes are powers of two >= 256
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
