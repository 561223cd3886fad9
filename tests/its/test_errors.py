"""Every error a command handler returns, driven through the queue, and the handlers' effects.

Expectations follow KVM v6.13+ arch/arm64/kvm/vgic/vgic-its.c (the order of checks in each
``vgic_its_cmd_handle_*``) and the E_ITS_* values of include/linux/irqchip/arm-gic-v3.h.
MOVALL follows the architecture (only LPIs targeting RDbase1 move).
"""

from __future__ import annotations

import pytest

from sim.its import (
    CLEAR,
    DISCARD,
    INT,
    INV,
    INVALL,
    MAPC,
    MAPD,
    MAPI,
    MAPTI,
    MOVALL,
    MOVI,
    SYNC,
    ITSError,
    VirtualITS,
)
from sim.its import regs as r

E = ITSError

# include/linux/irqchip/arm-gic-v3.h
E_ITS_CODES = {
    "E_ITS_MOVI_UNMAPPED_INTERRUPT": 0x010107,
    "E_ITS_MOVI_UNMAPPED_COLLECTION": 0x010109,
    "E_ITS_INT_UNMAPPED_INTERRUPT": 0x010307,
    "E_ITS_CLEAR_UNMAPPED_INTERRUPT": 0x010507,
    "E_ITS_MAPD_DEVICE_OOR": 0x010801,
    "E_ITS_MAPD_ITTSIZE_OOR": 0x010802,
    "E_ITS_MAPC_PROCNUM_OOR": 0x010902,
    "E_ITS_MAPC_COLLECTION_OOR": 0x010903,
    "E_ITS_MAPTI_UNMAPPED_DEVICE": 0x010A04,
    "E_ITS_MAPTI_ID_OOR": 0x010A05,
    "E_ITS_MAPTI_PHYSICALID_OOR": 0x010A06,
    "E_ITS_INV_UNMAPPED_INTERRUPT": 0x010C07,
    "E_ITS_INVALL_UNMAPPED_COLLECTION": 0x010D09,
    "E_ITS_MOVALL_PROCNUM_OOR": 0x010E01,
    "E_ITS_DISCARD_UNMAPPED_INTERRUPT": 0x010F07,
}
ERRNOS = {"EFAULT": -14, "EINVAL": -22, "EEXIST": -17, "EBUSY": -16, "ENODEV": -19, "ENXIO": -6}

DEV = 1
ITT_BITS = 4  # MAPD Size 3: 16 events


def ex(its: VirtualITS, cmd) -> ITSError | None:
    return its.execute(cmd.encode())


def setup_its(**kwargs) -> VirtualITS:
    """Device 1 with events 0, 1, 2 -> LPIs 8192, 8193, 8194 on collections (= vCPUs) 0, 1, 2."""
    its = VirtualITS(**kwargs)
    assert ex(its, MAPD(DEV, ITT_BITS - 1, itt(its), True)) is None
    for ev in range(3):
        assert ex(its, MAPTI(DEV, ev, 8192 + ev, ev)) is None
    assert its.mappings() == {(DEV, 0): (8192, 0), (DEV, 1): (8193, 1), (DEV, 2): (8194, 2)}
    return its


def itt(its: VirtualITS, n: int = 0) -> int:
    return its.layout.free_base + n * 0x10000


def ram_end(its: VirtualITS) -> int:
    return its.kvm.ram_base + its.kvm.ram_size


def assert_rejected(its: VirtualITS, cmd, error: ITSError) -> None:
    """``cmd`` returns exactly ``error``, is logged with it, and changes no ITS state."""
    before = its.state()
    log_len = len(its.command_log)
    assert ex(its, cmd) is error
    assert len(its.command_log) == log_len + 1
    assert its.command_log[-1].command == cmd
    assert its.command_log[-1].error is error
    assert its.state() == before
    assert its.mmio_read(r.GITS_CREADR) == its.mmio_read(r.GITS_CWRITER)


# ---- codes ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "code"), E_ITS_CODES.items())
def test_e_its_codes_match_arm_gic_v3_h(name, code):
    assert ITSError[name].code == code
    assert ITSError[name].value == name


def test_there_are_exactly_fifteen_e_its_codes():
    assert {e.name for e in ITSError if e.name.startswith("E_ITS_")} == set(E_ITS_CODES)


@pytest.mark.parametrize(("name", "code"), ERRNOS.items())
def test_errno_values(name, code):
    assert ITSError[name].code == code
    assert ITSError[name].value == f"-{name}"


# ---- MOVI ----------------------------------------------------------------------------


def test_movi_unmapped_interrupt():
    its = setup_its()
    assert_rejected(its, MOVI(DEV, 7, 0), E.E_ITS_MOVI_UNMAPPED_INTERRUPT)
    assert_rejected(its, MOVI(99, 0, 0), E.E_ITS_MOVI_UNMAPPED_INTERRUPT)
    assert E.E_ITS_MOVI_UNMAPPED_INTERRUPT.code == 0x010107


def test_movi_unmapped_collection_of_the_ite():
    its = setup_its()
    assert ex(its, MAPC(1, 0, False)) is None  # the ITE's collection goes away
    assert its.translate(DEV, 1) is None
    assert_rejected(its, MOVI(DEV, 1, 0), E.E_ITS_MOVI_UNMAPPED_COLLECTION)
    assert its.translate(DEV, 1) is None
    assert its.lpis[8193].target_vcpu == 1  # KVM leaves irq->target_vcpu alone


def test_movi_unmapped_new_collection():
    its = setup_its()
    assert_rejected(its, MOVI(DEV, 0, 42), E.E_ITS_MOVI_UNMAPPED_COLLECTION)  # never mapped
    # ICID 50 exists but is unmapped (created by MAPTI).
    assert ex(its, MAPTI(DEV, 3, 8195, 50)) is None
    assert 50 in its.collections and not its.collections[50].mapped
    assert_rejected(its, MOVI(DEV, 0, 50), E.E_ITS_MOVI_UNMAPPED_COLLECTION)
    assert its.translate(DEV, 0) == (8192, 0)
    assert E.E_ITS_MOVI_UNMAPPED_COLLECTION.code == 0x010109


# ---- INT / CLEAR ---------------------------------------------------------------------


def test_int_unmapped_interrupt():
    its = setup_its()
    assert_rejected(its, INT(DEV, 9), E.E_ITS_INT_UNMAPPED_INTERRUPT)
    assert_rejected(its, INT(98, 0), E.E_ITS_INT_UNMAPPED_INTERRUPT)
    # An ITE whose collection was unmapped cannot be triggered either.
    assert ex(its, MAPC(2, 2, False)) is None
    assert_rejected(its, INT(DEV, 2), E.E_ITS_INT_UNMAPPED_INTERRUPT)
    assert its.lpis[8194].pending is False
    assert E.E_ITS_INT_UNMAPPED_INTERRUPT.code == 0x010307


def test_clear_unmapped_interrupt():
    its = setup_its()
    assert_rejected(its, CLEAR(DEV, 9), E.E_ITS_CLEAR_UNMAPPED_INTERRUPT)
    assert_rejected(its, CLEAR(97, 0), E.E_ITS_CLEAR_UNMAPPED_INTERRUPT)
    assert E.E_ITS_CLEAR_UNMAPPED_INTERRUPT.code == 0x010507


def test_clear_works_with_the_collection_unmapped():
    its = setup_its()
    assert ex(its, INT(DEV, 2)) is None
    assert ex(its, MAPC(2, 2, False)) is None
    assert its.lpis[8194].pending is True
    assert ex(its, CLEAR(DEV, 2)) is None  # CLEAR has no collection check
    assert its.lpis[8194].pending is False


def test_int_sets_pending_and_clear_clears_it():
    its = setup_its()
    assert its.lpis[8193].pending is False
    assert ex(its, INT(DEV, 1)) is None
    assert its.lpis[8193].pending is True
    assert its.lpis[8192].pending is False
    assert ex(its, CLEAR(DEV, 1)) is None
    assert its.lpis[8193].pending is False


def test_int_to_vcpu_with_lpis_disabled_is_ebusy():
    its = setup_its()
    its.set_lpis_enabled(1, False)
    assert_rejected(its, INT(DEV, 1), E.EBUSY)
    assert its.lpis[8193].pending is False
    assert ex(its, INT(DEV, 0)) is None  # vCPU 0 still has LPIs enabled
    assert E.EBUSY.code == -16


def test_int_on_a_vm_without_lpis_enabled_is_ebusy():
    its = setup_its(lpis_enabled=False)
    for ev in range(3):
        assert_rejected(its, INT(DEV, ev), E.EBUSY)
    its.set_lpis_enabled(2, True)
    assert ex(its, INT(DEV, 2)) is None
    assert its.lpis[8194].pending is True


# ---- MAPD ----------------------------------------------------------------------------


def test_mapd_device_oor_flat_table():
    its = setup_its()
    for cmd in (
        MAPD(1 << 16, 3, itt(its, 1), True),
        MAPD(0xFFFFFFFF, 3, itt(its, 1), True),
        MAPD(1 << 16, 3, 0, False),  # checked for V=0 too
    ):
        assert_rejected(its, cmd, E.E_ITS_MAPD_DEVICE_OOR)
    assert ex(its, MAPD(0xFFFF, 3, itt(its, 1), True)) is None
    assert 0xFFFF in its.devices
    assert E.E_ITS_MAPD_DEVICE_OOR.code == 0x010801


def test_mapd_device_oor_two_level_invalid_l1_entry():
    its = VirtualITS(two_level_device_table=True)
    ids_per_l2 = r.SZ_64K // 8
    mapped = 3 * ids_per_l2 + 1
    assert ex(its, MAPD(mapped, 3, itt(its), True)) is None
    its.write_guest(its.device_table_gpa + 3 * 8, bytes(8))  # L1 entry 3: Valid=0
    l2_slot = its.layout.device_l2_pages[3] + 5 * 8
    its.write_guest(l2_slot, b"\xa5" * 8)
    assert_rejected(its, MAPD(3 * ids_per_l2 + 5, 3, itt(its, 1), True), E.E_ITS_MAPD_DEVICE_OOR)
    assert_rejected(its, MAPD(3 * ids_per_l2 + 5, 0, 0, False), E.E_ITS_MAPD_DEVICE_OOR)
    assert its.read_guest(l2_slot, 8) == b"\xa5" * 8  # no zero DTE written
    # Even unmapping a device that is mapped fails: the ID check comes first.
    assert_rejected(its, MAPD(mapped, 0, 0, False), E.E_ITS_MAPD_DEVICE_OOR)
    assert mapped in its.devices
    # Neighbouring L1 entries still work.
    assert ex(its, MAPD(2 * ids_per_l2 + 5, 3, itt(its, 2), True)) is None
    assert ex(its, MAPD(4 * ids_per_l2, 3, itt(its, 3), True)) is None


def test_mapd_ittsize_oor():
    its = setup_its()
    for size in (16, 17, 31):
        assert_rejected(its, MAPD(2, size, itt(its, 1), True), E.E_ITS_MAPD_ITTSIZE_OOR)
        # A mapped device keeps its ITEs: the size check precedes the free.
        assert_rejected(its, MAPD(DEV, size, itt(its, 1), True), E.E_ITS_MAPD_ITTSIZE_OOR)
    assert 2 not in its.devices
    assert ex(its, MAPD(2, 15, itt(its, 1), True)) is None
    assert its.devices[2].num_eventid_bits == 16
    assert E.E_ITS_MAPD_ITTSIZE_OOR.code == 0x010802


def test_mapd_v0_with_big_size_is_not_an_error():
    its = setup_its()
    assert ex(its, MAPD(DEV, 31, itt(its), False)) is None
    assert DEV not in its.devices
    assert its.lpis == {}
    assert ex(its, MAPD(3, 16, 0, False)) is None  # never mapped: still fine


def test_mapd_on_a_mapped_device_drops_its_ites():
    its = setup_its()
    assert ex(its, MAPD(DEV, 4, itt(its, 1), True)) is None
    dev = its.devices[DEV]
    assert dev.ites == {}
    assert dev.itt_addr == itt(its, 1)
    assert dev.num_eventid_bits == 5
    assert its.lpis == {}
    assert its.mappings() == {}
    assert ex(its, INT(DEV, 0)) is E.E_ITS_INT_UNMAPPED_INTERRUPT


def test_mapd_v0_writes_a_zero_dte():
    its = setup_its()
    slot = its.device_table_gpa + DEV * 8
    its.write_guest(slot, b"\x5a" * 8)
    neighbour = its.device_table_gpa + (DEV + 1) * 8
    its.write_guest(neighbour, b"\x3c" * 8)
    assert ex(its, MAPD(DEV, 0, 0, False)) is None
    assert its.read_guest(slot, 8) == bytes(8)
    assert its.read_guest(neighbour, 8) == b"\x3c" * 8
    assert DEV not in its.devices
    # Also for a device that was never mapped.
    slot = its.device_table_gpa + 500 * 8
    its.write_guest(slot, b"\xff" * 8)
    assert ex(its, MAPD(500, 0, 0, False)) is None
    assert its.read_guest(slot, 8) == bytes(8)


def test_mapd_v0_writes_a_zero_dte_in_the_level2_page():
    its = VirtualITS(two_level_device_table=True)
    dev = 2 * (r.SZ_64K // 8) + 7
    slot = its.layout.device_l2_pages[2] + 7 * 8
    its.write_guest(slot, b"\x5a" * 8)
    assert ex(its, MAPD(dev, 0, 0, False)) is None
    assert its.read_guest(slot, 8) == bytes(8)


# ---- MAPC ----------------------------------------------------------------------------


def test_mapc_procnum_oor():
    its = setup_its(nr_vcpus=4)
    assert_rejected(its, MAPC(7, 4, True), E.E_ITS_MAPC_PROCNUM_OOR)
    assert_rejected(its, MAPC(7, 0xFFFFFFFF, True), E.E_ITS_MAPC_PROCNUM_OOR)
    assert 7 not in its.collections
    # Remapping an existing collection to a bad target leaves it where it was.
    assert_rejected(its, MAPC(1, 4, True), E.E_ITS_MAPC_PROCNUM_OOR)
    assert its.translate(DEV, 1) == (8193, 1)
    assert ex(its, MAPC(7, 3, True)) is None
    assert E.E_ITS_MAPC_PROCNUM_OOR.code == 0x010902


def test_mapc_v0_with_a_bad_target_is_accepted():
    its = setup_its(nr_vcpus=4)
    assert ex(its, MAPC(1, 99, False)) is None
    assert 1 not in its.collections
    assert its.translate(DEV, 1) is None
    assert its.devices[DEV].ites[1].collection is None
    assert ex(its, MAPC(33, 0xFFFFFFFF, False)) is None  # unknown ICID: nothing to do


def _its_with_one_page_collection_table() -> VirtualITS:
    its = VirtualITS(its_enabled=False)
    its.mmio_write(r.GITS_BASER1, r.make_baser(its.layout.collection_table, r.SZ_64K))
    its.mmio_write(r.GITS_CTLR, r.GITS_CTLR_ENABLE)
    assert its.mmio_read(r.GITS_CTLR) & r.GITS_CTLR_ENABLE
    assert its.collections == {}
    return its


def test_mapc_collection_oor():
    its = _its_with_one_page_collection_table()  # 64 KiB / 8 bytes = 8192 collections
    for icid in (8192, 9000, 0xFFFF):
        assert_rejected(its, MAPC(icid, 0, True), E.E_ITS_MAPC_COLLECTION_OOR)
    assert ex(its, MAPC(8191, 1, True)) is None
    assert its.collections[8191].target_addr == 1
    assert E.E_ITS_MAPC_COLLECTION_OOR.code == 0x010903


def test_mapc_collection_in_range_with_full_table():
    its = VirtualITS()
    assert ex(its, MAPC(0xFFFF, 0, True)) is None


def test_mapti_unknown_out_of_range_icid_is_mapc_collection_oor():
    its = _its_with_one_page_collection_table()
    assert ex(its, MAPD(DEV, 15, itt(its), True)) is None  # 16 EventID bits, for MAPI
    assert_rejected(its, MAPTI(DEV, 0, 8192, 8192), E.E_ITS_MAPC_COLLECTION_OOR)
    assert_rejected(its, MAPI(DEV, 8192, 0xFFFF), E.E_ITS_MAPC_COLLECTION_OOR)
    assert its.collections == {}
    assert its.lpis == {}
    assert its.devices[DEV].ites == {}


def test_mapc_remap_retargets_its_lpis():
    its = setup_its()
    assert ex(its, MAPTI(DEV, 5, 8200, 1)) is None
    assert ex(its, MAPC(1, 3, True)) is None
    assert its.translate(DEV, 1) == (8193, 3)
    assert its.translate(DEV, 5) == (8200, 3)
    assert its.translate(DEV, 0) == (8192, 0)
    assert its.translate(DEV, 2) == (8194, 2)


# ---- MAPTI / MAPI --------------------------------------------------------------------


def test_mapti_unmapped_device():
    its = setup_its()
    assert_rejected(its, MAPTI(9, 0, 8200, 0), E.E_ITS_MAPTI_UNMAPPED_DEVICE)
    assert_rejected(its, MAPI(9, 8200, 0), E.E_ITS_MAPTI_UNMAPPED_DEVICE)
    # The device check comes first.
    assert_rejected(its, MAPTI(9, 1 << 20, 5, 1 << 15), E.E_ITS_MAPTI_UNMAPPED_DEVICE)
    assert E.E_ITS_MAPTI_UNMAPPED_DEVICE.code == 0x010A04


def test_mapti_id_oor():
    its = setup_its()
    assert_rejected(its, MAPTI(DEV, 1 << ITT_BITS, 8200, 0), E.E_ITS_MAPTI_ID_OOR)
    assert_rejected(its, MAPTI(DEV, 0xFFFFFFFF, 8200, 0), E.E_ITS_MAPTI_ID_OOR)
    assert_rejected(its, MAPI(DEV, 8200, 0), E.E_ITS_MAPTI_ID_OOR)  # EventID 8200 >= 16
    # The EventID check precedes the pINTID check.
    assert_rejected(its, MAPTI(DEV, 1 << ITT_BITS, 5, 0), E.E_ITS_MAPTI_ID_OOR)
    assert ex(its, MAPTI(DEV, (1 << ITT_BITS) - 1, 8200, 0)) is None
    assert E.E_ITS_MAPTI_ID_OOR.code == 0x010A05


def test_mapti_id_oor_when_the_itt_slot_is_not_guest_memory():
    its = setup_its()
    # 64-event ITT in the last 256 bytes of RAM: only events 0..31 are in guest memory.
    assert ex(its, MAPD(2, 5, ram_end(its) - 0x100, True)) is None
    assert ex(its, MAPTI(2, 31, 8300, 0)) is None
    assert_rejected(its, MAPTI(2, 32, 8301, 0), E.E_ITS_MAPTI_ID_OOR)
    assert_rejected(its, MAPTI(2, 63, 8301, 0), E.E_ITS_MAPTI_ID_OOR)
    # MAPD does not validate the ITT address; MAPTI does.
    assert ex(its, MAPD(3, 3, 0x1000, True)) is None
    assert_rejected(its, MAPTI(3, 0, 8302, 0), E.E_ITS_MAPTI_ID_OOR)


def test_mapti_physicalid_oor():
    its = setup_its()
    for intid in (0, 31, 8191, 1 << 16, 0xFFFFFFFF):
        assert_rejected(its, MAPTI(DEV, 5, intid, 0), E.E_ITS_MAPTI_PHYSICALID_OOR)
    # A re-MAPTI of an existing event still reports a bad pINTID (checked before the ITE).
    assert_rejected(its, MAPTI(DEV, 0, 8191, 0), E.E_ITS_MAPTI_PHYSICALID_OOR)
    assert ex(its, MAPTI(DEV, 5, (1 << 16) - 1, 0)) is None
    assert ex(its, MAPTI(DEV, 6, 8192 + 100, 0)) is None
    assert E.E_ITS_MAPTI_PHYSICALID_OOR.code == 0x010A06


def test_mapti_physicalid_oor_follows_propbaser_idbits():
    its = VirtualITS(lpi_id_bits=14)
    assert ex(its, MAPD(DEV, 3, itt(its), True)) is None
    assert ex(its, MAPTI(DEV, 0, (1 << 14) - 1, 0)) is None
    assert_rejected(its, MAPTI(DEV, 1, 1 << 14, 0), E.E_ITS_MAPTI_PHYSICALID_OOR)


def test_mapi_uses_the_event_id_as_intid():
    its = setup_its()
    assert ex(its, MAPD(2, 15, itt(its, 1), True)) is None
    assert_rejected(its, MAPI(2, 100, 0), E.E_ITS_MAPTI_PHYSICALID_OOR)
    assert_rejected(its, MAPI(2, 8191, 0), E.E_ITS_MAPTI_PHYSICALID_OOR)
    assert ex(its, MAPI(2, 8200, 3)) is None
    assert its.translate(2, 8200) == (8200, 3)


def test_mapti_on_existing_event_is_ignored():
    its = setup_its()
    before = its.state()
    assert ex(its, MAPTI(DEV, 0, 9000, 3)) is None
    assert ex(its, MAPI(DEV, 1, 3)) is E.E_ITS_MAPTI_PHYSICALID_OOR  # EventID 1 < 8192
    assert its.state() == before
    assert its.translate(DEV, 0) == (8192, 0)
    assert 9000 not in its.lpis
    assert its.lpis[8192].refcount == 1
    assert 3 in its.collections  # no collection was touched


def test_mapti_unknown_icid_creates_an_unmapped_collection():
    its = setup_its()
    assert 77 not in its.collections
    assert ex(its, MAPTI(DEV, 5, 8300, 77)) is None
    assert 77 in its.collections
    assert not its.collections[77].mapped
    assert its.collections[77].target_addr == r.COLLECTION_NOT_MAPPED
    assert its.translate(DEV, 5) is None
    assert its.lpis[8300].target_vcpu is None
    assert ex(its, INT(DEV, 5)) is E.E_ITS_INT_UNMAPPED_INTERRUPT
    assert ex(its, MAPC(77, 2, True)) is None
    assert its.translate(DEV, 5) == (8300, 2)
    assert its.lpis[8300].target_vcpu == 2
    assert ex(its, INT(DEV, 5)) is None


def test_mapti_shares_an_existing_lpi_without_rereading_or_retargeting_on_6_1():
    its = setup_its(kernel="6.1")
    prop = its.layout.prop_table + 8192 - r.GIC_LPI_OFFSET
    its.write_guest(prop, bytes([0x40]))  # would disable it and change its priority
    assert ex(its, MAPD(2, 3, itt(its, 1), True)) is None
    assert ex(its, MAPTI(2, 0, 8192, 3)) is None
    lpi = its.lpis[8192]
    assert lpi.refcount == 2
    assert its.devices[2].ites[0].lpi is its.devices[DEV].ites[0].lpi
    assert lpi.target_vcpu == 0  # vgic_add_lpi returns the existing irq as is
    assert (lpi.priority, lpi.enabled) == (0xA0, True)
    assert ex(its, DISCARD(DEV, 0)) is None
    assert its.lpis[8192].refcount == 1
    assert ex(its, DISCARD(2, 0)) is None
    assert 8192 not in its.lpis


def test_mapti_takes_the_pending_bit_and_clears_it_in_guest_memory():
    its = setup_its()
    intid = 8300
    byte_addr = its.layout.pend_tables[2] + intid // 8
    other = 1 << ((intid + 1) % 8)
    its.write_guest(byte_addr, bytes([1 << (intid % 8) | other]))
    assert ex(its, MAPTI(DEV, 5, intid, 2)) is None
    assert its.lpis[intid].pending is True
    assert its.read_guest(byte_addr, 1) == bytes([other])  # only the consumed bit cleared
    # The pending table of the *target* vCPU is read: vCPU 1 has nothing for 8301.
    its.write_guest(its.layout.pend_tables[2] + 8301 // 8, b"\xff")
    assert ex(its, MAPTI(DEV, 6, 8301, 1)) is None
    assert its.lpis[8301].pending is False
    assert its.read_guest(its.layout.pend_tables[2] + 8301 // 8, 1) == b"\xff"


def test_mapti_to_an_unmapped_collection_reads_no_pending_bit():
    its = setup_its()
    intid = 8400
    byte_addr = its.layout.pend_tables[0] + intid // 8
    its.write_guest(byte_addr, b"\xff")
    assert ex(its, MAPTI(DEV, 5, intid, 66)) is None
    assert its.lpis[intid].pending is False
    assert its.read_guest(byte_addr, 1) == b"\xff"


def test_mapti_reads_the_property_byte_of_a_new_lpi():
    its = setup_its()
    its.write_guest(its.layout.prop_table + 8500 - r.GIC_LPI_OFFSET, bytes([0x36]))
    assert ex(its, MAPTI(DEV, 5, 8500, 0)) is None
    assert (its.lpis[8500].priority, its.lpis[8500].enabled) == (0x34, False)


# ---- MOVI / MOVALL -------------------------------------------------------------------


def test_movi_retargets_translate():
    its = setup_its()
    assert ex(its, MOVI(DEV, 0, 3)) is None
    assert its.translate(DEV, 0) == (8192, 3)
    assert its.devices[DEV].ites[0].collection is its.collections[3]
    # A later remap of the old collection no longer affects it.
    assert ex(its, MAPC(0, 1, True)) is None
    assert its.translate(DEV, 0) == (8192, 3)


def test_movall_procnum_oor():
    its = setup_its(nr_vcpus=4)
    for cmd in (MOVALL(4, 0), MOVALL(0, 4), MOVALL(0xFFFFFFFF, 1), MOVALL(7, 7)):
        assert_rejected(its, cmd, E.E_ITS_MOVALL_PROCNUM_OOR)
    assert E.E_ITS_MOVALL_PROCNUM_OOR.code == 0x010E01


def test_movall_moves_only_lpis_targeting_target1():
    its = setup_its()
    assert ex(its, MAPTI(DEV, 5, 8200, 1)) is None
    assert ex(its, MOVALL(1, 3)) is None
    assert its.translate(DEV, 1) == (8193, 3)
    assert its.translate(DEV, 5) == (8200, 3)
    assert its.translate(DEV, 0) == (8192, 0)
    assert its.translate(DEV, 2) == (8194, 2)
    # ITE -> collection links are untouched.
    assert its.devices[DEV].ites[1].collection is its.collections[1]
    assert ex(its, MOVALL(2, 2)) is None
    assert its.translate(DEV, 2) == (8194, 2)


# ---- INV / INVALL --------------------------------------------------------------------


def test_inv_unmapped_interrupt():
    its = setup_its()
    assert_rejected(its, INV(DEV, 9), E.E_ITS_INV_UNMAPPED_INTERRUPT)
    assert_rejected(its, INV(96, 0), E.E_ITS_INV_UNMAPPED_INTERRUPT)
    assert E.E_ITS_INV_UNMAPPED_INTERRUPT.code == 0x010C07


def test_inv_rereads_the_property_byte():
    its = setup_its()
    intid = 8193
    lpi = its.lpis[intid]
    assert (lpi.priority, lpi.enabled) == (0xA0, True)
    prop = its.layout.prop_table + intid - r.GIC_LPI_OFFSET
    its.write_guest(prop, bytes([0x40]))  # priority 0x40, disabled
    assert (lpi.priority, lpi.enabled) == (0xA0, True)  # cached until INV
    assert ex(its, INV(DEV, 1)) is None
    assert (lpi.priority, lpi.enabled) == (0x40, False)
    its.write_guest(prop, bytes([0x7D]))  # priority [7:2] = 0x7C, group 0, enabled
    assert ex(its, INV(DEV, 1)) is None
    assert (lpi.priority, lpi.enabled) == (0x7C, True)
    assert (its.lpis[8192].priority, its.lpis[8192].enabled) == (0xA0, True)


def test_inv_works_with_the_collection_unmapped():
    its = setup_its()
    assert ex(its, MAPC(1, 0, False)) is None
    its.write_guest(its.layout.prop_table + 8193 - r.GIC_LPI_OFFSET, bytes([0x20]))
    assert ex(its, INV(DEV, 1)) is None
    assert (its.lpis[8193].priority, its.lpis[8193].enabled) == (0x20, False)


def test_invall_unmapped_collection():
    its = setup_its()
    assert_rejected(its, INVALL(42), E.E_ITS_INVALL_UNMAPPED_COLLECTION)
    assert ex(its, MAPTI(DEV, 5, 8300, 60)) is None  # ICID 60 exists, unmapped
    assert_rejected(its, INVALL(60), E.E_ITS_INVALL_UNMAPPED_COLLECTION)
    assert ex(its, MAPC(1, 1, False)) is None
    assert_rejected(its, INVALL(1), E.E_ITS_INVALL_UNMAPPED_COLLECTION)
    assert E.E_ITS_INVALL_UNMAPPED_COLLECTION.code == 0x010D09


def test_invall_rereads_only_lpis_targeting_the_collections_vcpu():
    its = setup_its()
    assert ex(its, MAPC(20, 0, True)) is None  # a second collection on vCPU 0
    assert ex(its, MAPTI(DEV, 4, 8196, 20)) is None
    for intid in (8192, 8193, 8194, 8196):
        its.write_guest(its.layout.prop_table + intid - r.GIC_LPI_OFFSET, bytes([0x10]))
    assert ex(its, INVALL(20)) is None
    for intid in (8192, 8196):  # everything on vCPU 0, whatever the collection
        assert (its.lpis[intid].priority, its.lpis[intid].enabled) == (0x10, False)
    for intid in (8193, 8194):
        assert (its.lpis[intid].priority, its.lpis[intid].enabled) == (0xA0, True)
    assert its.lpis[8192].pending is False


# ---- DISCARD -------------------------------------------------------------------------


def test_discard_unmapped_interrupt_no_ite():
    its = setup_its()
    assert_rejected(its, DISCARD(DEV, 9), E.E_ITS_DISCARD_UNMAPPED_INTERRUPT)
    assert_rejected(its, DISCARD(95, 0), E.E_ITS_DISCARD_UNMAPPED_INTERRUPT)
    assert E.E_ITS_DISCARD_UNMAPPED_INTERRUPT.code == 0x010F07


def test_discard_unmapped_interrupt_collection_unmapped():
    its = setup_its()
    assert ex(its, MAPC(2, 2, False)) is None
    slot = itt(its) + 2 * 8
    its.write_guest(slot, b"\x77" * 8)
    assert_rejected(its, DISCARD(DEV, 2), E.E_ITS_DISCARD_UNMAPPED_INTERRUPT)
    assert 2 in its.devices[DEV].ites
    assert its.read_guest(slot, 8) == b"\x77" * 8


def test_discard_removes_the_ite_and_zeroes_its_slot():
    its = setup_its()
    base = itt(its)
    for ev in range(4):
        its.write_guest(base + ev * 8, bytes([0x10 + ev]) * 8)
    assert ex(its, INT(DEV, 2)) is None
    assert ex(its, DISCARD(DEV, 2)) is None
    assert its.read_guest(base + 2 * 8, 8) == bytes(8)
    for ev in (0, 1, 3):
        assert its.read_guest(base + ev * 8, 8) == bytes([0x10 + ev]) * 8
    assert 2 not in its.devices[DEV].ites
    assert 8194 not in its.lpis
    assert its.translate(DEV, 2) is None
    assert ex(its, INT(DEV, 2)) is E.E_ITS_INT_UNMAPPED_INTERRUPT
    # The event can be mapped again.
    assert ex(its, MAPTI(DEV, 2, 8194, 1)) is None
    assert its.translate(DEV, 2) == (8194, 1)


# ---- unknown commands ----------------------------------------------------------------


@pytest.mark.parametrize("number", [0x00, 0x02, 0x06, 0x10, 0x21, 0x22, 0x2A, 0xFF])
def test_unknown_command_is_enodev_and_skipped(number):
    its = setup_its()
    raw = bytes([number]) + bytes(range(1, 32))
    before = its.state()
    assert its.execute(raw) is E.ENODEV
    record = its.command_log[-1]
    assert record.raw == raw
    assert record.command is None
    assert record.error is E.ENODEV
    assert its.state() == before
    assert its.mmio_read(r.GITS_CREADR) == its.mmio_read(r.GITS_CWRITER)
    assert ex(its, SYNC(0)) is None
    assert ex(its, INT(DEV, 0)) is None
    assert E.ENODEV.code == -19
