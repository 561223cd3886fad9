"""The guest's own view of its address space: /proc/kallsyms and /proc/kcore's program headers.

- :class:`Kallsyms` resolves a kernel pointer to ``symbol+offset`` (``[module]`` for a
  module's), with the real, KASLR-randomised addresses the guest printed as root.
- :class:`KernelMap` reads the ELF program headers at the start of /proc/kcore
  (fs/proc/kcore.c: kcore_update_ram, get_sparsemem_vmemmap_info): KCORE_RAM entries give
  the linear map (``p_vaddr`` and ``p_paddr``); each is followed by its vmemmap entry
  (``p_paddr`` = -1, ``p_memsz`` = the range's pages x sizeof(struct page), page-rounded),
  which gives the virtual address of the range's first ``struct page``. So no layout
  constant (PAGE_OFFSET, VMEMMAP_START, memstart_addr, KASLR) is assumed.
"""

from __future__ import annotations

import bisect
import re
import struct
from dataclasses import dataclass

PAGE = 4096
PT_LOAD = 1
NO_PADDR = (1 << 64) - 1
MODULE_SLACK = 1 << 16  # a pointer this far past a module's last symbol still names it

_LINE = re.compile(r"^([0-9a-f]{8,16}) (\w) (\S+)(?:\s+\[(\S+)\])?$")


@dataclass(frozen=True)
class Symbol:
    addr: int
    name: str
    module: str | None

    def label(self, ptr: int) -> str:
        mod = f"[{self.module}]" if self.module else ""
        return f"{self.name}{mod}+{ptr - self.addr:#x}"


class Kallsyms:
    """Sorted symbols; ``resolve`` only inside the kernel image or a module's span."""

    def __init__(self, text: str):
        syms: list[Symbol] = []
        for line in text.splitlines():
            m = _LINE.match(line.strip())
            if m is None:
                continue
            addr = int(m.group(1), 16)
            name = m.group(3)
            if addr == 0 or name.startswith("$") or name.startswith("__pi_"):
                continue  # mapping symbols ($x/$d) and position-independent aliases
            syms.append(Symbol(addr, name, m.group(4)))
        syms.sort(key=lambda s: (s.addr, s.name))
        self.symbols = syms
        self._addrs = [s.addr for s in syms]
        self.names = {s.name: s for s in syms if s.module is None}
        text_sym, end_sym = self.names.get("_text"), self.names.get("_end")
        self.image = (text_sym.addr, end_sym.addr) if text_sym and end_sym else None
        spans: dict[str, list[int]] = {}
        for s in syms:
            if s.module:
                span = spans.setdefault(s.module, [s.addr, s.addr])
                span[0], span[1] = min(span[0], s.addr), max(span[1], s.addr)
        self.modules = {m: (lo, hi + MODULE_SLACK) for m, (lo, hi) in spans.items()}

    def __len__(self) -> int:
        return len(self.symbols)

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def _inside(self, ptr: int) -> bool:
        if self.image and self.image[0] <= ptr < self.image[1]:
            return True
        return any(lo <= ptr < hi for lo, hi in self.modules.values())

    def resolve(self, ptr: int) -> Symbol | None:
        if not self._inside(ptr):
            return None
        i = bisect.bisect_right(self._addrs, ptr) - 1
        if i < 0:
            return None
        sym = self.symbols[i]
        if sym.module:  # the nearest symbol below must be of the module whose span holds ptr
            lo, hi = self.modules[sym.module]
            if not lo <= ptr < hi:
                return None
        return sym


@dataclass(frozen=True)
class Segment:
    vaddr: int
    paddr: int  # NO_PADDR for vmalloc, vmemmap, modules
    size: int


@dataclass(frozen=True)
class LinearRange:
    vaddr: int
    paddr: int
    size: int
    vmemmap: int | None  # virtual address of the struct page of ``paddr``'s page frame
    struct_page_size: int | None


class KernelMapError(ValueError):
    """The /proc/kcore header is not an ELF64 file with a linear map."""


def kcore_segments(head: bytes) -> list[Segment]:
    if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        raise KernelMapError("/proc/kcore: not a little-endian ELF64 header")
    (phoff,) = struct.unpack_from("<Q", head, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
    if phoff + phentsize * phnum > len(head):
        raise KernelMapError(
            f"/proc/kcore: {phnum} program headers do not fit in {len(head)} bytes"
        )
    out = []
    for i in range(phnum):
        p_type, _, _, vaddr, paddr, _, memsz, _ = struct.unpack_from(
            "<IIQQQQQQ", head, phoff + i * phentsize
        )
        if p_type == PT_LOAD:
            out.append(Segment(vaddr, paddr, memsz))
    return out


class KernelMap:
    """Linear map and vmemmap of the guest kernel, from /proc/kcore's program headers."""

    def __init__(self, head: bytes, kallsyms: Kallsyms | None = None):
        segs = kcore_segments(head)
        image = kallsyms.image if kallsyms else None
        mapped: list[LinearRange] = []
        for i, s in enumerate(segs):
            if s.paddr == NO_PADDR:
                continue
            vmemmap = sps = None
            pages = s.size // PAGE
            # kcore_ram_list adds each RAM range's vmemmap entry right after it
            nxt = segs[i + 1] if i + 1 < len(segs) else None
            if nxt is not None and nxt.paddr == NO_PADDR and pages:
                size = nxt.size // pages
                if size in (56, 64, 72, 80) and nxt.size - size * pages < PAGE:
                    vmemmap, sps = nxt.vaddr, size
            mapped.append(LinearRange(s.vaddr, s.paddr, s.size, vmemmap, sps))
        # The kernel image (KCORE_TEXT) also has a physical address; it translates image
        # addresses (phys) but is not the linear map (virt, struct_page).
        ranges = [r for r in mapped if r.vmemmap is not None] or [
            r for r in mapped if not (image and image[0] <= r.vaddr < image[1])
        ]
        if not ranges:
            raise KernelMapError("/proc/kcore: no linear-map (KCORE_RAM) segment")
        self.mapped = mapped
        self.ranges = ranges

    def phys(self, va: int) -> int | None:
        """The physical address of a linear-map or kernel-image address, else None."""
        for r in self.mapped:
            if r.vaddr <= va < r.vaddr + r.size:
                return r.paddr + va - r.vaddr
        return None

    def is_linear(self, va: int) -> bool:
        return any(r.vaddr <= va < r.vaddr + r.size for r in self.ranges)

    def virt(self, pa: int) -> int | None:
        for r in self.ranges:
            if r.paddr <= pa < r.paddr + r.size:
                return r.vaddr + pa - r.paddr
        return None

    def struct_page(self, pa: int) -> tuple[int, int] | None:
        """(virtual address, size) of the ``struct page`` of ``pa``'s frame, if known."""
        for r in self.ranges:
            if r.paddr <= pa < r.paddr + r.size and r.vmemmap is not None:
                assert r.struct_page_size is not None
                return r.vmemmap + (pa - r.paddr) // PAGE * r.struct_page_size, r.struct_page_size
        return None

    def pfn_of_struct_page(self, va: int) -> int | None:
        for r in self.ranges:
            if r.vmemmap is None or r.struct_page_size is None:
                continue
            n = r.size // PAGE
            if r.vmemmap <= va < r.vmemmap + n * r.struct_page_size:
                return r.paddr // PAGE + (va - r.vmemmap) // r.struct_page_size
        return None
