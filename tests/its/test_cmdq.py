"""The command queue and the ITS registers, as vgic-its.c emulates them.

``vgic_its_process_commands`` runs inside the GITS_CWRITER (or GITS_CTLR) write, only while
GITS_CTLR.Enabled; a failing or unreadable command is skipped. CBASER, BASER<n>, TYPER and
IIDR follow ``vgic_mmio_{read,write}_its_*``.
"""

from __future__ import annotations

import pytest

from sim.its import (
    DISCARD,
    INT,
    MAPC,
    MAPD,
    MAPTI,
    SYNC,
    ITSDisabledError,
    ITSError,
    VirtualITS,
)
from sim.its import regs as r
from sim.its.vits import QEMU_VIRT_RAM_BASE
from sim.memory.access import MemorySystem, Stage2Fault
from sim.memory.ownership import PageState, Transition
from sim.memory.physmem import PAGE_SHIFT

CMD = 32
SLOTS_64K = r.SZ_64K // CMD  # 2048


def ex(its: VirtualITS, cmd) -> ITSError | None:
    return its.execute(cmd.encode())


def itt(its: VirtualITS, n: int = 0) -> int:
    return its.layout.free_base + n * 0x10000


def creadr(its: VirtualITS) -> int:
    return its.mmio_read(r.GITS_CREADR)


def cwriter(its: VirtualITS) -> int:
    return its.mmio_read(r.GITS_CWRITER)


def queue(its: VirtualITS, cmds, start: int | None = None) -> int:
    """Write raw commands into the queue from ``start`` (default CWRITER); return the end."""
    offset = cwriter(its) if start is None else start
    base = r.cbaser_addr(its.mmio_read(r.GITS_CBASER))
    size = r.cbaser_size(its.mmio_read(r.GITS_CBASER))
    for cmd in cmds:
        raw = cmd if isinstance(cmd, bytes) else cmd.encode()
        its.write_guest(base + offset, raw)
        offset = (offset + CMD) % size
    return offset


# ---- GITS_CTLR.Enabled ---------------------------------------------------------------


def test_execute_raises_while_disabled():
    its = VirtualITS(its_enabled=False)
    assert not its.mmio_read(r.GITS_CTLR) & r.GITS_CTLR_ENABLE
    with pytest.raises(ITSDisabledError):
        ex(its, SYNC(0))
    assert its.command_log == []
    assert cwriter(its) == creadr(its) == 0


def test_commands_wait_while_disabled_and_run_in_order_on_enable():
    its = VirtualITS(its_enabled=False)
    cmds = [
        MAPC(0, 0, True),
        MAPD(1, 3, itt(its), True),
        MAPTI(1, 0, 8192, 0),  # needs the MAPD before it
        INT(1, 0),
        DISCARD(1, 0),
        MAPTI(1, 0, 9000, 0),  # after DISCARD: a fresh mapping
    ]
    end = queue(its, cmds)
    its.mmio_write(r.GITS_CWRITER, end)
    assert cwriter(its) == len(cmds) * CMD
    assert creadr(its) == 0  # left behind: nothing processed
    assert not its.mmio_read(r.GITS_CTLR) & r.GITS_CTLR_QUIESCENT
    assert its.command_log == []
    assert its.devices == {} and its.collections == {}

    its.mmio_write(r.GITS_CTLR, r.GITS_CTLR_ENABLE)
    assert its.mmio_read(r.GITS_CTLR) & r.GITS_CTLR_ENABLE
    assert its.mmio_read(r.GITS_CTLR) & r.GITS_CTLR_QUIESCENT
    assert creadr(its) == cwriter(its) == len(cmds) * CMD
    assert [rec.command for rec in its.command_log] == cmds
    assert [rec.offset for rec in its.command_log] == [i * CMD for i in range(len(cmds))]
    assert [rec.error for rec in its.command_log] == [None] * len(cmds)
    assert its.translate(1, 0) == (9000, 0)


def test_disabling_stops_processing_until_reenabled():
    its = VirtualITS()
    assert ex(its, MAPD(1, 3, itt(its), True)) is None
    its.mmio_write(r.GITS_CTLR, 0)
    assert not its.mmio_read(r.GITS_CTLR) & r.GITS_CTLR_ENABLE
    with pytest.raises(ITSDisabledError):
        ex(its, SYNC(0))
    start = creadr(its)
    its.mmio_write(r.GITS_CWRITER, queue(its, [MAPTI(1, 0, 8192, 2)]))
    assert creadr(its) == start
    assert its.translate(1, 0) is None
    its.mmio_write(r.GITS_CTLR, r.GITS_CTLR_ENABLE)
    assert creadr(its) == start + CMD
    assert its.translate(1, 0) == (8192, 2)


@pytest.mark.parametrize("invalid", ["BASER0", "BASER1", "CBASER"])
def test_enable_refused_unless_cbaser_and_both_basers_valid(invalid):
    its = VirtualITS(its_enabled=False)
    lay = its.layout
    if invalid == "BASER0":
        reg, valid = r.GITS_BASER0, r.make_baser(lay.device_table, lay.device_table_size)
    elif invalid == "BASER1":
        reg, valid = r.GITS_BASER1, r.make_baser(lay.collection_table, lay.collection_table_size)
    else:
        reg, valid = r.GITS_CBASER, r.make_cbaser(lay.cmdq, lay.cmdq_size)
    valid_bit = r.GITS_CBASER_VALID if reg == r.GITS_CBASER else r.GITS_BASER_VALID
    its.mmio_write(reg, valid & ~valid_bit)
    its.mmio_write(r.GITS_CWRITER, queue(its, [MAPC(0, 0, True)]))
    its.mmio_write(r.GITS_CTLR, r.GITS_CTLR_ENABLE)
    assert not its.mmio_read(r.GITS_CTLR) & r.GITS_CTLR_ENABLE
    assert not its.enabled
    assert creadr(its) == 0 and its.command_log == []
    with pytest.raises(ITSDisabledError):
        ex(its, SYNC(0))
    # Made valid, the same enable goes through and runs the queued command.
    its.mmio_write(reg, valid)
    if reg == r.GITS_CBASER:  # a CBASER write empties the queue: queue again
        its.mmio_write(r.GITS_CWRITER, queue(its, [MAPC(0, 0, True)]))
    its.mmio_write(r.GITS_CTLR, r.GITS_CTLR_ENABLE)
    assert its.mmio_read(r.GITS_CTLR) & r.GITS_CTLR_ENABLE
    assert [rec.command for rec in its.command_log] == [MAPC(0, 0, True)]
    assert its.collections[0].target_addr == 0


# ---- CWRITER / CREADR ------------------------------------------------------------------


def test_cwriter_beyond_the_queue_is_ignored():
    its = VirtualITS()
    start = cwriter(its)
    end = queue(its, [MAPD(1, 3, itt(its), True)])
    its.mmio_write(r.GITS_CWRITER, r.SZ_64K)  # == queue size
    its.mmio_write(r.GITS_CWRITER, 0xFFFE0)  # bits [19:5] all set
    assert cwriter(its) == creadr(its) == start
    assert its.devices == {}
    its.mmio_write(r.GITS_CWRITER, end)
    assert 1 in its.devices


def test_cwriter_bound_follows_cbaser_size():
    its = VirtualITS(its_enabled=False)
    its.mmio_write(r.GITS_CBASER, r.make_cbaser(its.layout.cmdq, r.SZ_4K))
    its.mmio_write(r.GITS_CWRITER, r.SZ_4K)
    assert cwriter(its) == 0
    its.mmio_write(r.GITS_CWRITER, r.SZ_4K - CMD)
    assert cwriter(its) == r.SZ_4K - CMD


def test_cwriter_keeps_bits_19_to_5():
    its = VirtualITS(its_enabled=False)
    queue(its, [SYNC(0), SYNC(1)], start=0)
    its.mmio_write(r.GITS_CWRITER, 1 << 63 | 1 << 20 | 2 * CMD | 0x1F)
    assert cwriter(its) == 2 * CMD
    assert creadr(its) == 0
    its.mmio_write(r.GITS_CTLR, r.GITS_CTLR_ENABLE)
    assert creadr(its) == 2 * CMD
    assert [rec.command for rec in its.command_log[-2:]] == [SYNC(0), SYNC(1)]


def test_guest_writes_to_creadr_typer_iidr_are_ignored():
    its = VirtualITS()
    before = {reg: its.mmio_read(reg) for reg in (r.GITS_CREADR, r.GITS_TYPER, r.GITS_IIDR)}
    for reg in before:
        its.mmio_write(reg, 0x1240)
    assert {reg: its.mmio_read(reg) for reg in before} == before


def test_queue_wraps_around_and_processes_every_command():
    its = VirtualITS()
    assert ex(its, MAPD(1, 15, itt(its), True)) is None
    start = creadr(its)
    n = SLOTS_64K + 200
    log_start = len(its.command_log)
    seen_zero = False
    for ev in range(n):
        assert ex(its, MAPTI(1, ev, 8192 + ev, ev % 4)) is None
        reg = creadr(its)
        assert reg == cwriter(its) == (start + (ev + 1) * CMD) % r.SZ_64K
        assert reg & ~r.genmask(19, 5) == 0
        seen_zero |= reg == 0
    assert seen_zero
    log = its.command_log[log_start:]
    assert len(log) == n
    assert [rec.offset for rec in log] == [(start + i * CMD) % r.SZ_64K for i in range(n)]
    assert all(rec.error is None for rec in log)
    assert len(its.devices[1].ites) == n
    assert its.translate(1, n - 1) == (8192 + n - 1, (n - 1) % 4)
    assert its.translate(1, SLOTS_64K) == (8192 + SLOTS_64K, SLOTS_64K % 4)


def test_one_cwriter_write_processes_a_batch_across_the_wrap():
    its = VirtualITS()
    assert ex(its, MAPD(1, 3, itt(its), True)) is None
    while cwriter(its) != r.SZ_64K - 2 * CMD:
        assert ex(its, SYNC(0)) is None
    log_len = len(its.command_log)
    cmds = [MAPTI(1, ev, 8192 + ev, ev % 4) for ev in range(5)]
    end = queue(its, cmds)
    assert end == 3 * CMD
    its.mmio_write(r.GITS_CWRITER, end)
    assert creadr(its) == cwriter(its) == 3 * CMD
    log = its.command_log[log_len:]
    assert [rec.command for rec in log] == cmds
    assert [rec.offset for rec in log] == [r.SZ_64K - 2 * CMD, r.SZ_64K - CMD, 0, CMD, 2 * CMD]
    assert all(its.translate(1, ev) == (8192 + ev, ev % 4) for ev in range(5))


def test_a_failing_command_is_skipped_and_the_next_runs():
    its = VirtualITS()
    cmds = [
        MAPTI(9, 0, 8192, 0),  # unmapped device
        MAPD(1, 3, itt(its), True),
        bytes([0x02]) + bytes(31),  # unknown command
        MAPTI(1, 0, 8192, 1),
        MAPD(1 << 16, 0, 0, True),  # DeviceID out of range
        INT(1, 0),
    ]
    log_start = len(its.command_log)
    its.mmio_write(r.GITS_CWRITER, queue(its, cmds))  # one CWRITER write for all
    assert creadr(its) == cwriter(its)
    assert [rec.error for rec in its.command_log[log_start:]] == [
        ITSError.E_ITS_MAPTI_UNMAPPED_DEVICE,
        None,
        ITSError.ENODEV,
        None,
        ITSError.E_ITS_MAPD_DEVICE_OOR,
        None,
    ]
    assert its.lpis[8192].pending is True
    assert its.translate(1, 0) == (8192, 1)


# ---- an unreadable queue slot (protected guest) ----------------------------------------


def protected_its() -> VirtualITS:
    ram_size = 64 << 20
    memory = MemorySystem()
    memory.ownership.add_guest("guest")
    memory.ownership.apply(
        Transition.HOST_DONATE_GUEST,
        QEMU_VIRT_RAM_BASE >> PAGE_SHIFT,
        ram_size >> PAGE_SHIFT,
        guest="guest",
    )
    its = VirtualITS(memory=memory, ram_size=ram_size)
    cmdq_pfn = its.layout.cmdq >> PAGE_SHIFT
    assert memory.ownership.state("host", cmdq_pfn) is PageState.SHARED_BORROWED
    assert memory.faults == []
    return its


def test_unreadable_queue_slot_is_skipped_with_efault():
    its = protected_its()
    memory = its.memory
    slot = cwriter(its)
    pfn = (its.layout.cmdq + slot) >> PAGE_SHIFT
    memory.ownership.apply(Transition.GUEST_UNSHARE_HOST, pfn, guest="guest")
    log_len = len(its.command_log)
    assert ex(its, MAPD(1, 3, itt(its), True)) is ITSError.EFAULT
    assert len(its.command_log) == log_len + 1
    record = its.command_log[-1]
    assert record.error is ITSError.EFAULT
    assert record.raw is None and record.command is None
    assert record.offset == slot
    assert creadr(its) == cwriter(its) == slot + CMD
    assert its.devices == {}
    assert len(memory.faults) == 1
    fault = memory.faults[0]
    assert isinstance(fault, Stage2Fault)
    assert fault.pfn == pfn
    assert not fault.record.write
    assert "kvm-vits" in fault.record.actor
    # Shared again, the queue carries on.
    memory.ownership.apply(Transition.GUEST_SHARE_HOST, pfn, guest="guest")
    assert ex(its, MAPD(1, 3, itt(its), True)) is None
    assert 1 in its.devices
    assert len(memory.faults) == 1


def test_unreadable_slot_in_a_batch_does_not_stall_the_queue():
    its = protected_its()
    # Move CWRITER to the last slot of the queue's first 4 KiB page.
    last = 4096 - CMD
    for _ in range((last - cwriter(its)) // CMD):
        assert ex(its, SYNC(0)) is None
    assert cwriter(its) == last
    pfn = its.layout.cmdq >> PAGE_SHIFT
    its.memory.ownership.apply(Transition.GUEST_UNSHARE_HOST, pfn, guest="guest")
    log_len = len(its.command_log)
    its.mmio_write(r.GITS_CWRITER, queue(its, [MAPD(1, 3, itt(its), True), MAPD(2, 3, 0, True)]))
    assert creadr(its) == cwriter(its) == last + 2 * CMD
    assert [rec.error for rec in its.command_log[log_len:]] == [ITSError.EFAULT, None]
    assert its.command_log[-1].offset == 4096
    assert set(its.devices) == {2}
    assert len(its.memory.faults) == 1


# ---- ID registers ----------------------------------------------------------------------


def test_gits_typer():
    typer = VirtualITS().mmio_read(r.GITS_TYPER)
    assert typer & 1 == 1  # PLPIS
    assert (typer >> 13) & 0x1F == 15  # Devbits: 16 bits
    assert (typer >> 8) & 0x1F == 15  # ID_bits: 16 bits
    assert (typer >> 4) & 0xF == 7  # ITT_entry_size: 8 bytes
    assert (typer >> 19) & 1 == 0  # PTA = 0
    assert typer == 0x1 | 15 << 13 | 15 << 8 | 7 << 4 == 0x1EF71


def test_gits_iidr():
    iidr = VirtualITS().mmio_read(r.GITS_IIDR)
    assert (iidr >> 12) & 0xF == 0  # revision: ABI rev 0
    assert iidr >> 24 == 0x4B  # PRODUCT_ID_KVM
    assert iidr & 0xFFF == 0x43B  # IMPLEMENTER_ARM
    assert iidr == 0x4B00043B


# ---- BASER<n> / CBASER -----------------------------------------------------------------


def test_baser_and_cbaser_writes_ignored_while_enabled():
    its = VirtualITS()
    assert ex(its, MAPD(1, 3, itt(its), True)) is None
    assert ex(its, MAPTI(1, 0, 8192, 0)) is None
    regs = (r.GITS_BASER0, r.GITS_BASER1, r.GITS_CBASER)
    before = {reg: its.mmio_read(reg) for reg in regs}
    read_pos = creadr(its)
    for reg in regs:
        its.mmio_write(reg, 0)  # Valid = 0 would free everything if it took effect
    assert {reg: its.mmio_read(reg) for reg in regs} == before
    assert creadr(its) == cwriter(its) == read_pos
    assert its.translate(1, 0) == (8192, 0)
    assert ex(its, INT(1, 0)) is None


def test_baser1_is_never_indirect_baser0_may_be():
    its = VirtualITS(its_enabled=False)
    lay = its.layout
    its.mmio_write(r.GITS_BASER1, r.make_baser(lay.collection_table, r.SZ_64K, indirect=True))
    assert not its.mmio_read(r.GITS_BASER1) & r.GITS_BASER_INDIRECT
    its.mmio_write(r.GITS_BASER0, r.make_baser(lay.device_table, r.SZ_64K, indirect=True))
    assert its.mmio_read(r.GITS_BASER0) & r.GITS_BASER_INDIRECT


@pytest.mark.parametrize(("index", "table_type"), [(0, 1), (1, 4)])
@pytest.mark.parametrize("page_size", [0, 1, 3])
def test_baser_page_size_type_and_entry_size_are_forced(index, table_type, page_size):
    its = VirtualITS(its_enabled=False)
    addr = its.layout.device_table if index == 0 else its.layout.collection_table
    val = r.make_baser(addr, 2 * r.SZ_64K)
    val = (val & ~(0x3 << 8)) | page_size << 8  # 4K / 16K / reserved
    val &= ~(r.GITS_BASER_RO_MASK)  # Type 0, Entry_Size field 0
    val |= 0x3 << 56 if index else 0  # a wrong type
    its.mmio_write(r.GITS_BASER0 + 8 * index, val)
    got = its.mmio_read(r.GITS_BASER0 + 8 * index)
    assert (got >> 8) & 0x3 == 2  # 64K
    assert (got >> 56) & 0x7 == table_type
    assert (got >> 48) & 0x1F == 7  # 8-byte entries
    assert r.baser_addr(got) == addr
    assert got & 0xFF == 1  # Size kept: 2 pages
    assert got & r.GITS_BASER_VALID


def test_baser2_to_7_read_as_zero_and_ignore_writes():
    its = VirtualITS(its_enabled=False)
    for n in range(2, 8):
        its.mmio_write(r.GITS_BASER0 + 8 * n, r.make_baser(its.layout.free_base, r.SZ_64K))
        assert its.mmio_read(r.GITS_BASER0 + 8 * n) == 0


def test_cbaser_write_resets_creadr_and_cwriter():
    its = VirtualITS()
    assert creadr(its) > 0
    its.mmio_write(r.GITS_CTLR, 0)
    its.mmio_write(r.GITS_CWRITER, creadr(its) + 4 * CMD)  # queued, not processed
    assert cwriter(its) != creadr(its)
    cbaser = r.make_cbaser(its.layout.cmdq, r.SZ_64K)
    its.mmio_write(r.GITS_CBASER, cbaser | 0x5 << 12)  # address bits [15:12] are cleared
    assert its.mmio_read(r.GITS_CBASER) == cbaser
    assert creadr(its) == cwriter(its) == 0
    its.mmio_write(r.GITS_CTLR, r.GITS_CTLR_ENABLE)
    log_len = len(its.command_log)
    assert ex(its, SYNC(0)) is None
    assert its.command_log[log_len].offset == 0
    assert len(its.command_log) == log_len + 1  # the four queued slots were dropped


def test_baser0_valid_0_frees_every_device():
    its = VirtualITS()
    for dev in (1, 2, 300):
        assert ex(its, MAPD(dev, 3, itt(its, dev % 8), True)) is None
        assert ex(its, MAPTI(dev, 0, 8192 + dev, dev % 4)) is None
    collections = dict(its.collections)
    its.mmio_write(r.GITS_CTLR, 0)
    lay = its.layout
    its.mmio_write(
        r.GITS_BASER0, r.make_baser(lay.device_table, lay.device_table_size, valid=False)
    )
    assert its.devices == {}
    assert its.lpis == {}
    assert its.collections == collections  # collections are BASER1's
    its.mmio_write(r.GITS_BASER0, r.make_baser(lay.device_table, lay.device_table_size))
    its.mmio_write(r.GITS_CTLR, r.GITS_CTLR_ENABLE)
    assert its.mappings() == {}
    assert ex(its, INT(1, 0)) is ITSError.E_ITS_INT_UNMAPPED_INTERRUPT
    assert ex(its, MAPD(1, 3, itt(its), True)) is None


def test_baser1_valid_0_frees_every_collection():
    its = VirtualITS()
    assert ex(its, MAPD(1, 3, itt(its), True)) is None
    assert ex(its, MAPTI(1, 0, 8192, 2)) is None
    its.mmio_write(r.GITS_CTLR, 0)
    lay = its.layout
    baser1 = r.make_baser(lay.collection_table, lay.collection_table_size)
    its.mmio_write(r.GITS_BASER1, baser1 & ~r.GITS_BASER_VALID)
    assert its.collections == {}
    assert its.devices[1].ites[0].collection is None
    its.mmio_write(r.GITS_BASER1, baser1)
    its.mmio_write(r.GITS_CTLR, r.GITS_CTLR_ENABLE)
    assert its.translate(1, 0) is None


# ---- how the queue is read -------------------------------------------------------------


def to_page_start(its: VirtualITS) -> None:
    """SYNC until CWRITER sits at the start of a 4 KiB page of the queue."""
    while cwriter(its) % 4096:
        assert ex(its, SYNC(0)) is None


def test_a_batch_reads_each_page_as_its_first_slot_then_the_rest():
    its = VirtualITS()
    to_page_start(its)
    start = cwriter(its)
    base = r.cbaser_addr(its.mmio_read(r.GITS_CBASER))
    cmds = [SYNC(i % 4) for i in range(4096 // CMD + 5)]  # a page and five slots
    log_len = len(its.memory.log)
    its.mmio_write(r.GITS_CWRITER, queue(its, cmds))
    reads = [
        (rec.addr - base, rec.length)
        for rec in its.memory.log[log_len:]
        if not rec.write and base <= rec.addr < base + r.SZ_64K
    ]
    assert reads == [
        (start, CMD),
        (start + CMD, 4096 - CMD),
        (start + 4096, CMD),
        (start + 4096 + CMD, 4 * CMD),
    ]
    assert [rec.command for rec in its.command_log[-len(cmds) :]] == cmds
    assert creadr(its) == cwriter(its) == start + len(cmds) * CMD


def test_a_command_that_writes_a_later_slot_is_seen_by_the_next_read():
    """DISCARD zeroes its ITE in guest memory (both kernels); with the ITT on the queue page
    the zeroed ITE is the first dword of a later command, which KVM then reads as
    command number 0 and skips. A stale copy of the page would run it."""
    its = VirtualITS()
    to_page_start(its)
    start = cwriter(its)
    base = r.cbaser_addr(its.mmio_read(r.GITS_CBASER))
    victim = start + 0x800  # 256-byte aligned: an ITT may start there
    cmds = [MAPD(1, 3, base + victim, True), MAPTI(1, 0, 8200, 0), DISCARD(1, 0)]
    cmds += [SYNC(0)] * ((victim - start) // CMD - len(cmds))
    cmds.append(MAPC(5, 0, True))  # at the victim slot
    its.mmio_write(r.GITS_CWRITER, queue(its, cmds))
    record = its.command_log[-1]
    assert record.offset == victim
    assert record.raw[:8] == bytes(8) and record.command is None
    assert record.error is ITSError.ENODEV
    assert 5 not in its.collections
    assert [rec.error for rec in its.command_log[-len(cmds) : -1]] == [None] * (len(cmds) - 1)
