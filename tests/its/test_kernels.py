"""The vITS model per kernel: Debian 6.1.192 and 7.3.4, where their vgic-its.c differ.

Each test names the kernel function it follows (linux-source-6.1 / linux-source-7.3,
arch/arm64/kvm/vgic/vgic-its.c unless said otherwise). Expected entries are computed by
hand from the ABI rev 0 layout, never from ``sim.its.tables``:

    DTE  | 63 V | 62..49 next | 48..5 ITT_addr >> 8 | 4..0 Size |
    ITE  | 63..48 next | 47..16 pINTID | 15..0 ICID |
    CTE  | 63 V | 47..16 RDbase | 15..0 ICID |
"""

from __future__ import annotations

import time

import pytest

from sim.its import (
    DISCARD,
    INT,
    INVALL,
    MAPC,
    MAPD,
    MAPTI,
    MOVALL,
    ITSError,
    KernelGen,
    VirtualITS,
)
from sim.its import regs as r
from sim.its.vits import QEMU_VIRT_RAM_BASE

KERNELS = ["6.1", "7.3"]
RAM = QEMU_VIRT_RAM_BASE
L2_IDS = 0x10000 // 8
KVM = "vm.kvm-vits"


def dte(next_: int, itt: int, bits: int) -> int:
    return 1 << 63 | next_ << 49 | (itt >> 8) << 5 | (bits - 1)


def ite(next_: int, intid: int, icid: int) -> int:
    return next_ << 48 | intid << 16 | icid


def cte(target: int, icid: int) -> int:
    return 1 << 63 | target << 16 | icid


def u64(its: VirtualITS, gpa: int) -> int:
    return int.from_bytes(its.read_guest(gpa, 8), "little")


def put(its: VirtualITS, gpa: int, value: int) -> None:
    its.write_guest(gpa, value.to_bytes(8, "little"))


def ok(its: VirtualITS, *cmds) -> None:
    for cmd in cmds:
        assert its.execute(cmd.encode()) is None, (cmd, its.command_log[-1])


def kvm_reads(its: VirtualITS, start: int, size: int) -> list[int]:
    """Record the addresses KVM reads in ``[start, start + size)`` from now on."""
    seen: list[int] = []

    def watch(who, record) -> None:
        if who.name == KVM and not record.write and start <= record.addr < start + size:
            seen.append(record.addr)

    its.memory.watch(watch)
    return seen


def test_the_default_kernel_is_7_3_and_an_unknown_one_is_refused():
    assert VirtualITS(probe=False).kernel is KernelGen.V7_3
    assert VirtualITS(probe=False, kernel="6.1").kernel is KernelGen.V6_1
    with pytest.raises(ValueError, match=r"kernel: expected one of '6.1', '7.3', got '6.6'"):
        VirtualITS(probe=False, kernel="6.6")


# ---- a second MAPTI onto a mapped LPI: vgic_its_cmd_handle_mapi / vgic_its_map_lpi -----


def test_7_3_fails_a_second_mapti_onto_a_mapped_lpi_and_frees_what_it_made():
    its = VirtualITS(kernel="7.3")
    itt = its.layout.free_base
    ok(its, MAPD(1, 3, itt, True), MAPTI(1, 0, 8200, 1))
    # A pending bit the new ITE would consume if it reached vgic_add_lpi's memory reads.
    pend = its.layout.pend_tables[2] + 8200 // 8
    its.write_guest(pend, bytes([1 << (8200 % 8)]))
    creadr = its.mmio_read(r.GITS_CREADR)
    assert its.execute(MAPTI(1, 1, 8200, 9).encode()) is ITSError.EEXIST
    assert its.command_log[-1].error is ITSError.EEXIST
    assert its.mmio_read(r.GITS_CREADR) == creadr + 32  # skipped, never stalls
    assert 1 not in its.devices[1].ites
    assert 9 not in its.collections  # the collection MAPTI created is freed with the ITE
    assert its.translate(1, 0) == (8200, 1)  # the first ITE keeps the LPI and its target
    assert its.lpis[8200].refcount == 1
    assert its.read_guest(pend, 1) == bytes([1 << (8200 % 8)])  # no guest access made
    # MAPI names the LPI by its EventID: the same rule.
    ok(its, MAPD(2, 15, itt + 0x1000, True), MAPTI(2, 8300, 8300, 0))
    assert its.execute(MAPTI(1, 2, 8300, 0).encode()) is ITSError.EEXIST


def test_7_3_maps_the_lpi_again_once_its_ite_is_discarded():
    its = VirtualITS(kernel="7.3")
    ok(its, MAPD(1, 3, its.layout.free_base, True), MAPTI(1, 0, 8200, 1), DISCARD(1, 0))
    ok(its, MAPTI(1, 1, 8200, 2))
    assert its.translate(1, 1) == (8200, 2)


def test_6_1_shares_the_lpi_between_both_ites():
    its = VirtualITS(kernel="6.1")
    ok(its, MAPD(1, 3, its.layout.free_base, True), MAPTI(1, 0, 8200, 1), MAPTI(1, 1, 8200, 9))
    assert its.devices[1].ites[1].lpi is its.devices[1].ites[0].lpi
    assert its.lpis[8200].refcount == 2
    assert 9 in its.collections and not its.collections[9].mapped
    assert its.translate(1, 0) == (8200, 1)
    assert its.translate(1, 1) is None  # its collection is unmapped


def _save_two_ites_on_one_lpi() -> tuple[VirtualITS, int]:
    src = VirtualITS(kernel="6.1")
    itt = src.layout.free_base
    ok(src, MAPD(1, 3, itt, True), MAPTI(1, 0, 8200, 1), MAPTI(1, 3, 8200, 2))
    assert src.save_tables() is None
    assert u64(src, itt) == ite(3, 8200, 1)
    assert u64(src, itt + 3 * 8) == ite(0, 8200, 2)
    return src, itt


@pytest.mark.parametrize("kernel", KERNELS)
def test_restoring_two_ites_on_one_lpi(kernel):
    """vgic_its_restore_ite: 7.3 drops the second ITE ("as MAPTI does") and goes on; 6.1
    shares the LPI. Neither fails the restore."""
    src, itt = _save_two_ites_on_one_lpi()
    dst = VirtualITS(probe=False, kernel=kernel)
    dst.write_guest(RAM, src.read_guest(RAM, 16 << 20))
    dst.write_guest(itt, src.read_guest(itt, 0x100))
    dst.set_regs(src.get_regs())
    assert dst.restore_tables() is None
    dst.mmio_write(r.GITS_CTLR, 1)
    if kernel == "7.3":
        assert sorted(dst.devices[1].ites) == [0]
    else:
        assert sorted(dst.devices[1].ites) == [0, 3]
        assert dst.lpis[8200].refcount == 2
    assert dst.translate(1, 0) == (8200, 1)


# ---- SAVE_TABLES with an ITE whose collection MAPC V=0 freed: vgic_its_save_ite ---------


@pytest.mark.parametrize("kernel", KERNELS)
def test_save_writes_a_zero_ite_for_a_collection_less_ite(kernel):
    """Both kernels save and write zero for the ITE; compute_next_eventid_offset skips it
    on 7.3 only, so 6.1's event 0 points at the zero entry."""
    its = VirtualITS(kernel=kernel)
    itt = its.layout.free_base
    ok(its, MAPD(1, 3, itt, True), MAPTI(1, 0, 8200, 1), MAPTI(1, 1, 8201, 2))
    ok(its, MAPTI(1, 2, 8202, 1), MAPTI(1, 5, 8205, 2), MAPC(2, 0, False))
    put(its, itt + 8, 0x5A5A5A5A5A5A5A5A)  # KVM writes the zero entry itself
    assert its.save_tables() is None
    expected = {
        "7.3": [ite(2, 8200, 1), 0, ite(0, 8202, 1), 0],
        "6.1": [ite(1, 8200, 1), 0, ite(3, 8202, 1), 0],
    }[kernel]
    assert [u64(its, itt + ev * 8) for ev in (0, 1, 2, 5)] == expected
    # The collection table was written too: CTEs in list order, then a zero entry.
    ct = its.collection_table_gpa
    assert [u64(its, ct + 8 * i) for i in range(4)] == [cte(0, 0), cte(1, 1), cte(3, 3), 0]
    # A restore reads the zero entries as invalid: events 0 and 2 come back.
    dst = VirtualITS(probe=False, kernel=kernel)
    dst.write_guest(RAM, its.read_guest(RAM, 16 << 20))
    dst.write_guest(itt, its.read_guest(itt, 0x100))
    dst.set_regs(its.get_regs())
    assert dst.restore_tables() is None
    assert sorted(dst.devices[1].ites) == [0, 2]


# ---- SAVE_TABLES with a device vgic_its_check_id() rejects: vgic_its_save_device_tables --


@pytest.mark.parametrize("kernel", KERNELS)
def test_save_with_a_device_whose_level_1_entry_the_guest_cleared(kernel):
    its = VirtualITS(kernel=kernel, two_level_device_table=True)
    lay = its.layout
    a, b, c = 8000, L2_IDS + 3, 2 * L2_IDS + 5  # in level-1 entries 0, 1 and 2
    itts = {dev: lay.free_base + n * 0x10000 for n, dev in enumerate((a, b, c))}
    for n, dev in enumerate((a, b, c)):
        ok(its, MAPD(dev, 0, itts[dev], True), MAPTI(dev, 0, 8200 + n, 1))
    put(its, lay.device_table + 8, 0)  # the guest clears level-1 entry 1 after MAPD
    ct = its.collection_table_gpa
    put(its, ct, 0x5A5A5A5A5A5A5A5A)
    err = its.save_tables()
    dte_a = lay.device_l2_pages[0] + (a % L2_IDS) * 8
    dte_c = lay.device_l2_pages[2] + (c % L2_IDS) * 8
    assert u64(its, itts[b]) == 0  # B's ITT is never written
    if kernel == "7.3":
        assert err is None  # "Don't fail a save that userspace must be able to issue."
        assert u64(its, dte_a) == dte(c - a, itts[a], 1)  # next skips B
        assert u64(its, itts[c]) == ite(0, 8202, 1)
        assert u64(its, dte_c) == dte(0, itts[c], 1)
        assert u64(its, ct) == cte(0, 0)
    else:
        assert err is ITSError.EINVAL
        assert u64(its, dte_a) == dte(b - a, itts[a], 1)  # written before B failed
        assert u64(its, itts[c]) == 0 and u64(its, dte_c) == 0
        assert u64(its, ct) == 0x5A5A5A5A5A5A5A5A  # the collection table is not written


# ---- MAPC V=0 with an out-of-range target: vgic_its_cmd_handle_mapc --------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_mapc_unmap_with_an_out_of_range_target(kernel):
    its = VirtualITS(nr_vcpus=4, kernel=kernel)
    ok(its, MAPD(1, 3, its.layout.free_base, True), MAPTI(1, 0, 8200, 1))
    err = its.execute(MAPC(1, 4, False).encode())
    if kernel == "6.1":  # target_addr >= online_vcpus is checked before V
        assert err is ITSError.E_ITS_MAPC_PROCNUM_OOR
        assert its.collections[1].target_addr == 1
        assert its.translate(1, 0) == (8200, 1)
    else:
        assert err is None
        assert 1 not in its.collections
        assert its.devices[1].ites[0].collection is None
    # V=1 with that target fails on both, changing nothing.
    before = its.state()
    assert its.execute(MAPC(2, 4, True).encode()) is ITSError.E_ITS_MAPC_PROCNUM_OOR
    assert its.state() == before


# ---- RESTORE_TABLES re-reads every entry: scan_its_table --------------------------------

PROP, PEND0, PEND1, DT, CT, CMDQ = (RAM + n * r.SZ_64K for n in range(1, 7))


def bare_destination(kernel: str) -> VirtualITS:
    """A migration destination programmed by hand: 2 vCPUs, flat 64 KiB tables."""
    its = VirtualITS(probe=False, nr_vcpus=2, kernel=kernel)
    its.write_guest(PROP, bytes([0xA3]) * 0x2000)
    for v, pend in enumerate((PEND0, PEND1)):
        its.write_propbaser(v, r.make_propbaser(PROP, 16))
        its.write_pendbaser(v, r.make_pendbaser(pend, ptz=False))
        its.set_lpis_enabled(v, True)
    its.mmio_write(r.GITS_BASER0, r.make_baser(DT, r.SZ_64K))
    its.mmio_write(r.GITS_BASER1, r.make_baser(CT, r.SZ_64K))
    its.mmio_write(r.GITS_CBASER, r.make_cbaser(CMDQ, r.SZ_64K))
    return its


@pytest.mark.parametrize("kernel", KERNELS)
def test_restore_sees_the_pending_bit_it_cleared_inside_an_itt(kernel):
    """The ITT lies over vCPU 0's pending table. Restoring event 0 maps LPI 8192, whose
    pending bit (PEND0 + 1024, bit 0) is the low ICID bit of event 128's entry:
    vgic_v3_lpi_sync_pending_status() clears it, and scan_its_table() then reads event 128
    with ICID 0, which no collection has: -EINVAL."""
    its = bare_destination(kernel)
    put(its, CT, cte(0, 1))
    put(its, DT, dte(0, PEND0, 8))
    put(its, PEND0, ite(128, 8192, 1))
    put(its, PEND0 + 128 * 8, ite(0, 8200, 1))
    assert its.restore_tables() is ITSError.EINVAL
    assert u64(its, PEND0 + 128 * 8) == ite(0, 8200, 0)  # KVM's write
    assert its.state() == ((), (), ())


# ---- RESTORE_TABLES with a DTE of more than 16 EventID bits: vgic_its_restore_dte -------


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bits", [17, 28, 29, 32])
def test_restore_refuses_a_dte_wider_than_16_eventid_bits(kernel, bits):
    """ "Mimic the MAPD behaviour and reject invalid EID bits": -EINVAL on both kernels,
    before any ITT is read (so scan_its_table's int size never wraps)."""
    its = bare_destination(kernel)
    itt = RAM + (32 << 20)
    put(its, DT + 8, dte(0, itt, bits))
    put(its, itt, ite(0, 8192, 0))
    reads = kvm_reads(its, itt, 1 << 20)
    start = time.process_time()
    assert its.restore_tables() is ITSError.EINVAL
    assert time.process_time() - start < 5.0  # bounded: nothing is walked
    assert reads == []
    assert its.devices == {}


# ---- registers as KVM returns them -------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_bare_its_reads_kvm_initial_values(kernel):
    """vgic_its_create: INITIAL_BASER_VALUE (RaWb, outer same as inner, inner shareable,
    64K pages) | type, then vgic_its_commit_v0's entry size; INITIAL_PROPBASER_VALUE;
    vgic_v3_enable's INITIAL_PENDBASER_VALUE. GITS_TYPER and GITS_IIDR are what real KVM
    returned on a 2-vCPU VM (real-software.md)."""
    its = VirtualITS(probe=False, nr_vcpus=2, kernel=kernel)
    assert its.mmio_read(r.GITS_BASER0) == 0x1907_0000_0000_0600
    assert its.mmio_read(r.GITS_BASER1) == 0x1C07_0000_0000_0600
    assert [its.mmio_read(r.GITS_BASER0 + 8 * n) for n in range(2, 8)] == [0] * 6
    assert its.mmio_read(r.GITS_CBASER) == 0
    assert its.mmio_read(r.GITS_TYPER) == 0x1EF71
    assert its.mmio_read(r.GITS_IIDR) == 0x4B00043B
    assert its.mmio_read(r.GITS_CTLR) == 0x8000_0000  # quiescent, disabled
    assert its.redist_read(0, "GICR_PROPBASER") == 0x580
    assert its.redist_read(1, "GICR_PENDBASER") == 0x580
    assert its.redist_read(0, "GICR_CTLR") == 0x6  # IR | CES (implementation rev 3)
    its.set_lpis_enabled(0, True)
    assert its.redist_read(0, "GICR_CTLR") == 0x7


def test_baser_and_cbaser_writes_are_sanitised():
    """vgic_sanitise_its_baser / vgic_sanitise_its_cbaser and GITS_BASER_RO_MASK."""
    its = VirtualITS(probe=False)
    addr = RAM + (1 << 20)
    raw = (
        1 << 63  # Valid
        | 1 << 59  # inner nC -> RaWb
        | 7 << 56  # Type (RO) -> device
        | 5 << 53  # outer WaWb -> SameAsInner
        | 0x1F << 48  # Entry_Size (RO) -> 8 bytes
        | addr
        | 2 << 10  # outer shareable -> inner shareable
        | 0 << 8  # 4K pages -> 64K
        | 3  # 4 pages
    )
    its.mmio_write(r.GITS_BASER0, raw)
    assert its.mmio_read(r.GITS_BASER0) == (
        1 << 63 | 3 << 59 | 1 << 56 | 7 << 48 | addr | 1 << 10 | 2 << 8 | 3
    )
    its.mmio_write(r.GITS_BASER1, raw | r.GITS_BASER_INDIRECT)
    assert its.mmio_read(r.GITS_BASER1) == (
        1 << 63 | 3 << 59 | 4 << 56 | 7 << 48 | addr | 1 << 10 | 2 << 8 | 3
    )
    # CBASER: inner nCnB -> RaWb, outer nC kept, outer shareable -> inner, [15:12] cleared.
    its.mmio_write(r.GITS_CBASER, 1 << 63 | 0 << 59 | 1 << 53 | addr | 0xF000 | 2 << 10 | 0xF)
    assert its.mmio_read(r.GITS_CBASER) == 1 << 63 | 3 << 59 | 1 << 53 | addr | 1 << 10 | 0xF


def test_propbaser_and_pendbaser_writes_are_sanitised():
    """vgic_sanitise_propbaser / vgic_sanitise_pendbaser (vgic-mmio-v3.c): RES0 bits
    cleared, attributes sanitised; PENDBASER.PTZ is kept but reads as 0."""
    its = VirtualITS(probe=False)
    res0 = 1 << 63 | 1 << 52 | 1 << 5
    its.write_propbaser(0, res0 | 7 << 56 | PROP | 2 << 10 | 1 << 7 | 15)
    assert its.redist_read(0, "GICR_PROPBASER") == PROP | 1 << 10 | 3 << 7 | 15
    res0 = 1 << 63 | 1 << 60 | 1 << 53 | 0xF000 | 0x7F
    its.write_pendbaser(0, res0 | r.GICR_PENDBASER_PTZ | 1 << 56 | PEND0 | 1 << 10 | 7 << 7)
    assert its.redist_read(0, "GICR_PENDBASER") == 1 << 56 | PEND0 | 1 << 10 | 7 << 7
    assert its.vcpus[0].pendbaser & r.GICR_PENDBASER_PTZ  # kept for vgic_enable_lpis


@pytest.mark.parametrize("two_level", [False, True])
def test_the_linux_probe_writes_linux_memory_attributes(two_level):
    """its_alloc_tables() asks for RaWaWb inner shareable (both kernels) and KVM keeps
    them; its_probe_one() does the same for CBASER, its_cpu_init_lpis() for the
    redistributors (no PTZ)."""
    its = VirtualITS(two_level_device_table=two_level)
    lay = its.layout
    rawawb_inner = 7 << 59 | 1 << 10
    pages = lay.device_table_size // r.SZ_64K - 1
    indirect = r.GITS_BASER_INDIRECT if two_level else 0
    assert its.mmio_read(r.GITS_BASER0) == (
        1 << 63 | indirect | rawawb_inner | 1 << 56 | 7 << 48 | lay.device_table | 2 << 8 | pages
    )
    assert its.mmio_read(r.GITS_BASER1) == (
        1 << 63 | rawawb_inner | 4 << 56 | 7 << 48 | lay.collection_table | 2 << 8 | 7
    )
    assert its.mmio_read(r.GITS_CBASER) == 1 << 63 | rawawb_inner | lay.cmdq | 0xF
    assert its.redist_read(1, "GICR_PROPBASER") == lay.prop_table | 1 << 10 | 7 << 7 | 15
    assert its.redist_read(1, "GICR_PENDBASER") == lay.pend_tables[1] | 1 << 10 | 7 << 7
    assert not its.vcpus[1].pendbaser & r.GICR_PENDBASER_PTZ


@pytest.mark.parametrize("kernel", KERNELS)
def test_rewriting_a_baser_with_another_valid_value(kernel):
    """vgic_mmio_write_its_baser: 7.3 frees the device list when the value changes, 6.1
    only when Valid is cleared; an unchanged value frees nothing on either."""
    its = VirtualITS(kernel=kernel)
    ok(its, MAPD(1, 3, its.layout.free_base, True), MAPTI(1, 0, 8200, 1))
    its.mmio_write(r.GITS_CTLR, 0)
    baser0 = its.mmio_read(r.GITS_BASER0)
    its.mmio_write(r.GITS_BASER0, baser0)
    assert 1 in its.devices
    other_attrs = baser0 & ~(7 << 59) | 3 << 59  # RaWb instead of RaWaWb
    its.mmio_write(r.GITS_BASER0, other_attrs)
    assert its.mmio_read(r.GITS_BASER0) == other_attrs
    assert (1 in its.devices) is (kernel == "6.1")
    its.mmio_write(r.GITS_BASER0, other_attrs & ~r.GITS_BASER_VALID)
    assert its.devices == {}


# ---- LPI walks: vgic_its_invall, its_sync_lpi_pending_table, save_pending_tables --------


def _three_lpis(kernel: str, **kw) -> VirtualITS:
    """LPIs created in the order 8208 (vCPU 0), 8192 (vCPU 1), 8200 (vCPU 0)."""
    its = VirtualITS(nr_vcpus=2, kernel=kernel, **kw)
    ok(its, MAPD(1, 3, its.layout.free_base, True))
    ok(its, MAPTI(1, 0, 8208, 0), MAPTI(1, 1, 8192, 1), MAPTI(1, 2, 8200, 0))
    return its


@pytest.mark.parametrize("kernel", KERNELS)
def test_invall_reads_the_property_bytes_its_kernel_reads(kernel):
    its = _three_lpis(kernel)
    prop = its.layout.prop_table
    reads = kvm_reads(its, prop, r.SZ_64K)
    ok(its, INVALL(0))
    offsets = [a - prop + r.GIC_LPI_OFFSET for a in reads]
    assert offsets == {"7.3": [8192, 8200, 8208], "6.1": [8208, 8200]}[kernel]


@pytest.mark.parametrize("kernel", KERNELS)
def test_enabling_lpis_reads_the_pending_bytes_its_kernel_reads(kernel):
    its = _three_lpis(kernel, lpis_enabled=False)
    pend0 = its.layout.pend_tables[0]
    its.write_guest(pend0 + 8200 // 8, b"\x01")  # 8200 pending in vCPU 0's table
    its.write_guest(pend0 + 8192 // 8, b"\x01")  # 8192 targets vCPU 1: not taken
    reads = kvm_reads(its, pend0, r.SZ_64K)
    its.set_lpis_enabled(0, True)
    assert [a - pend0 for a in reads] == {"7.3": [1024, 1025, 1026], "6.1": [1026, 1025]}[kernel]
    assert [its.lpis[i].pending for i in (8192, 8200, 8208)] == [False, True, False]


@pytest.mark.parametrize("kernel", KERNELS)
def test_save_pending_tables_walks_the_lpis_in_its_kernel_order(kernel):
    """vgic_v3_save_pending_tables (vgic-v3.c): 7.3's xarray is INTID order, 6.1's list is
    creation order; the bytes written are the same."""
    its = _three_lpis(kernel)
    ok(its, INT(1, 0), INT(1, 1), INT(1, 2))
    pend = its.layout.pend_tables
    lo, size = pend[0], pend[1] + r.SZ_64K - pend[0]
    reads = kvm_reads(its, lo, size)
    assert its.save_pending_tables() is None
    where = [(pend.index(a & ~0xFFFF), a & 0xFFFF) for a in reads]
    assert (
        where
        == {
            "7.3": [(1, 1024), (0, 1025), (0, 1026)],
            "6.1": [(0, 1026), (1, 1024), (0, 1025)],
        }[kernel]
    )
    assert its.read_guest(pend[0] + 1025, 2) == b"\x01\x01"
    assert its.read_guest(pend[1] + 1024, 1) == b"\x01"


# ---- MOVALL: vgic_its_cmd_handle_movall -------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_movall_moves_only_the_lpis_targeting_rdbase1(kernel):
    """6.1: vgic_copy_lpi_list(vcpu1); 7.3: update_affinity(irq, vcpu1, vcpu2) skips
    other targets. An LPI without a target (unmapped collection) stays as it is."""
    its = VirtualITS(nr_vcpus=4, kernel=kernel)
    ok(its, MAPD(1, 3, its.layout.free_base, True))
    ok(its, MAPTI(1, 0, 8192, 1), MAPTI(1, 1, 8193, 2), MAPTI(1, 2, 8194, 9))
    ok(its, MOVALL(1, 3))
    assert [its.lpis[i].target_vcpu for i in (8192, 8193, 8194)] == [3, 2, None]
    assert its.devices[1].ites[0].collection.collection_id == 1  # the ITE keeps it
    assert its.translate(1, 0) == (8192, 3)
