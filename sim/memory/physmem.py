"""Sparse physical memory: real bytes in 4 KiB pages, allocated on first write.

This is the raw store. Nothing outside ``sim.memory`` touches it: actors read and write
through :class:`sim.memory.access.MemorySystem`, which applies the ownership check first.
"""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1)


def pfn(addr: int) -> int:
    """Page frame number of a physical address."""
    return addr >> PAGE_SHIFT


def page_span(addr: int, length: int) -> range:
    """Page frame numbers touched by ``[addr, addr + length)`` (empty for length 0)."""
    if length <= 0:
        return range(0)
    return range(addr >> PAGE_SHIFT, ((addr + length - 1) >> PAGE_SHIFT) + 1)


class PhysicalPages:
    """Byte store; untouched pages read as zeros and cost no memory."""

    __slots__ = ("_pages",)

    def __init__(self) -> None:
        self._pages: dict[int, bytearray] = {}

    def read(self, addr: int, length: int) -> bytes:
        off = addr & (PAGE_SIZE - 1)
        if off + length <= PAGE_SIZE:  # within one page
            page = self._pages.get(addr >> PAGE_SHIFT)
            return bytes(page[off : off + length]) if page is not None else bytes(length)
        out = bytearray()
        while length > 0:
            off = addr & (PAGE_SIZE - 1)
            n = min(length, PAGE_SIZE - off)
            page = self._pages.get(addr >> PAGE_SHIFT)
            out += page[off : off + n] if page is not None else bytes(n)
            addr += n
            length -= n
        return bytes(out)

    def write(self, addr: int, data: bytes) -> None:
        off = addr & (PAGE_SIZE - 1)
        if 0 < len(data) <= PAGE_SIZE - off:  # within one page
            page = self._pages.get(addr >> PAGE_SHIFT)
            if page is None:
                page = self._pages[addr >> PAGE_SHIFT] = bytearray(PAGE_SIZE)
            page[off : off + len(data)] = data
            return
        view = memoryview(data)
        while view:
            off = addr & (PAGE_SIZE - 1)
            n = min(len(view), PAGE_SIZE - off)
            page = self._pages.get(addr >> PAGE_SHIFT)
            if page is None:
                page = self._pages[addr >> PAGE_SHIFT] = bytearray(PAGE_SIZE)
            page[off : off + n] = view[:n]
            addr += n
            view = view[n:]

    def fill(self, first_pfn: int, nr_pages: int, byte: int) -> None:
        """Overwrite whole pages with one byte value (pKVM poisons pages this way)."""
        end = first_pfn + nr_pages
        if byte == 0:
            # Zero pages cost nothing: drop the resident ones in the range.
            for p in self.resident(first_pfn, end):
                del self._pages[p]
            return
        for p in range(first_pfn, end):
            self._pages[p] = bytearray([byte]) * PAGE_SIZE

    def resident(self, first_pfn: int, end_pfn: int) -> list[int]:
        """Page frame numbers in ``[first_pfn, end_pfn)`` that hold data, in order."""
        return sorted(p for p in self._pages if first_pfn <= p < end_pfn)

    @property
    def resident_pages(self) -> int:
        return len(self._pages)
