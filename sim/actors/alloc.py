"""The guest kernel's allocators, as far as they decide where ITS memory lands.

- :class:`PageAllocator`: whole pages (``alloc_pages``), bump-allocated from guest RAM.
- :class:`KmallocCache`: one kmalloc size class. A new slab page is shared with other
  kernel objects of that size class; each is a named secret with probability
  ``secret_density``. This is where a classic ``kzalloc``'d ITT lands.
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


def kmalloc_size_class(size: int) -> int:
    """The kmalloc cache a request of ``size`` bytes lands in (power-of-two classes)."""
    if size > PAGE_SIZE * 2:
        raise ValueError("kmalloc beyond two pages goes to the page allocator")
    return max(KMALLOC_MIN, 1 << (size - 1).bit_length())


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
    """kmalloc-<size>: 4 KiB slab pages of equal objects, shared by unrelated users."""

    def __init__(
        self,
        size: int,
        pages: PageAllocator,
        labels: LabelMap,
        rng: random.Random,
        secret_density: float,
        on_new_slab: Callable[[int], None] | None = None,
    ) -> None:
        self.size = size
        self.pages = pages
        self.labels = labels
        self.rng = rng
        self.secret_density = secret_density
        self.on_new_slab = on_new_slab
        self.free: list[int] = []
        self.slab_pages: list[int] = []
        self.secret_bytes = 0

    def _new_slab(self, neighbours: int) -> None:
        """Open a slab page: ``neighbours`` slots go to other kernel objects, the rest free."""
        page = self.pages.alloc(PAGE_SIZE)
        self.slab_pages.append(page)
        slots = [page + i * self.size for i in range(PAGE_SIZE // self.size)]
        for i, addr in enumerate(slots[:neighbours]):
            self.put_kernel_object(addr, f"kmalloc-{self.size}@{page:#x}+{i * self.size:#x}")
        self.free.extend(reversed(slots[neighbours:]))
        if self.on_new_slab is not None:
            self.on_new_slab(page)

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
            per_page = PAGE_SIZE // self.size
            self._new_slab(neighbours=per_page - 1)
        addr = self.free.pop()
        self.labels.set(addr, self.size, label)
        return addr

    def populate(self, nr_pages: int) -> None:
        """Background heap: slab pages full of other users' objects."""
        for _ in range(nr_pages):
            self._new_slab(neighbours=PAGE_SIZE // self.size)


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
