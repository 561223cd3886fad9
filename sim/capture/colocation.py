"""What shares each ITT's 4 KiB page, read from the stopped guest's RAM.

For each page holding an ITT: the ``struct page`` of its frame (virtual address from
/proc/kcore's vmemmap entry, physical address by QEMU's ``gva2gpa``), its compound head,
and from the head's words whether the frame belongs to a slab and which ``kmem_cache``.
Then every object (slab) or allocation (pool) on the page, each 64-bit word that is a
kernel pointer resolved against the guest's /proc/kallsyms, and what the object is named
from those symbols (:data:`sim.capture.convert.NEIGHBOUR_KINDS`, shared with the bundled
captures).

Layouts (offsets in bytes), from the sources of the two kernels we run:

=========================  ============================  ============================
field                      6.1 (mm/slab.h, slub_def.h)   7.3 (mm/slab.h)
=========================  ============================  ============================
struct slab.slab_cache     24                            8
struct slab.counters       40 (inuse:16 objects:15)      40 (same bits)
slab marker                flags bit 9 (PG_slab)         __page_type (48) >> 24 == 0xf5
tail page -> head          word 1 (compound_head) | 1    word 1 (compound_info) | 1
kmem_cache.size/object_sz  24 / 28                       24 / 28
kmem_cache.oo              52 (order << 16 | objects)    48
kmem_cache.align           84                            76
kmem_cache.name            96                            88
=========================  ============================  ============================

A kernel of another generation is read with the layout of the nearest one (major
version < 7: 6.1's); a ``kmem_cache`` whose name does not read back as a C string is
reported as an unnamed cache rather than guessed.

Simplifications (said again in the README): object liveness in a slab with free objects
is judged as ``sim.capture.convert`` does (a free SLUB object holds only its hardened
freelist pointer: exactly one non-zero word and no symbol) rather than by walking the
per-CPU and per-slab freelists; an object that straddles the 4 KiB page boundary is
clipped to the page; pool allocations other than ITTs are not told apart (the pool only
serves ITTs); an ITT of a page or more is described as whole pages.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from sim.capture.convert import NEIGHBOUR_KINDS
from sim.capture.format import PAGE_SIZE, Allocator, ITTPage, PageObject
from sim.capture.symbols import Kallsyms, KernelMap

PGTY_SLAB = 0xF5
PG_SLAB_61 = 9


@dataclass(frozen=True)
class Layout:
    name: str
    slab_cache: int
    counters: int
    page_type: int | None  # offset of __page_type (7.3), None: PG_slab flag (6.1)
    kc_size: int
    kc_object_size: int
    kc_oo: int
    kc_align: int
    kc_name: int


LAYOUT_61 = Layout("6.1", 24, 40, None, 24, 28, 52, 84, 96)
LAYOUT_73 = Layout("7.3", 8, 40, 48, 24, 28, 48, 76, 88)


def layout_for(version: str) -> Layout:
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 7
    return LAYOUT_61 if major < 7 else LAYOUT_73


class Memory(Protocol):
    def read(self, pa: int, size: int) -> bytes: ...
    def gva2gpa(self, va: int) -> int | None: ...


@dataclass(frozen=True)
class ITTRecord:
    """An ITT the stream mapped: its DeviceID, address, bytes, and whether still mapped."""

    device_id: int
    addr: int
    nbytes: int
    live: bool


def _qwords(data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // 8}Q", data[: len(data) // 8 * 8]))


def _u32(data: bytes, off: int) -> int:
    return struct.unpack_from("<I", data, off)[0]


def _u64(data: bytes, off: int) -> int:
    return struct.unpack_from("<Q", data, off)[0]


def what_is(symbols: Iterable[str], nonzero: int, caches: Iterable[str] = ()) -> str:
    """What an object is, from the symbols its words point at (then the caches they point
    into, when no symbol names it)."""
    names = set(symbols)
    for known, what in NEIGHBOUR_KINDS:
        if names & set(known):
            return what
    if nonzero == 0:
        return "zeroed allocation"
    if names:
        return "kernel object (points at " + ", ".join(sorted(names)[:3]) + ")"
    into = sorted(set(caches))
    if into:
        more = f" and {len(into) - 4} more" if len(into) > 4 else ""
        return "kernel object (points into " + ", ".join(into[:4]) + more + ")"
    return "kernel object (pointers into the heap only)"


class Colocation:
    """Reads pages, struct pages and caches of one stopped guest."""

    def __init__(self, mem: Memory, kmap: KernelMap, syms: Kallsyms, layout: Layout):
        self.mem, self.kmap, self.syms, self.layout = mem, kmap, syms, layout
        self.notes: list[str] = []
        self._caches: dict[int, dict | None] = {}  # kmem_cache VA -> what it read as
        self._frames: dict[int, str | None] = {}  # frame -> the slab cache holding it

    # -- addresses -----------------------------------------------------------------------
    def phys(self, va: int) -> int | None:
        pa = self.kmap.phys(va)
        return pa if pa is not None else self.mem.gva2gpa(va)

    def read_va(self, va: int, size: int) -> bytes | None:
        pa = self.phys(va)
        if pa is None:
            return None
        if (pa & (PAGE_SIZE - 1)) + size > PAGE_SIZE:  # crosses a page: translate each
            first = PAGE_SIZE - (pa & (PAGE_SIZE - 1))
            rest = self.read_va(va + first, size - first)
            return None if rest is None else self.mem.read(pa, first) + rest
        return self.mem.read(pa, size)

    def c_string(self, va: int, limit: int = 64) -> str | None:
        data = self.read_va(va, limit)
        if data is None or b"\0" not in data:
            return None
        text = data.split(b"\0", 1)[0]
        if not text or not all(32 <= b < 127 for b in text):
            return None
        return text.decode()

    def symbols_of(self, words: Iterable[int]) -> list[str]:
        out = set()
        for w in words:
            sym = self.syms.resolve(w)
            if sym is not None:
                out.add(sym.name)
        return sorted(out)

    # -- struct page and kmem_cache ----------------------------------------------------
    def struct_page_words(self, va: int, size: int) -> list[int] | None:
        data = self.read_va(va, size)
        return None if data is None else _qwords(data)

    def head_page(self, pa: int) -> tuple[int, list[int]] | None:
        """(physical address of the compound head's frame, the head's struct page words)."""
        sp = self.kmap.struct_page(pa)
        if sp is None:
            self.notes.append(f"no vmemmap entry in /proc/kcore for {pa:#x}: no struct page")
            return None
        va, size = sp
        words = self.struct_page_words(va, size)
        if words is None:
            self.notes.append(f"struct page {va:#x} of {pa:#x}: gva2gpa found no mapping")
            return None
        head_va, head_pa = va, pa & ~(PAGE_SIZE - 1)
        if words[1] & 1:  # a tail page: word 1 is the head's address | 1
            head_va = words[1] & ~1
            pfn = self.kmap.pfn_of_struct_page(head_va)
            if pfn is None or not 0 <= head_pa // PAGE_SIZE - pfn < 1024:
                self.notes.append(f"struct page {va:#x}: compound head {head_va:#x} not in vmemmap")
                return None
            head_pa = pfn * PAGE_SIZE
            got = self.struct_page_words(head_va, size)
            if got is None:
                return None
            words = got
        return head_pa, words

    def slab_cache_of(self, ptr: int) -> str | None:
        """The name of the slab cache whose slab a linear-map pointer points into, or None."""
        pa = self.kmap.phys(ptr) if self.kmap.is_linear(ptr) else None
        if pa is None:
            return None
        frame = pa // PAGE_SIZE
        if frame not in self._frames:
            notes = len(self.notes)
            head = self.head_page(pa)
            del self.notes[notes:]  # a pointer that is not a slab object is no finding
            name = None
            if head is not None and self.is_slab(head[1]):
                cache_va = head[1][self.layout.slab_cache // 8]
                if cache_va not in self._caches:
                    self._caches[cache_va] = self.kmem_cache(cache_va)
                cache = self._caches[cache_va]
                name = cache["name"] if cache else None
            self._frames[frame] = name
        return self._frames[frame]

    def is_slab(self, words: list[int]) -> bool:
        if self.layout.page_type is None:
            return bool(words[0] >> PG_SLAB_61 & 1)
        page_type = words[self.layout.page_type // 8] & 0xFFFF_FFFF
        if self.layout.page_type % 8:
            page_type = words[self.layout.page_type // 8] >> 32
        return page_type >> 24 == PGTY_SLAB

    def kmem_cache(self, va: int) -> dict | None:
        lay = self.layout
        data = self.read_va(va, lay.kc_name + 8)
        if data is None:
            return None
        size, object_size = _u32(data, lay.kc_size), _u32(data, lay.kc_object_size)
        oo = _u32(data, lay.kc_oo)
        name = self.c_string(_u64(data, lay.kc_name))
        if not 8 <= object_size <= size <= 1 << 22:
            return None
        return {
            "name": name,
            "size": size,
            "object_size": object_size,
            "order": oo >> 16,
            "objects": oo & 0xFFFF,
            "align": _u32(data, lay.kc_align),
        }

    # -- pages -------------------------------------------------------------------------
    def page(self, page: int, itts: list[ITTRecord]) -> ITTPage:
        """The ITT page at physical ``page`` with the ITTs that start on it."""
        head = self.head_page(page)
        if head is not None and self.is_slab(head[1]):
            head_pa, words = head
            cache_va = words[self.layout.slab_cache // 8]
            cache = self.kmem_cache(cache_va)
            if cache is not None:
                counters = words[self.layout.counters // 8]
                return self._slab_page(page, itts, head_pa, cache, counters)
            self.notes.append(
                f"page {page:#x}: slab_cache {cache_va:#x} does not read as a kmem_cache"
            )
        pool = "itt_pool" in self.syms and all(t.nbytes < PAGE_SIZE for t in itts)
        return self._plain_page(page, itts, pool)

    def _object(
        self, addr: int, size: int, itt: ITTRecord | None, full: bool, clipped: bool
    ) -> PageObject:
        data = self.mem.read(addr, size)
        words = _qwords(data)
        nonzero = sum(1 for w in words if w)
        symbols = self.symbols_of(words)
        if itt is not None:
            what = f"ITT of DeviceID {itt.device_id:#x}" + (
                "" if itt.live else " (unmapped, freed)"
            )
            return PageObject(
                addr=addr, size=size, kind="itt", what=what, live=itt.live,
                zero=nonzero == 0, nonzero_qwords=nonzero, symbols=symbols,
            )  # fmt: skip
        free = not full and nonzero == 1 and not symbols
        if free:
            what = "free slab object (freelist pointer only)"
        else:
            caches = [c for w in words if w and (c := self.slab_cache_of(w))]
            what = what_is(symbols, nonzero, caches)
        if clipped:
            what += " (straddles the page; this page's part)"
        return PageObject(
            addr=addr, size=size, kind="free" if free else "kernel", what=what, live=not free,
            zero=nonzero == 0, nonzero_qwords=nonzero, symbols=symbols,
        )  # fmt: skip

    def _slab_page(
        self, page: int, itts: list[ITTRecord], slab: int, cache: dict, counters: int
    ) -> ITTPage:
        inuse, objects = counters & 0xFFFF, counters >> 16 & 0x7FFF
        full = inuse == objects
        stride = cache["size"]
        by_addr = {t.addr: t for t in itts}
        objs = []
        n = cache["objects"] or objects
        for i in range(n):
            start, end = slab + i * stride, slab + (i + 1) * stride
            lo, hi = max(start, page), min(end, page + PAGE_SIZE)
            if lo >= hi:
                continue
            objs.append(
                self._object(lo, hi - lo, by_addr.get(start), full, (lo, hi) != (start, end))
            )
        name = cache["name"] or f"unnamed kmem_cache (object size {cache['object_size']})"
        return ITTPage(
            page=page,
            itts=sorted(by_addr),
            allocator=Allocator(
                kind="slab",
                cache=name,
                object_size=cache["object_size"],
                slab_addr=slab,
                slab_order=cache["order"],
                objects_per_slab=n,
                objects_per_page=max(1, PAGE_SIZE // stride),
                align=cache["align"] or None,
            ),
            objects=objs,
        )

    def _plain_page(self, page: int, itts: list[ITTRecord], pool: bool) -> ITTPage:
        objs: list[PageObject] = []
        cursor = page
        end = page + PAGE_SIZE

        def gap(lo: int, hi: int) -> None:
            if lo >= hi:
                return
            data = self.mem.read(lo, hi - lo)
            words = _qwords(data)
            nonzero = sum(1 for w in words if w)
            symbols = self.symbols_of(words)
            what = "unused pool space" if pool else "rest of the page"
            if nonzero:
                what += f" ({nonzero} non-zero words)"
            objs.append(
                PageObject(
                    addr=lo, size=hi - lo, kind="free", what=what, live=False,
                    zero=nonzero == 0, nonzero_qwords=nonzero, symbols=symbols,
                )
            )  # fmt: skip

        for itt in sorted(itts, key=lambda t: t.addr):
            if itt.addr < cursor:
                continue  # overlaps the previous one (a freed ITT whose space was reused)
            gap(cursor, itt.addr)
            hi = min(itt.addr + itt.nbytes, end)
            objs.append(self._object(itt.addr, hi - itt.addr, itt, True, False))
            cursor = hi
        gap(cursor, end)
        return ITTPage(
            page=page,
            itts=sorted({t.addr for t in itts}),
            allocator=Allocator(kind="pool", cache="itt_pool", align=256)
            if pool
            else Allocator(kind="pages", align=PAGE_SIZE),
            objects=objs,
        )


def colocate(
    itts: list[ITTRecord],
    mem: Memory,
    kmap: KernelMap,
    syms: Kallsyms,
    layout: Layout,
    progress: Callable[[str], None] = lambda line: None,
) -> tuple[list[ITTPage], list[str]]:
    """One :class:`ITTPage` per page an ITT starts on, in address order; and notes."""
    col = Colocation(mem, kmap, syms, layout)
    pages: dict[int, list[ITTRecord]] = {}
    latest: dict[int, ITTRecord] = {}
    for t in itts:  # a reused address: the later mapping is the one in memory
        latest[t.addr] = t
    for t in latest.values():
        pages.setdefault(t.addr & ~(PAGE_SIZE - 1), []).append(t)
    out = [col.page(p, ts) for p, ts in sorted(pages.items())]
    progress(f"colocation: {len(out)} ITT pages, {sum(len(p.objects) for p in out)} objects")
    return out, col.notes
