"""Real KVM (``pytest -m oracle``): small streams through the VMM on Debian's newest kernel.

One boot nested (VHE) and one with ``kvm-arm.mode=protected``; the bytes asserted are the
ones KVM's vgic-its.c wrote into guest memory (ABI rev 0: DTE, ITE, CTE) and GITS_CREADR
as the L2 vCPU read it.
"""

from __future__ import annotations

import struct

import pytest

from sim.oracle.kvm import run_streams
from sim.oracle.setup import debian_kernel, ensure_host_tools
from sim.oracle.stream import MemFill, RegWrite, Restore, Stream

pytestmark = pytest.mark.oracle

B = 0x4000_0000
PROP, DT, CT, QUEUE, ITT = B, B + 0x10_0000, B + 0x11_0000, B + 0x12_0000, B + 0x20_0000
RAM = 3 << 20
ATTRS = (7 << 7) | (1 << 10)  # RaWaWb, inner shareable: what Linux writes


def cmd(*dw: int) -> str:
    return struct.pack("<4Q", *dw).hex()


def word(value: int) -> str:
    return struct.pack("<Q", value).hex()


REGS = (
    *(RegWrite(reg=f"GICR{n}_PROPBASER", value=PROP | ATTRS | 15) for n in range(2)),
    *(RegWrite(reg=f"GICR{n}_PENDBASER", value=(B + 0x1_0000 * (n + 1)) | ATTRS) for n in range(2)),
    *(RegWrite(reg=f"GICR{n}_CTLR", value=1) for n in range(2)),
    RegWrite(reg="GITS_BASER0", value=(1 << 63) | (1 << 56) | (7 << 48) | DT | (2 << 8)),
    RegWrite(reg="GITS_BASER1", value=(1 << 63) | (4 << 56) | (7 << 48) | CT | (2 << 8)),
    RegWrite(reg="GITS_CBASER", value=(1 << 63) | QUEUE | 15),  # 64 KiB queue
    RegWrite(reg="GITS_CTLR", value=1),
)
MAPC0 = cmd(0x09, 0, (1 << 63) | 0, 0)  # ICID 0 -> vCPU 0
MAPC1 = cmd(0x09, 0, (1 << 63) | (1 << 16) | 1, 0)  # ICID 1 -> vCPU 1
MAPD8 = cmd(0x08 | 8 << 32, 1, (1 << 63) | ITT, 0)  # DeviceID 8, 2 events, ITT
MAPTI = [cmd(0x0A | 8 << 32, (8192 + e) << 32 | e, e, 0) for e in (0, 1)]  # event e -> ICID e
SYNC = cmd(0x05, 0, 0, 0)
BASIC = (MAPC0, MAPD8, *MAPTI, MAPC1, SYNC)

# What KVM saves for BASIC (vgic_its_save_dte/ite/cte)
SAVED = {
    DT + 8 * 8: 0x8000_0000_0804_0001,  # V, next 0, ITT >> 8 at [48:5], Size 1
    ITT: 0x0001_0000_2000_0000,  # next 1, pINTID 8192, ICID 0
    ITT + 8: 0x0000_0000_2001_0001,  # next 0 (last), pINTID 8193, ICID 1
    CT: 0x8000_0000_0000_0000,  # ICID 0 on vCPU 0
    CT + 8: 0x8000_0000_0001_0001,  # ICID 1 on vCPU 1 (the terminator is zero)
}
ITS_PAGES = ((PROP, 16), (B + 0x1_0000, 32), (DT, 16), (CT, 16), (QUEUE, 16), (ITT, 1))


def basic(name: str, **kw) -> Stream:
    return Stream(name=name, ram_size=RAM, regs=REGS, commands=BASIC, **kw)


def its_words(memory: dict[int, int]) -> dict[int, int]:
    """The DT, CT and ITT words (the queue and the fills left out)."""
    return {a: w for a, w in memory.items() if DT <= a < QUEUE or ITT <= a < ITT + 0x1000}


@pytest.fixture(scope="module")
def newest():
    return ensure_host_tools(print), debian_kernel("newest", print)


def test_nested_kvm_saves_restores_and_zeroes_on_discard(newest):
    tools, kernel = newest
    garbage = tuple(MemFill(gpa=DT + 8 * d, data=word(0x8123_4567_89AB_CDEF)) for d in (1, 2))
    discard = (MAPC0, MAPD8, MAPTI[0], cmd(0x0F | 8 << 32, 0, 0, 0), cmd(0x08 | 8 << 32, 0, 0, 0))
    fill = (MemFill(gpa=ITT, data=word(0x1111)), MemFill(gpa=DT + 8 * 8, data=word(0x2222)))
    # after the restore, the guest maps event 2 of a new device 9 (ITT at ITT + 0x100)
    more = (
        cmd(0x08 | 9 << 32, 1, (1 << 63) | (ITT + 0x100), 0),
        cmd(0x0A | 9 << 32, 8194 << 32, 0, 0),
    )
    streams = [
        basic(
            "basic",
            restores=(
                Restore(name="same"),
                Restore(name="garbage", patches=garbage),
                Restore(name="more", commands=more),
            ),
        ),
        Stream(name="discard", ram_size=RAM, regs=REGS, fill=fill, commands=discard, save=False),
        Stream(
            name="control", ram_size=RAM, regs=REGS, fill=fill, commands=discard[:3], save=False
        ),
    ]
    got, dis, control = run_streams(kernel, tools, streams, protected_mode=False, timeout_s=300)

    assert got.kernel == kernel.release and not got.error
    assert got.creadr == (0x20, 0x40, 0x60, 0x80, 0xA0, 0xC0)  # CREADR follows CWRITER
    assert got.regs["GITS_TYPER"] == 0x1EF71
    assert got.regs["GITS_IIDR"] == 0x4B00043B
    assert got.regs["GITS_CREADR"] == got.regs["GITS_CWRITER"] == 0xC0
    assert its_words(got.commands.memory) == {}  # nothing written before the save
    assert got.save is not None and got.save.ret == 0
    assert its_words(got.save.memory) == SAVED
    same, bad, more = got.restores
    assert (same.ret, same.resave_ret) == (0, 0)
    assert same.memory == got.save_pending.memory  # restore + re-save: byte-identical
    assert same.regs["GITS_CREADR"] == 0xC0 and same.creadr == ()
    assert (bad.ret, bad.resave_ret) == (-14, None)  # EFAULT over garbage in unused DTEs
    # the restored guest queues from the restored CWRITER on
    assert (more.ret, more.resave_ret, more.creadr) == (0, 0, (0xE0, 0x100))
    assert its_words(more.memory) == {
        **SAVED,
        DT + 8 * 8: 0x8002_0000_0804_0001,  # device 8 now has next = 1: device 9 follows
        DT + 8 * 9: 0x8000_0000_0804_0021,  # ITT + 0x100 (>> 8 at [48:5]), Size 1
        ITT + 0x100: 0x0000_0000_2002_0000,  # event 0 -> LPI 8194, ICID 0
    }

    # the control keeps the filled ITE and DTE; DISCARD and MAPD V=0 zero them while running
    assert its_words(control.commands.memory) == {ITT: 0x1111, DT + 64: 0x2222}
    assert dis.creadr == (0x20, 0x40, 0x60, 0x80, 0xA0)
    assert its_words(dis.commands.memory) == {}


def test_pkvm_protected_vm_shared_and_unshared(newest):
    tools, kernel = newest
    streams = [
        basic("shared", protected=True, share=ITS_PAGES, host_reads=(QUEUE, B + 0x28_0000)),
        basic("unshared", protected=True, host_reads=(QUEUE,)),
    ]
    shared, unshared = run_streams(kernel, tools, streams, protected_mode=True, timeout_s=600)

    assert not shared.error and not unshared.error
    assert shared.creadr == unshared.creadr == (0x20, 0x40, 0x60, 0x80, 0xA0, 0xC0)
    # every ITS page shared: the same bytes as a normal VM
    assert shared.save is not None and shared.save.ret == 0
    assert its_words(shared.save.memory) == SAVED
    assert shared.host_reads == {QUEUE: "ok", B + 0x28_0000: "fault"}
    # nothing shared: KVM cannot read the queue, the commands are skipped silently
    assert unshared.save is not None and unshared.save.ret == -14
    assert unshared.commands.memory == {}  # no page of RAM is the host's to read
    assert unshared.host_reads == {QUEUE: "fault"}
