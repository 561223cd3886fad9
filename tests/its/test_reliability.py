"""Valid and hostile inputs the vITS must survive (issue 15.1-15.3): large vCPU counts, a
command queue outside guest RAM, hostile DTE sizes on restore, blobs naming ITT slots
outside guest RAM. Expected behaviour from vgic-its.c (6.1 and 7.3 agree on each)."""

from __future__ import annotations

from itertools import pairwise

import pytest

from sim.its import MAPC, MAPD, MAPTI, ITSError, VirtualITS
from sim.its import regs as r
from sim.its.blob import _DEVICE, _HEADER, _ITE, MAGIC, deserialize, serialize
from sim.its.vits import QEMU_VIRT_RAM_BASE

RAM_BASE = QEMU_VIRT_RAM_BASE
RAM_SIZE = 2 << 30
KERNELS = ("6.1", "7.3")


# ---- 15.1: VirtualITS accepts 1..512 vCPUs --------------------------------------------------


@pytest.mark.parametrize("nr_vcpus", [238, 239, 300, 512])
@pytest.mark.parametrize("two_level", [False, True])
def test_probe_lays_out_any_accepted_vcpu_count(nr_vcpus, two_level):
    its = VirtualITS(nr_vcpus=nr_vcpus, two_level_device_table=two_level)
    lay = its.layout
    tables = [
        (lay.prop_table, r.SZ_64K),
        *((p, r.SZ_64K) for p in lay.pend_tables),
        (lay.device_table, lay.device_table_size),
        *((p, r.SZ_64K) for p in lay.device_l2_pages),
        (lay.collection_table, lay.collection_table_size),
        (lay.cmdq, lay.cmdq_size),
    ]
    spans = sorted(tables)
    for (a, n), (b, _) in pairwise(spans):
        assert a + n <= b, "probe tables overlap"
    assert spans[-1][0] + spans[-1][1] <= lay.free_base
    assert lay.free_base % (16 << 20) == 0
    # Every vCPU has its collection, and a device mapped above the tables translates.
    assert sorted(its.collections) == list(range(nr_vcpus))
    last = nr_vcpus - 1
    assert its.execute(MAPD(7, 4, lay.free_base, True).encode()) is None
    assert its.execute(MAPTI(7, 3, 8200, last).encode()) is None
    assert its.translate(7, 3) == (8200, last)


def test_probe_keeps_16_mib_where_it_fits():
    """Up to 238 vCPUs (flat device table) the tables fit the lowest 16 MiB as before."""
    assert VirtualITS(nr_vcpus=238).layout.free_base == RAM_BASE + (16 << 20)
    assert VirtualITS(nr_vcpus=4).layout.free_base == RAM_BASE + (16 << 20)


def test_probe_needs_room_for_its_tables_and_itts():
    with pytest.raises(ValueError, match="at least"):
        VirtualITS(nr_vcpus=512, ram_size=32 << 20)
    VirtualITS(nr_vcpus=512, ram_size=64 << 20)  # 48 MiB of tables + 16 MiB for ITTs


# ---- 15.1: a command queue outside guest RAM -------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_command_queue_outside_ram_is_skipped_with_efault(kernel):
    """vgic_its_process_commands: kvm_read_guest_lock() fails, the command is ignored,
    GITS_CREADR moves on (GICv3 spec 6.3.2), in both kernels."""
    its = VirtualITS(kernel=kernel, ram_size=64 << 20)
    ram_end = RAM_BASE + (64 << 20)
    its.mmio_write(r.GITS_CTLR, 0)
    its.mmio_write(r.GITS_CBASER, r.make_cbaser(ram_end, r.SZ_64K))
    its.mmio_write(r.GITS_CTLR, r.GITS_CTLR_ENABLE)
    before = its.state()
    assert its.execute(MAPC(0, 1, False).encode()) is ITSError.EFAULT
    assert its.execute(MAPC(1, 0, False).encode()) is ITSError.EFAULT
    assert its.creadr == its.cwriter == 2 * r.ITS_CMD_SIZE
    assert its.state() == before  # nothing ran
    entry = its.command_log[-1]
    assert entry.raw is None and "unreadable" in entry.detail


# ---- 15.2: a hostile DTE Size on restore -----------------------------------------------------


def _restore_with_dte(kernel: str, size_field: int) -> tuple[VirtualITS, ITSError | None, int]:
    """A destination restoring a flat device table whose DeviceID 1 has a DTE with Size
    ``size_field`` (EventID bits - 1) and an ITT at the bottom of the ITT area; returns the
    ITS, RESTORE_TABLES' result and the bytes KVM read while restoring."""
    src = VirtualITS(kernel=kernel)
    assert src.save_tables() is None  # the collection table: one CTE per vCPU
    lay = src.layout
    itt = lay.free_base
    dte = 1 << 63 | (itt >> 8) << 5 | size_field
    src.write_guest(lay.device_table + 8, dte.to_bytes(8, "little"))
    src.write_guest(itt + 0x100 * 8, (8192 << 16 | 0).to_bytes(8, "little"))  # one ITE
    dst = VirtualITS(probe=False, kernel=kernel, memory=src.memory, name="dst")
    dst.set_regs(src.get_regs())
    log = dst.memory.log
    first = len(log)
    error = dst.restore_tables()
    read = sum(rec.length for rec in list(log)[first:] if rec.actor == "dst.kvm-vits")
    return dst, error, read


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("size_field", [16, 17, 30, 31])
def test_restore_refuses_a_dte_size_above_16_eventid_bits(kernel, size_field):
    """vgic_its_restore_dte: ``num_eventid_bits = Size + 1`` (u8, 1..32) above
    VITS_TYPER_IDBITS (16) is -EINVAL before any ITT is read ("mimic the MAPD
    behaviour"), so scan_its_table's int size never sees 2^32 x 8 (which would wrap)."""
    dst, error, read = _restore_with_dte(kernel, size_field)
    assert error is ITSError.EINVAL
    assert not dst.devices and not dst.collections  # a failed restore frees everything
    # Collection table (up to its first invalid entry) and device table only: no ITT.
    assert read <= 5 * 8 + 2 * r.SZ_64K


@pytest.mark.parametrize("kernel", KERNELS)
def test_restore_of_the_largest_itt_reads_at_most_its_512_kib(kernel):
    """Size 15 (16 EventID bits): the ITT is BIT_ULL(16) x 8 = 512 KiB and the scan is
    bounded by it, whatever the RAM size."""
    dst, error, read = _restore_with_dte(kernel, 15)
    assert error is None
    assert dst.translate(1, 0x100) == (8192, 0)
    assert read <= (1 << 16) * 8 + 2 * r.SZ_64K + 5 * 8


# ---- 15.3: the blob refuses ITT slots outside guest RAM --------------------------------------


def _blob(itt: int, event_id: int, bits: int = 16) -> bytes:
    """A version-0 blob: collection 0 on vCPU 0, then device 1 at ``itt`` with one ITE."""
    cte = 1 << 63 | 0 << 16 | 0
    dte = 1 << 63 | (itt >> 8) << 5 | (bits - 1)
    ite = 8192 << 16 | 0
    return (
        _HEADER.pack(MAGIC, 0, 1, 1, 0)
        + cte.to_bytes(8, "little")
        + _DEVICE.pack(1, 1, dte)
        + _ITE.pack(event_id, 0, ite)
    )


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    ("itt", "event_id"),
    [
        (RAM_BASE + RAM_SIZE, 0),  # the ITT starts past the end of RAM
        (RAM_BASE + RAM_SIZE - 0x100, 0x20),  # the ITT straddles the end; the slot is past it
        (RAM_BASE - 0x1000, 0),  # below RAM
    ],
)
def test_blob_refuses_an_ite_whose_itt_slot_is_not_guest_ram(kernel, itt, event_id):
    """vgic_its_check_event_id (MAPTI and vgic_its_restore_ite, both kernels): the slot
    must be guest RAM. A blob is all or nothing: the ITS is left empty."""
    its = VirtualITS(probe=False, kernel=kernel, ram_size=RAM_SIZE)
    its.set_regs(VirtualITS(kernel=kernel, ram_size=RAM_SIZE).get_regs())
    assert deserialize(its, _blob(itt, event_id)) is ITSError.EINVAL
    assert not its.devices and not its.collections and not its.lpis


@pytest.mark.parametrize("kernel", KERNELS)
def test_blob_accepts_the_last_ite_slot_inside_ram(kernel):
    its = VirtualITS(probe=False, kernel=kernel, ram_size=RAM_SIZE)
    its.set_regs(VirtualITS(kernel=kernel, ram_size=RAM_SIZE).get_regs())
    itt = RAM_BASE + RAM_SIZE - 0x100
    assert deserialize(its, _blob(itt, 0x1F)) is None
    assert its.translate(1, 0x1F) == (8192, 0)
    assert serialize(its) == _blob(itt, 0x1F)


@pytest.mark.parametrize("kernel", KERNELS)
def test_mapti_refuses_the_same_slot(kernel):
    """The command path the blob check mirrors: MAPTI onto a slot outside RAM is
    E_ITS_MAPTI_ID_OOR and maps nothing."""
    its = VirtualITS(kernel=kernel, ram_size=RAM_SIZE)
    itt = RAM_BASE + RAM_SIZE - 0x100
    assert its.execute(MAPD(1, 15, itt, True).encode()) is None
    assert its.execute(MAPTI(1, 0x20, 8192, 0).encode()) is ITSError.E_ITS_MAPTI_ID_OOR
    assert its.execute(MAPTI(1, 0x1F, 8192, 0).encode()) is None
    assert its.translate(1, 0x20) is None and its.translate(1, 0x1F) == (8192, 0)
