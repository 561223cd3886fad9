"""PhysicalPages: the sparse byte store."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sim.memory.physmem import PAGE_MASK, PAGE_SIZE, PhysicalPages, page_span, pfn


def test_page_constants_and_helpers() -> None:
    assert PAGE_SIZE == 4096
    assert 0x1234 & PAGE_MASK == 0x1000
    assert pfn(0x41000FFF) == 0x41000
    assert page_span(0x1FFF, 2) == range(1, 3)
    assert page_span(0x1000, PAGE_SIZE) == range(1, 2)
    assert page_span(0x1000, PAGE_SIZE + 1) == range(1, 3)
    assert len(page_span(0x1000, 0)) == 0


def test_untouched_memory_reads_zero_and_costs_nothing() -> None:
    mem = PhysicalPages()
    assert mem.read(0, 16) == bytes(16)
    assert mem.read(0x41000000 - 3, 3 * PAGE_SIZE) == bytes(3 * PAGE_SIZE)
    assert mem.read(123, 0) == b""
    assert mem.resident_pages == 0  # reads never allocate


def test_write_read_within_a_page() -> None:
    mem = PhysicalPages()
    mem.write(0x2010, b"hello")
    assert mem.read(0x2010, 5) == b"hello"
    assert mem.read(0x200F, 7) == b"\0hello\0"
    assert mem.resident_pages == 1


def test_write_crossing_page_boundaries_reads_back() -> None:
    mem = PhysicalPages()
    data = bytes(range(256)) * 40  # 10240 bytes: spans 4 pages from 0x3F00
    mem.write(0x3F00, data)
    assert mem.read(0x3F00, len(data)) == data
    # Pieces read back individually, including across each boundary.
    assert mem.read(0x3FFE, 4) == data[0xFE:0x102]
    assert mem.read(0x4FFF, 2) == data[0x10FF:0x1101]
    # Bytes either side untouched.
    assert mem.read(0x3EFF, 1) == b"\0"
    assert mem.read(0x3F00 + len(data), 1) == b"\0"
    assert mem.resident_pages == len(page_span(0x3F00, len(data))) == 4


def test_empty_write_allocates_nothing() -> None:
    mem = PhysicalPages()
    mem.write(0x5000, b"")
    assert mem.resident_pages == 0


def test_overwrite_keeps_neighbours() -> None:
    mem = PhysicalPages()
    mem.write(0x1000, b"A" * 32)
    mem.write(0x1008, b"BB")
    assert mem.read(0x1000, 12) == b"AAAAAAAABBAA"


def test_fill_poisons_whole_pages() -> None:
    mem = PhysicalPages()
    mem.write(0x1800, b"x" * PAGE_SIZE)  # pages 1 and 2
    mem.fill(2, 2, 0xAA)  # pages 2 and 3
    assert mem.read(0x1800, 0x800) == b"x" * 0x800  # page 1 untouched
    assert mem.read(0x2000, 2 * PAGE_SIZE) == b"\xaa" * (2 * PAGE_SIZE)
    assert mem.read(0x4000, 1) == b"\0"
    assert mem.resident_pages == 3


def test_fill_zero_wipes_and_releases() -> None:
    mem = PhysicalPages()
    mem.write(0x0FF0, b"s" * 0x20)  # pages 0 and 1
    mem.write(0x9000, b"keep")
    mem.fill(0, 2, 0)
    assert mem.read(0, 2 * PAGE_SIZE) == bytes(2 * PAGE_SIZE)
    assert mem.read(0x9000, 4) == b"keep"
    assert mem.resident_pages == 1
    # Filling untouched pages with zero is harmless.
    mem.fill(100, 3, 0)
    assert mem.resident_pages == 1


@settings(max_examples=60, deadline=None)
@given(
    writes=st.lists(
        st.tuples(st.integers(0, 6 * PAGE_SIZE), st.binary(min_size=0, max_size=2 * PAGE_SIZE)),
        max_size=8,
    )
)
def test_random_writes_match_bytearray(writes: list[tuple[int, bytes]]) -> None:
    size = 9 * PAGE_SIZE
    mem = PhysicalPages()
    ref = bytearray(size)
    touched: set[int] = set()
    for addr, data in writes:
        mem.write(addr, data)
        ref[addr : addr + len(data)] = data
        touched.update(page_span(addr, len(data)))
    assert mem.read(0, size) == bytes(ref)
    assert mem.resident_pages == len(touched)
