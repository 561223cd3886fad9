"""KVM's ITS migration ABI rev 0 (``sim.its.abi``) checked byte for byte and end to end.

Expected values are computed here from the bit layouts of arch/arm64/kvm/vgic/vgic.h
(``KVM_ITS_*``) and the behaviour of vgic-its.c in the default kernel (7.3; where 6.1
differs, tests/its/test_kernels.py covers both), never from the encoders in
``sim.its.tables``:

    DTE  | 63 V | 62..49 next | 48..5 ITT_addr >> 8 | 4..0 Size (EventID bits - 1) |
    ITE  | 63..48 next | 47..16 pINTID | 15..0 ICID |
    CTE  | 63 V | 47..16 RDbase (u32 vCPU id, 0xFFFFFFFF = unmapped) | 15..0 ICID |

A migration is what a VMM does: copy guest RAM, set the registers (redistributors,
GITS_CBASER, the other GITS_* registers), KVM_DEV_ARM_ITS_RESTORE_TABLES, then GITS_CTLR.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.its import (
    CLEAR,
    DISCARD,
    INT,
    INVALL,
    MAPC,
    MAPD,
    MAPI,
    MAPTI,
    MOVI,
    ITSError,
    VirtualITS,
)
from sim.its import regs as r
from sim.its.vits import QEMU_VIRT_RAM_BASE
from sim.memory.access import MemorySystem, Stage2Fault
from sim.memory.ownership import Transition
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE

RAM_BASE = QEMU_VIRT_RAM_BASE
RAM_SIZE = 2 << 30
PROBE_SIZE = 16 << 20  # the probe's tables live in [RAM_BASE, RAM_BASE + 16 MiB)
ITT_SIZE = (1 << 16) * 8  # room for the largest ITT (16 EventID bits), 256-byte aligned
L2_IDS = 0x10000 // 8  # DeviceIDs per 64 KiB level-2 page
DTE_NEXT_CAP = (1 << 14) - 1
ITE_NEXT_CAP = (1 << 16) - 1
NOT_MAPPED = 0xFFFF_FFFF
EMPTY_STATE = ((), (), ())


# ---- entries computed by hand from the bit layout -----------------------------------


def dte(next_: int, itt: int, bits: int, *, valid: bool = True) -> int:
    return int(valid) << 63 | next_ << 49 | (itt >> 8) << 5 | (bits - 1)


def ite(next_: int, intid: int, icid: int) -> int:
    return next_ << 48 | intid << 16 | icid


def cte(target: int, icid: int) -> int:
    return 1 << 63 | target << 16 | icid


def read_u64(its: VirtualITS, gpa: int) -> int:
    return int.from_bytes(its.read_guest(gpa, 8), "little")


def write_u64(its: VirtualITS, gpa: int, value: int) -> None:
    its.write_guest(gpa, value.to_bytes(8, "little"))


def dte_gpa(its: VirtualITS, device_id: int) -> int:
    """Where the guest finds a DeviceID's DTE: flat, or through the level-1 entry."""
    if its.baser_device_table & r.GITS_BASER_INDIRECT:
        l1 = read_u64(its, its.device_table_gpa + (device_id // L2_IDS) * 8)
        assert l1 >> 63, f"level-1 entry for DeviceID {device_id} is not valid"
        l2 = l1 & ((1 << 52) - 1) & ~0xFFFF
        return l2 + (device_id % L2_IDS) * 8
    return its.device_table_gpa + device_id * 8


def ok(its: VirtualITS, *cmds) -> None:
    for cmd in cmds:
        err = its.execute(cmd.encode())
        assert err is None, (cmd, its.command_log[-1])


# ---- migration ---------------------------------------------------------------------------


def copy_guest(src: VirtualITS, dst: VirtualITS, start: int, length: int) -> None:
    """Copy guest RAM as a VMM does (all-zero chunks are skipped: dst RAM starts zeroed)."""
    chunk = 1 << 20
    for addr in range(start, start + length, chunk):
        n = min(chunk, start + length - addr)
        data = src.read_guest(addr, n)
        if data != bytes(n):
            dst.write_guest(addr, data)


def start_migration(
    src: VirtualITS,
    itt_regions: tuple[tuple[int, int], ...] = (),
    *,
    dst: VirtualITS | None = None,
    regs: dict[str, int] | None = None,
) -> tuple[VirtualITS, dict[str, int]]:
    """Guest RAM (the probe's tables and the ITTs), then the registers, GITS_CTLR left out."""
    if dst is None:
        dst = VirtualITS(probe=False)
    copy_guest(src, dst, RAM_BASE, src.layout.free_base - RAM_BASE)
    for start, length in itt_regions:
        copy_guest(src, dst, start, length)
    if regs is None:
        regs = src.get_regs()
    dst.set_regs(regs)
    return dst, regs


def finish_migration(dst: VirtualITS, regs: dict[str, int]) -> ITSError | None:
    err = dst.restore_tables()
    dst.mmio_write(r.GITS_CTLR, regs["GITS_CTLR"])
    return err


def migrate(
    src: VirtualITS, itt_regions: tuple[tuple[int, int], ...] = (), **kw
) -> tuple[VirtualITS, ITSError | None]:
    dst, regs = start_migration(src, itt_regions, **kw)
    return dst, finish_migration(dst, regs)


def protected_memory() -> MemorySystem:
    """A machine whose guest is protected: all of its RAM donated, none left to the host."""
    memory = MemorySystem()
    memory.ownership.add_guest("guest")
    memory.ownership.apply(
        Transition.HOST_DONATE_GUEST,
        RAM_BASE >> PAGE_SHIFT,
        RAM_SIZE >> PAGE_SHIFT,
        guest="guest",
        cause="protected VM",
    )
    return memory


def guest_share(its: VirtualITS, gpa: int, length: int) -> None:
    its.memory.ownership.apply(
        Transition.GUEST_SHARE_HOST, gpa >> PAGE_SHIFT, length >> PAGE_SHIFT, guest="guest"
    )


def guest_unshare(its: VirtualITS, gpa: int, length: int = PAGE_SIZE) -> None:
    its.memory.ownership.apply(
        Transition.GUEST_UNSHARE_HOST, gpa >> PAGE_SHIFT, length >> PAGE_SHIFT, guest="guest"
    )


def protected_destination() -> VirtualITS:
    """A fresh protected destination whose guest shares the probe's tables (not its ITTs)."""
    dst = VirtualITS(memory=protected_memory(), ram_size=RAM_SIZE, probe=False)
    guest_share(dst, RAM_BASE, PROBE_SIZE)
    return dst


# ---- 1. random valid command sequences survive a migration ---------------------------

ICIDS = st.sampled_from([0, 1, 2, 3, 4, 5, 9000, 65535])
# Spread over several level-2 pages (8192 IDs each) and more than 2^14 - 1 apart at times.
DEVICE_IDS = st.builds(
    lambda l2_page, offset: l2_page * 8192 + offset,
    st.integers(0, 7),
    st.one_of(st.sampled_from([0, 8191, 1]), st.integers(0, 8191)),
)
EVENT_BITS = st.one_of(st.just(16), st.integers(1, 16))
OPS = st.sampled_from(
    [
        *("mapd", "mapd", "mapti", "mapti", "mapti", "mapi", "mapc", "unmapc"),
        *("movi", "discard", "unmapd", "int", "clear"),
    ]
)
MAX_DEVICES = 6


def event_ids(bits: int):
    top = (1 << bits) - 1
    return st.one_of(st.sampled_from([0, top]), st.integers(0, top))


def all_ites(its: VirtualITS) -> list[tuple[int, int]]:
    return sorted((d.device_id, ev) for d in its.devices.values() for ev in d.ites)


def ites_with_mapped_collection(its: VirtualITS) -> list[tuple[int, int]]:
    return [
        (dev, ev)
        for dev, ev in all_ites(its)
        if (c := its.devices[dev].ites[ev].collection) is not None and c.mapped
    ]


def random_step(its: VirtualITS, data, op: str, slots: dict[int, int], used: set[int]):
    """One valid command for ``op`` given the ITS's state, or ``None`` to skip the step."""
    pick = data.draw
    if op == "mapd":
        dev = pick(DEVICE_IDS, label="mapd dev")
        if dev not in slots and len(slots) >= MAX_DEVICES:
            dev = pick(st.sampled_from(sorted(slots)), label="mapd reuse dev")
        slots.setdefault(dev, its.layout.free_base + len(slots) * ITT_SIZE)
        return MAPD(dev, pick(EVENT_BITS, label="bits") - 1, slots[dev], True)
    if op == "unmapd":
        if not its.devices:
            return None
        return MAPD(pick(st.sampled_from(sorted(its.devices)), label="unmapd dev"), 0, 0, False)
    if op in ("mapti", "mapi"):
        devs = sorted(
            d for d, dev in its.devices.items() if op == "mapti" or dev.num_eventid_bits >= 14
        )
        if not devs:
            return None
        device = its.devices[pick(st.sampled_from(devs), label=f"{op} dev")]
        bits = device.num_eventid_bits
        if op == "mapti":
            ev = pick(event_ids(bits), label="event")
            intid = pick(st.integers(8192, 65535), label="intid")
        else:
            ev = intid = pick(st.integers(8192, min(1 << bits, 1 << 16) - 1), label="mapi event")
        if ev in device.ites or intid in used:
            return None
        used.add(intid)
        icid = pick(ICIDS, label="icid")
        if op == "mapti":
            return MAPTI(device.device_id, ev, intid, icid)
        return MAPI(device.device_id, ev, icid)
    if op == "mapc":
        return MAPC(pick(ICIDS, label="mapc icid"), pick(st.integers(0, 3), label="vcpu"), True)
    if op == "unmapc":
        in_use = {
            ite.collection.collection_id
            for d in its.devices.values()
            for ite in d.ites.values()
            if ite.collection is not None
        }
        free = sorted(set(its.collections) - in_use)
        if not free:
            return None
        return MAPC(pick(st.sampled_from(free), label="unmapc icid"), 0, False)
    if op in ("movi", "discard", "int"):
        pairs = ites_with_mapped_collection(its)
        if not pairs:
            return None
        dev, ev = pick(st.sampled_from(pairs), label=f"{op} pair")
        if op == "discard":
            return DISCARD(dev, ev)
        if op == "int":
            return INT(dev, ev)
        targets = sorted(c.collection_id for c in its.collections.values() if c.mapped)
        return MOVI(dev, ev, pick(st.sampled_from(targets), label="movi icid"))
    assert op == "clear"
    pairs = all_ites(its)
    if not pairs:
        return None
    return CLEAR(*pick(st.sampled_from(pairs), label="clear pair"))


@pytest.mark.parametrize("two_level", [False, True], ids=["flat", "two-level"])
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_commands_survive_migration(two_level: bool, data) -> None:
    src = VirtualITS(two_level_device_table=two_level)
    slots: dict[int, int] = {}
    used: set[int] = set()
    n_devices = data.draw(st.integers(1, 4), label="devices first")
    n_mapti = data.draw(st.integers(1, 10), label="MAPTIs first")
    n_steps = data.draw(st.integers(0, 20), label="steps")
    ops = ["mapd"] * n_devices + ["mapti"] * n_mapti
    ops += [data.draw(OPS, label="op") for _ in range(n_steps)]
    for op in ops:
        cmd = random_step(src, data, op, slots, used)
        if cmd is None:
            continue
        ok(src, cmd)
        if isinstance(cmd, INT):
            intid = src.devices[cmd.device_id].ites[cmd.event_id].lpi.intid
            assert src.lpis[intid].pending

    assert src.save_tables() is None
    assert src.save_pending_tables() is None
    itts = ((src.layout.free_base, len(slots) * ITT_SIZE),)
    dst, err = migrate(src, itts)
    assert err is None

    src_map = src.mappings()
    for (dev, ev), where in src_map.items():
        assert dst.translate(dev, ev) == where, (dev, ev)
    assert dst.mappings() == src_map
    assert dst.state()[0:2] == src.state()[0:2]
    # Pending bits went through the pending tables, so the LPIs agree too.
    assert dst.state()[2] == src.state()[2]

    for (dev, ev), where in src_map.items():
        if where is None:
            continue
        intid = where[0]
        ok(dst, CLEAR(dev, ev))
        assert not dst.lpis[intid].pending
        ok(dst, INT(dev, ev))
        assert dst.lpis[intid].pending


# ---- 2. byte-exact saves -------------------------------------------------------------------


def mapped_example(two_level: bool) -> tuple[VirtualITS, int, int]:
    """Devices 0 (16 EventID bits) and 20000 (5 bits); collections 0-3 (probe), 5, 9 (unmapped)."""
    its = VirtualITS(two_level_device_table=two_level)
    itt0 = its.layout.free_base
    itt1 = itt0 + ITT_SIZE
    ok(
        its,
        MAPD(0, 15, itt0, True),
        MAPD(20000, 4, itt1, True),
        MAPC(5, 2, True),
        MAPTI(0, 0, 8192, 1),
        MAPTI(0, 65535, 65535, 3),
        MAPTI(20000, 7, 9000, 9),  # ICID 9 was never MAPC'd: an unmapped collection
        MAPTI(20000, 31, 9001, 5),
    )
    return its, itt0, itt1


@pytest.mark.parametrize("two_level", [False, True], ids=["flat", "two-level"])
def test_save_writes_exact_entries(two_level: bool) -> None:
    its, itt0, itt1 = mapped_example(two_level)
    ct = its.collection_table_gpa
    garbage = 0x0123_4567_89AB_CDEF
    write_u64(its, ct + 6 * 8, garbage)  # where the terminating zero CTE goes
    write_u64(its, ct + 7 * 8, garbage)  # beyond it: never touched
    assert itt0 == 0x4100_0000

    assert its.save_tables() is None

    if two_level:
        l1 = read_u64(its, its.device_table_gpa + (20000 // L2_IDS) * 8)
        assert l1 == 1 << 63 | its.layout.device_l2_pages[2]
    # DeviceID 0 -> 20000 is more than 2^14 - 1 apart: next is capped.
    assert read_u64(its, dte_gpa(its, 0)) == dte(DTE_NEXT_CAP, itt0, 16)
    assert its.read_guest(dte_gpa(its, 0), 8) == bytes.fromhex("0f0020080000feff")
    assert read_u64(its, dte_gpa(its, 20000)) == dte(0, itt1, 5)
    assert read_u64(its, dte_gpa(its, 20000)) == (1 << 63) | ((itt1 >> 8) << 5) | 4
    assert read_u64(its, dte_gpa(its, 1)) == 0

    # EventID 0 -> 65535 is exactly the ITE cap.
    assert read_u64(its, itt0) == ite(ITE_NEXT_CAP, 8192, 1)
    assert its.read_guest(itt0, 8) == bytes.fromhex("010000200000ffff")
    assert read_u64(its, itt0 + 65535 * 8) == ite(0, 65535, 3)
    assert read_u64(its, itt1 + 7 * 8) == ite(24, 9000, 9)
    assert read_u64(its, itt1 + 31 * 8) == ite(0, 9001, 5)
    assert read_u64(its, itt1 + 8 * 8) == 0

    # CTEs packed in creation order, then one zero entry, nothing after it.
    expected = [cte(v, v) for v in range(4)] + [cte(2, 5), cte(NOT_MAPPED, 9), 0, garbage]
    assert [read_u64(its, ct + i * 8) for i in range(8)] == expected
    assert read_u64(its, ct + 5 * 8) == 0x8000_FFFF_FFFF_0009


@pytest.mark.parametrize("two_level", [False, True], ids=["flat", "two-level"])
def test_unmapped_collection_migrates_unmapped_then_maps(two_level: bool) -> None:
    """kvm-unit-tests ``its-migrate-unmapped-collection``: MAPTI to an unmapped ICID."""
    src, itt0, _ = mapped_example(two_level)
    assert src.translate(20000, 7) is None
    assert src.save_tables() is None
    dst, err = migrate(src, ((itt0, 2 * ITT_SIZE),))
    assert err is None
    assert dst.state()[0:2] == src.state()[0:2]
    assert dst.collections[9].target_addr == NOT_MAPPED
    assert dst.translate(20000, 7) is None
    assert dst.execute(INT(20000, 7).encode()) is ITSError.E_ITS_INT_UNMAPPED_INTERRUPT

    ok(dst, MAPC(9, 2, True), INVALL(9))
    assert dst.translate(20000, 7) == (9000, 2)
    ok(dst, INT(20000, 7))
    assert dst.lpis[9000].pending
    assert dst.translate(0, 65535) == (65535, 3)
    assert dst.translate(20000, 31) == (9001, 2)


# ---- 3. restore of malformed tables ----------------------------------------------------


def one_device_source() -> tuple[VirtualITS, int]:
    """Device 1 (4 EventID bits) with EventID 2 -> LPI 8200 in collection 1; saved."""
    src = VirtualITS()
    itt = src.layout.free_base
    ok(src, MAPD(1, 3, itt, True), MAPTI(1, 2, 8200, 1))
    assert src.save_tables() is None
    return src, itt


def restore_expecting(dst: VirtualITS, regs: dict[str, int], error: ITSError | None) -> None:
    before = dst.state()
    assert before == EMPTY_STATE
    assert finish_migration(dst, regs) is error
    if error is not None:
        assert dst.state() == before


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        (ite(0, 8191, 1), ITSError.EINVAL),  # pINTID below the LPI range
        (ite(0, 1, 1), ITSError.EINVAL),
        (ite(14, 8200, 1), ITSError.EINVAL),  # 2 + 14 >= 2^4
        (ite(13, 8200, 1), None),  # 2 + 13 = 15: in range, lands on a zero ITE
        (ite(0, 8200, 77), ITSError.EINVAL),  # ICID not in the collection table
        (ite(0, 8192, 3), None),
    ],
)
def test_restore_rejects_bad_ite(entry: int, error: ITSError | None) -> None:
    src, itt = one_device_source()
    dst, regs = start_migration(src, ((itt, ITT_SIZE),))
    write_u64(dst, itt + 2 * 8, entry)
    restore_expecting(dst, regs, error)
    if error is None:
        assert set(dst.devices[1].ites) == {2}


@pytest.mark.parametrize(
    ("target", "error"),
    [(4, ITSError.EINVAL), (0xFFFF_FFFE, ITSError.EINVAL), (NOT_MAPPED, None), (3, None)],
)
def test_restore_checks_cte_target(target: int, error: ITSError | None) -> None:
    src, itt = one_device_source()
    dst, regs = start_migration(src, ((itt, ITT_SIZE),))
    write_u64(dst, src.collection_table_gpa + 4 * 8, cte(target, 6))
    restore_expecting(dst, regs, error)
    if error is None:
        assert dst.collections[6].target_addr == target
        assert dst.translate(1, 2) == (8200, 1)


def test_restore_rejects_duplicate_icid() -> None:
    src, itt = one_device_source()
    dst, regs = start_migration(src, ((itt, ITT_SIZE),))
    write_u64(dst, src.collection_table_gpa + 4 * 8, cte(2, 1))
    restore_expecting(dst, regs, ITSError.EEXIST)


@pytest.mark.parametrize(("icid", "error"), [(9000, ITSError.EINVAL), (8191, None)])
def test_restore_rejects_icid_beyond_collection_table(icid: int, error: ITSError | None) -> None:
    src, itt = one_device_source()
    regs = src.get_regs()
    regs["GITS_BASER1"] = r.make_baser(src.collection_table_gpa, r.SZ_64K)  # 8192 CTEs
    dst, regs = start_migration(src, ((itt, ITT_SIZE),), regs=regs)
    write_u64(dst, src.collection_table_gpa + 4 * 8, cte(0, icid))
    restore_expecting(dst, regs, error)
    if error is None:
        assert list(dst.collections) == [0, 1, 2, 3, icid]


@pytest.mark.parametrize("itt_bad", [RAM_BASE + RAM_SIZE, RAM_BASE - 0x10000])
def test_restore_dte_with_itt_outside_ram_is_efault(itt_bad: int) -> None:
    """vgic_its_restore_itt reads the ITT before any ITE check runs: kvm_read_guest fails,
    -EFAULT (the -EINVAL of vgic_its_check_event_id needs an ITE read first). The good
    device restored before it is freed with everything else."""
    src, itt = one_device_source()
    dst, regs = start_migration(src, ((itt, ITT_SIZE),))
    write_u64(dst, dte_gpa(dst, 1), dte(4, itt, 4))  # device 1 now points at device 5
    write_u64(dst, dte_gpa(dst, 5), dte(0, itt_bad, 4))
    restore_expecting(dst, regs, ITSError.EFAULT)
    assert dst.lpis == {}
    assert dst.memory.faults == []  # outside every memslot, not a stage-2 fault


def test_restore_good_device_then_bad_one_frees_everything() -> None:
    """KVM v6.13+ frees every device and collection on failure. The pending bit that the
    good device's LPI consumed while being restored stays cleared in guest memory."""
    src = VirtualITS()
    itt1 = src.layout.free_base
    itt2 = itt1 + ITT_SIZE
    ok(src, MAPD(1, 3, itt1, True), MAPD(2, 3, itt2, True))
    ok(src, MAPTI(1, 0, 8200, 1), MAPTI(1, 1, 8201, 2), MAPTI(2, 0, 8202, 3))
    ok(src, INT(1, 0))
    assert src.save_tables() is None
    assert src.save_pending_tables() is None
    pend = src.layout.pend_tables[1] + 8200 // 8
    assert src.read_guest(pend, 1)[0] & 1 << (8200 % 8)

    dst, regs = start_migration(src, ((itt1, 2 * ITT_SIZE),))
    write_u64(dst, itt2, ite(0, 8202, 42))  # ICID 42 does not exist
    restore_expecting(dst, regs, ITSError.EINVAL)
    assert dst.devices == {}
    assert dst.collections == {}
    assert dst.lpis == {}
    assert dst.read_guest(pend, 1)[0] & 1 << (8200 % 8) == 0


def test_restore_protected_collection_table_page_faults() -> None:
    src, itt = one_device_source()
    dst = protected_destination()
    guest_share(dst, itt, PAGE_SIZE)
    guest_unshare(dst, src.collection_table_gpa)
    dst, regs = start_migration(src, ((itt, ITT_SIZE),), dst=dst)
    assert dst.memory.faults == []
    restore_expecting(dst, regs, ITSError.EFAULT)
    assert len(dst.memory.faults) == 1
    fault = dst.memory.faults[0]
    assert isinstance(fault, Stage2Fault)
    assert fault.pfn == src.collection_table_gpa >> PAGE_SHIFT
    assert not fault.record.write
    assert fault.record.actor.endswith("kvm-vits")


def test_restore_protected_private_itt_faults() -> None:
    """Mainline Linux keeps small ITTs in memory it never shares: restore cannot read them."""
    src, itt = one_device_source()
    dst, regs = start_migration(src, ((itt, ITT_SIZE),), dst=protected_destination())
    restore_expecting(dst, regs, ITSError.EFAULT)
    assert [f.pfn for f in dst.memory.faults] == [itt >> PAGE_SHIFT]


def test_restore_protected_with_shared_itt_works() -> None:
    src, itt = one_device_source()
    dst = protected_destination()
    guest_share(dst, itt, PAGE_SIZE)
    dst, err = migrate(src, ((itt, ITT_SIZE),), dst=dst)
    assert err is None
    assert dst.state()[0:2] == src.state()[0:2]
    assert dst.memory.faults == []


def test_two_level_dte_next_zero_ends_whole_walk() -> None:
    """handle_l1_dte returns the level-2 scan's result: running off a level-2 page (1)
    moves on to the next level-1 entry, an invalid level-1 entry is stepped over, but 0
    (a DTE with next == 0) ends the level-1 scan too, so a valid DTE in a later level-2
    page is never read."""
    src = VirtualITS(two_level_device_table=True)
    itt = src.layout.free_base
    ok(src, MAPD(5, 1, itt, True), MAPD(20000, 1, itt + 0x100, True), MAPTI(20000, 1, 8300, 0))
    assert src.save_tables() is None
    assert read_u64(src, dte_gpa(src, 5)) == dte(DTE_NEXT_CAP, itt, 2)  # leaves its L2 page

    dst, regs = start_migration(src, ((itt, PAGE_SIZE),))
    write_u64(dst, dst.device_table_gpa + 1 * 8, 0)  # no level-2 page for 8192..16383
    restore_expecting(dst, regs, None)
    assert sorted(dst.devices) == [5, 20000]
    assert dst.translate(20000, 1) == (8300, 0)

    dst, regs = start_migration(src, ((itt, PAGE_SIZE),))
    write_u64(dst, dte_gpa(dst, 5), dte(0, itt, 2))
    restore_expecting(dst, regs, None)
    assert sorted(dst.devices) == [5]
    assert dst.translate(20000, 1) is None


def test_invalid_entries_between_valid_ones_are_stepped_over() -> None:
    """An invalid DTE (V=0) or ITE (pINTID 0) makes the scan look at the very next entry,
    whatever its other bits say, including next == 0."""
    src = VirtualITS()
    itt3 = src.layout.free_base
    itt6 = itt3 + 0x1000
    assert src.save_tables() is None  # only the probe's CTEs
    dst, regs = start_migration(src)
    dt = dst.device_table_gpa
    write_u64(dst, dt + 3 * 8, dte(1, itt3, 6))
    write_u64(dst, dt + 4 * 8, dte(0, itt3, 6, valid=False))
    write_u64(dst, dt + 5 * 8, dte(100, itt3, 6, valid=False))
    write_u64(dst, dt + 6 * 8, dte(0, itt6, 1))
    write_u64(dst, dt + 9 * 8, dte(0, itt6, 1))  # after the last one: not reached
    write_u64(dst, itt3 + 1 * 8, ite(1, 8200, 2))
    write_u64(dst, itt3 + 2 * 8, ite(0, 0, 3))
    write_u64(dst, itt3 + 3 * 8, ite(40, 0, 1))
    write_u64(dst, itt3 + 4 * 8, ite(0, 8201, 0))
    write_u64(dst, itt3 + 5 * 8, ite(0, 8202, 0))  # after next == 0: not reached
    restore_expecting(dst, regs, None)
    assert sorted(dst.devices) == [3, 6]
    assert sorted(dst.devices[3].ites) == [1, 4]
    assert dst.devices[6].ites == {}
    assert dst.translate(3, 1) == (8200, 2)
    assert dst.translate(3, 4) == (8201, 0)


def test_stale_ites_reachable_by_the_scan_come_back_live() -> None:
    """KVM behaviour: save writes only live ITEs and never clears an ITT, and restore
    treats any non-zero pINTID it meets as a live ITE. After MAPD remaps a device onto
    its old ITT, a linear scan from EventID 0 picks up the previous save's ITEs and
    follows their next offsets (here past the live ITE, which is then lost); ITEs that
    a live next offset jumps over, or that lie past next == 0, stay dead."""
    src = VirtualITS()
    itt = src.layout.free_base
    ok(src, MAPD(1, 3, itt, True))
    ok(src, *(MAPTI(1, ev, 8300 + ev, 1) for ev in (0, 1, 2, 3, 12)))
    assert src.save_tables() is None
    assert read_u64(src, itt + 3 * 8) == ite(9, 8303, 1)

    ok(src, MAPD(1, 3, itt, True), MAPTI(1, 5, 8400, 2))  # remap: ITEs gone, ITT not cleared
    assert src.save_tables() is None
    dst, err = migrate(src, ((itt, PAGE_SIZE),))
    assert err is None
    assert sorted(src.devices[1].ites) == [5]
    assert sorted(dst.devices[1].ites) == [0, 1, 2, 3, 12]
    assert dst.translate(1, 0) == (8300, 1)
    assert dst.translate(1, 5) is None

    ok(src, MAPD(1, 3, itt, True), MAPTI(1, 0, 8500, 3), MAPTI(1, 9, 8509, 3))
    assert src.save_tables() is None
    dst, err = migrate(src, ((itt, PAGE_SIZE),))
    assert err is None
    assert sorted(dst.devices[1].ites) == [0, 9]
    assert dst.translate(1, 0) == (8500, 3)


def test_discard_and_mapd_v0_clear_entries_saved_earlier() -> None:
    """KVM v6.13+ zeroes the ITE on DISCARD and the DTE on MAPD V=0 in guest memory, so a
    table saved earlier does not bring them back on the next restore."""
    src = VirtualITS()
    itt1 = src.layout.free_base
    itt2 = itt1 + PAGE_SIZE
    ok(src, MAPD(1, 3, itt1, True), MAPD(2, 3, itt2, True))
    ok(src, MAPTI(1, 0, 8200, 1), MAPTI(2, 0, 8202, 2), MAPTI(2, 1, 8203, 2))
    assert src.save_tables() is None
    assert read_u64(src, dte_gpa(src, 1)) == dte(1, itt1, 4)
    assert read_u64(src, itt2) == ite(1, 8202, 2)

    ok(src, MAPD(1, 0, 0, False), DISCARD(2, 0))
    assert read_u64(src, dte_gpa(src, 1)) == 0
    assert read_u64(src, itt2) == 0
    assert src.save_tables() is None
    dst, err = migrate(src, ((itt1, 2 * PAGE_SIZE),))
    assert err is None
    assert dst.state() == src.state()
    assert sorted(dst.mappings()) == [(2, 1)]


# ---- 4. save paths -----------------------------------------------------------------------


def test_save_with_basers_invalid_is_a_noop() -> None:
    its = VirtualITS()
    ok(its, MAPD(1, 3, its.layout.free_base, True), MAPTI(1, 0, 8200, 2))
    ct = its.collection_table_gpa
    marker = 0x5A5A_5A5A_5A5A_5A5A
    write_u64(its, ct, marker)
    its.mmio_write(r.GITS_CTLR, 0)
    its.mmio_write(r.GITS_BASER0, its.baser_device_table & ~r.GITS_BASER_VALID)
    its.mmio_write(r.GITS_BASER1, its.baser_coll_table & ~r.GITS_BASER_VALID)
    assert its.devices == {} and its.collections == {}  # Valid=0 frees them
    log_len = len(its.memory.log)
    assert its.save_tables() is None
    assert not any(rec.write for rec in its.memory.log[log_len:])
    assert read_u64(its, ct) == marker

    its.mmio_write(r.GITS_BASER1, its.baser_coll_table | r.GITS_BASER_VALID)
    assert its.save_tables() is None
    assert read_u64(its, ct) == 0  # an empty collection table: just the terminator


def test_save_into_private_itt_is_efault() -> None:
    its = VirtualITS(memory=protected_memory(), ram_size=RAM_SIZE)
    itt = its.layout.free_base
    ok(its, MAPD(1, 3, itt, True), MAPTI(1, 2, 8200, 1))
    assert its.memory.faults == []
    assert its.save_tables() is ITSError.EFAULT
    assert len(its.memory.faults) == 1
    fault = its.memory.faults[0]
    assert fault.record.write and fault.record.addr == itt + 2 * 8
    assert read_u64(its, dte_gpa(its, 1)) == 0  # the DTE comes after its ITT


# ---- 5. pending tables -------------------------------------------------------------------


def test_pending_tables_save_and_restore() -> None:
    src = VirtualITS()
    itt = src.layout.free_base
    ok(src, MAPD(1, 3, itt, True), MAPTI(1, 0, 8200, 2), MAPTI(1, 1, 8201, 3))
    pend2 = src.layout.pend_tables[2] + 8200 // 8
    pend3 = src.layout.pend_tables[3] + 8201 // 8
    # A stale bit for 8201 and one for 8203 (no LPI) in the same byte.
    src.write_guest(pend3, bytes([1 << (8201 % 8) | 1 << (8203 % 8)]))
    ok(src, INT(1, 0))
    assert src.lpis[8200].pending
    assert not src.lpis[8201].pending
    assert src.read_guest(pend2, 1) == b"\0"

    assert src.save_pending_tables() is None
    assert src.read_guest(pend2, 1)[0] == 1 << (8200 % 8)
    assert src.read_guest(pend3, 1)[0] == 1 << (8203 % 8)
    for vcpu in (0, 1):
        assert src.read_guest(src.layout.pend_tables[vcpu] + 8200 // 8, 1) == b"\0"

    assert src.save_tables() is None
    dst, err = migrate(src, ((itt, PAGE_SIZE),))
    assert err is None
    assert dst.lpis[8200].pending
    assert not dst.lpis[8201].pending
    assert dst.read_guest(pend2, 1) == b"\0"  # consumed by the restore
    assert dst.read_guest(pend3, 1)[0] == 1 << (8203 % 8)
    assert dst.state()[2] == src.state()[2]
