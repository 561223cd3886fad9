"""Colocation: /proc/kcore's map, kallsyms resolution, and ITT pages read from guest RAM.

The kcore header is a real Debian 7.3.4 guest's (tests/capture/data); the slab and pool
pages are built here in the 6.1 and 7.3 layouts of struct slab / kmem_cache, in a fake
RAM with a fake gva2gpa, so every field the reader takes is checked.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from sim.capture.colocation import LAYOUT_61, LAYOUT_73, ITTRecord, colocate, layout_for
from sim.capture.symbols import NO_PADDR, Kallsyms, KernelMap, KernelMapError, kcore_segments

DATA = Path(__file__).parent / "data"
PAGE = 4096
RAM = 0x4000_0000
LINEAR = 0xFFFF_0000_0000_0000
VMEMMAP = 0xFFFF_FC00_0000_0000 + (RAM >> 12) * 64  # struct page of RAM's first frame
TEXT_VA, TEXT_PA = 0xFFFF_8000_0800_0000, 0x4020_0000
STRUCT_PAGES_PA = 0x40F0_0000  # where the fake vmemmap's pages live

KALLSYMS = """\
ffff800008000000 T _text
ffff800008000000 t __pi__text
ffff800008400000 D its_msi_irq_chip
ffff800008400100 t handle_fasteoi_irq
ffff800008500000 d itt_pool
ffff800009000000 B _end
ffff800001000000 t $x\t[virtio_net]
ffff800001000010 t virtio_net_driver_exit\t[virtio_net]
"""


def elf_kcore(segments: list[tuple[int, int, int]]) -> bytes:
    """An ELF64 header and PT_NOTE + PT_LOAD program headers, as /proc/kcore starts."""
    phnum = len(segments) + 1
    head = bytearray(64)
    head[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", head, 0x20, 64)
    struct.pack_into("<HHH", head, 0x36, 56, phnum, 0)
    ph = struct.pack("<IIQQQQQQ", 4, 0, 0, 0, 0, 0, 0, 0)
    for va, pa, size in segments:
        ph += struct.pack("<IIQQQQQQ", 1, 7, 0, va, pa, size, size, PAGE)
    return bytes(head) + ph


class FakeRAM:
    def __init__(self, size: int = 16 << 20):
        self.mem = bytearray(size)
        self.reads = 0

    def put(self, pa: int, data: bytes) -> None:
        self.mem[pa - RAM : pa - RAM + len(data)] = data

    def put_words(self, pa: int, *words: int) -> None:
        self.put(pa, struct.pack(f"<{len(words)}Q", *words))

    def read(self, pa: int, size: int) -> bytes:
        self.reads += 1
        return bytes(self.mem[pa - RAM : pa - RAM + size])

    def gva2gpa(self, va: int) -> int | None:
        if VMEMMAP <= va < VMEMMAP + (16 << 20) // PAGE * 64:
            return STRUCT_PAGES_PA + va - VMEMMAP
        if TEXT_VA <= va < TEXT_VA + (16 << 20):
            return TEXT_PA + va - TEXT_VA
        return None


def kernel_map(syms: Kallsyms) -> KernelMap:
    size = 16 << 20
    return KernelMap(
        elf_kcore(
            [
                (TEXT_VA, TEXT_PA, 0x100_0000),
                (0xFFFF_8000_8000_0000, NO_PADDR, 0x1000_0000),  # vmalloc
                (LINEAR, RAM, size),
                (VMEMMAP, NO_PADDR, size // PAGE * 64),
            ]
        ),
        syms,
    )


def struct_page_pa(pa: int) -> int:
    return STRUCT_PAGES_PA + (pa - RAM) // PAGE * 64


def struct_page_va(pa: int) -> int:
    return VMEMMAP + (pa - RAM) // PAGE * 64


# --- kallsyms and kcore ------------------------------------------------------------------


def test_kallsyms_resolves_image_and_module_pointers_only():
    syms = Kallsyms(KALLSYMS)
    assert syms.resolve(0xFFFF800008400008).label(0xFFFF800008400008) == "its_msi_irq_chip+0x8"
    s = syms.resolve(0xFFFF800001001E24)
    assert s.label(0xFFFF800001001E24) == "virtio_net_driver_exit[virtio_net]+0x1e14"
    assert syms.resolve(0xFFFF800001000010 + (1 << 16) + 0x10) is None  # past the module
    assert syms.resolve(0xFFFF800009000008) is None  # past _end
    assert syms.resolve(LINEAR + 0x1000) is None  # heap
    assert "itt_pool" in syms and "$x" not in {x.name for x in syms.symbols}
    assert syms.resolve(0xFFFF800008000004).name == "_text"  # not the __pi_ alias


def test_real_73_kcore_header_gives_linear_map_and_vmemmap():
    head = bytes.fromhex((DATA / "linux-7.3.4.kcore-head.hex").read_text().strip())
    kmap = KernelMap(head)
    assert [(r.vaddr, r.paddr, r.size) for r in kmap.ranges] == [
        (0xFFF0000000000000, 0x40000000, 1 << 30)
    ]
    assert kmap.ranges[0].struct_page_size == 64
    # the struct page the manual 7.3.4 capture found for ITT page 0x4453b000
    # (sim/data/real-guests/linux-7.3.4-qemu-virt.meta.json: 0xffffc1ffc0114ec0)
    assert kmap.struct_page(0x4453B000) == (0xFFFFC1FFC0114EC0, 64)
    assert kmap.pfn_of_struct_page(0xFFFFC1FFC0114EC0) == 0x4453B
    assert kmap.phys(0xFFF000000453B100) == 0x4453B100 and kmap.virt(0x4453B100) == (
        0xFFF000000453B100
    )
    assert kmap.phys(0xFFFF800000000000) is None  # vmalloc: no physical address


def test_a_bad_kcore_header_is_an_error():
    with pytest.raises(KernelMapError, match="not a little-endian ELF64"):
        kcore_segments(b"\0" * 64)
    with pytest.raises(KernelMapError, match="no linear-map"):
        KernelMap(elf_kcore([(0xFFFF800080000000, NO_PADDR, 1 << 20)]))


def test_layout_by_version():
    assert layout_for("6.1.0-57-arm64") is LAYOUT_61
    assert layout_for("7.3.4+deb13-arm64") is LAYOUT_73
    assert layout_for("6.19.0") is LAYOUT_61


# --- a 6.1 kmalloc-512 slab -------------------------------------------------------------

SLAB = 0x4010_0000  # order-1 slab: objects 0-7 on the first page, 8-15 on the second
CACHE_PA = 0x4008_0000
NAME_VA = TEXT_VA + 0x1000


def slab_61(ram: FakeRAM, inuse: int = 15) -> list[ITTRecord]:
    ram.put(TEXT_PA + 0x1000, b"kmalloc-512\0")
    cache = bytearray(256)
    struct.pack_into("<II", cache, 24, 512, 512)  # size, object_size
    struct.pack_into("<I", cache, 52, 1 << 16 | 16)  # oo: order 1, 16 objects
    struct.pack_into("<I", cache, 84, 512)  # align
    struct.pack_into("<Q", cache, 96, NAME_VA)
    ram.put(CACHE_PA, bytes(cache))
    head = struct_page_va(SLAB)
    counters = 16 << 16 | inuse
    ram.put_words(
        struct_page_pa(SLAB), 1 << 16 | 1 << 9, 0, 0, LINEAR + CACHE_PA - RAM, 0, counters
    )
    ram.put_words(struct_page_pa(SLAB + PAGE), 0, head | 1)  # tail page
    obj = lambda i: SLAB + 512 * i  # noqa: E731
    ram.put_words(obj(8), LINEAR + 0x1234, 0xFFFF800008400000, 0xFFFF800008400100)  # irq_desc
    ram.put_words(obj(9), 0x5A5A5A5A5A5A5A5A)  # one word: SLUB's freelist pointer
    ram.put_words(obj(10) + 8 * 5, 0x0000000100002000)  # the ITT: an entry
    ram.put_words(obj(12), 0, 0, 0, 0, 0, 0, 0xFFFF800001001E24)  # into virtio_net
    ram.put_words(obj(13), 7, 8)  # two plain words
    ram.put_words(obj(14), LINEAR + obj(1) - RAM, LINEAR + obj(3) + 8 - RAM)  # into this slab
    return [ITTRecord(0x8, obj(10), 512, True)]


def test_61_slab_page_cache_objects_and_neighbours():
    ram = FakeRAM()
    syms = Kallsyms(KALLSYMS)
    itts = slab_61(ram)
    pages, notes = colocate(itts, ram, kernel_map(syms), syms, LAYOUT_61)
    assert notes == []
    (page,) = pages
    assert page.page == SLAB + PAGE and page.itts == [SLAB + 512 * 10]
    a = page.allocator
    assert (a.kind, a.cache, a.object_size, a.slab_addr, a.slab_order) == (
        "slab", "kmalloc-512", 512, SLAB, 1
    )  # fmt: skip
    assert (a.objects_per_slab, a.objects_per_page, a.align) == (16, 8, 512)
    objs = {o.addr - page.page: o for o in page.objects}
    assert sorted(objs) == [512 * i for i in range(8)]
    assert objs[0].what == "irq descriptor (alloc_desc)" and objs[0].kind == "kernel"
    assert objs[0].symbols == ["handle_fasteoi_irq", "its_msi_irq_chip"]
    assert (objs[512].kind, objs[512].live, objs[512].nonzero_qwords) == ("free", False, 1)
    assert (objs[1024].kind, objs[1024].what, objs[1024].nonzero_qwords) == (
        "itt", "ITT of DeviceID 0x8", 1
    )  # fmt: skip
    assert objs[1536].zero and objs[1536].what == "zeroed allocation"
    assert objs[2048].what == "virtio-net driver data"
    assert objs[2560].what == "kernel object (pointers into the heap only)"
    assert objs[3072].what == "kernel object (points into kmalloc-512)"


def test_61_full_slab_has_no_free_objects_and_unmapped_itts_are_marked():
    ram = FakeRAM()
    syms = Kallsyms(KALLSYMS)
    itts = slab_61(ram, inuse=16)
    itts = [ITTRecord(0x20, itts[0].addr, 512, False)]
    (page,), _ = colocate(itts, ram, kernel_map(syms), syms, LAYOUT_61)
    kinds = [o.kind for o in page.objects]
    assert "free" not in kinds
    itt = next(o for o in page.objects if o.kind == "itt")
    assert itt.what == "ITT of DeviceID 0x20 (unmapped, freed)" and not itt.live


def test_a_slab_cache_pointer_that_reads_as_nothing_falls_back_to_pages():
    ram = FakeRAM()
    syms = Kallsyms(KALLSYMS.replace("itt_pool", "other_pool"))
    itts = slab_61(ram)
    ram.put(CACHE_PA, bytes(256))  # size 0: not a kmem_cache
    (page,), notes = colocate(itts, ram, kernel_map(syms), syms, LAYOUT_61)
    assert page.allocator.kind == "pages"
    assert any("does not read as a kmem_cache" in n for n in notes)


# --- 7.3: the itt_pool page, and a 7.3-layout slab --------------------------------------

POOL = 0x4020_0000 + 0x10_0000


def test_73_pool_page_itts_and_unused_space():
    ram = FakeRAM()
    syms = Kallsyms(KALLSYMS)
    ram.put_words(struct_page_pa(POOL), 0x1FFFF << 40, 0, 0, 0, 0, 0, 0x1FFFFFFFF)  # no type
    ram.put_words(POOL + 0x10, 0x100002001)  # an ITE
    ram.put_words(POOL + 0x900, 0xDEAD)  # something in the unused part
    itts = [
        ITTRecord(0x10, POOL, 256, True),
        ITTRecord(0x8, POOL + 0x100, 256, True),
        ITTRecord(0x20, POOL + 0x300, 1536, True),  # 128 events x 12 bytes (QEMU's ITEs)
    ]
    (page,), notes = colocate(itts, ram, kernel_map(syms), syms, LAYOUT_73)
    assert notes == []
    assert page.allocator.kind == "pool" and page.allocator.cache == "itt_pool"
    layout = [(o.addr - POOL, o.size, o.kind) for o in page.objects]
    assert layout == [
        (0, 256, "itt"),
        (0x100, 256, "itt"),
        (0x200, 256, "free"),
        (0x300, 1536, "itt"),
        (0x900, 0x700, "free"),
    ]
    assert page.objects[2].zero and page.objects[2].what == "unused pool space"
    assert page.objects[4].what == "unused pool space (1 non-zero words)"


def test_73_slab_layout_reads_page_type_and_word_1_cache():
    ram = FakeRAM()
    syms = Kallsyms(KALLSYMS)
    ram.put(TEXT_PA + 0x1000, b"kmalloc-256\0")
    cache = bytearray(256)
    struct.pack_into("<II", cache, 24, 256, 256)
    struct.pack_into("<I", cache, 48, 16)  # oo: order 0, 16 objects
    struct.pack_into("<I", cache, 76, 256)
    struct.pack_into("<Q", cache, 88, NAME_VA)
    ram.put(CACHE_PA, bytes(cache))
    slab = 0x4030_0000
    page_type = 0xF5 << 24  # PGTY_slab
    ram.put_words(
        struct_page_pa(slab),
        0,
        LINEAR + CACHE_PA - RAM,
        0,
        0,
        0,
        16 << 16 | 16,
        1 << 32 | page_type,
    )
    (page,), notes = colocate(
        [ITTRecord(8, slab + 0x300, 256, True)], ram, kernel_map(syms), syms, LAYOUT_73
    )
    assert notes == []
    assert (page.allocator.kind, page.allocator.cache, page.allocator.objects_per_slab) == (
        "slab", "kmalloc-256", 16
    )  # fmt: skip
    assert [o.kind for o in page.objects].count("itt") == 1 and len(page.objects) == 16
    # the same words read with 6.1's layout: flags bit 9 clear, so not a slab
    (page61,), _ = colocate(
        [ITTRecord(8, slab + 0x300, 256, True)], ram, kernel_map(syms), syms, LAYOUT_61
    )
    assert page61.allocator.kind == "pool"
