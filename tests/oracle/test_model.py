"""The model's side of the oracle: bytes a tiny stream makes KVM write, per the model."""

from __future__ import annotations

from sim.its.commands import DISCARD, INT, MAPC, MAPD, MAPTI
from sim.oracle.model import observe
from sim.oracle.stream import MemFill, Observation, Restore, Stream
from sim.oracle.streams import Layout, _Builder, pkvm_streams

LAY = Layout(nr_vcpus=2)
ITT = LAY.itt(0)  # 0x4020_0000


def tiny(*cmds, name="tiny", fill=(), **kw) -> Stream:
    b = _Builder(name, LAY)
    for gpa, data in fill:
        b.write(gpa, data)
    b.write(LAY.prop, bytes([0xA3]) * 16)
    b.linux_setup(baser_attrs=0, cbaser_attrs=0)
    b.cmd(*cmds)
    return b.stream(**kw)


def test_mapd_mapti_save_writes_dte_ite_cte_as_the_abi_says():
    s = tiny(
        MAPC(0, 1, True), MAPD(1, 1, ITT, True), MAPTI(1, 2, 8195, 0), MAPD(9, 0, ITT + 0x100, True)
    )
    obs = observe(s, kernel="7.3")
    assert obs.creadr == (32, 64, 96, 128)
    assert obs.save is not None and obs.save.ret == 0
    mem = obs.save.memory
    # DTE: V=1 | next=8 (DeviceID 1 -> 9) [62:49] | ITT >> 8 [48:5] | Size = 2 bits - 1
    assert mem[LAY.dt + 1 * 8] == 0x8010_0000_0804_0001
    # the last DTE has next = 0
    assert mem[LAY.dt + 9 * 8] == 0x8000_0000_0804_0020
    # ITE at ITT + EventID * 8: next=0 | pINTID 8195 [47:16] | ICID 0
    assert mem[ITT + 2 * 8] == 0x2003 << 16
    # CTE: V=1 | RDbase = vCPU 1 [51:16] | ICID 0; then a zero terminator
    assert mem[LAY.ct] == 1 << 63 | 1 << 16
    assert LAY.ct + 8 not in mem
    # the commands phase had none of these: KVM writes them on save
    assert LAY.dt + 8 not in obs.commands.memory and ITT + 16 not in obs.commands.memory


def test_discard_and_mapd_v0_zero_entries_before_any_save():
    stale = (0x1234_5678).to_bytes(8, "little")
    s = tiny(
        MAPC(0, 0, True),
        MAPD(1, 1, ITT, True),
        MAPTI(1, 0, 8192, 0),
        DISCARD(1, 0),
        MAPD(3, 0, ITT + 0x100, False),
        fill=[(ITT, stale), (LAY.dt + 3 * 8, stale), (ITT + 8, stale)],
        save=False,
        save_pending=False,
    )
    mem = observe(s, kernel="7.3").commands.memory
    assert ITT not in mem  # DISCARD cleared the ITE
    assert LAY.dt + 3 * 8 not in mem  # MAPD V=0 cleared the DTE
    assert mem[ITT + 8] == 0x1234_5678  # the neighbour is untouched


def test_restore_over_garbage_fails_with_efault_and_a_clean_one_resaves_the_same():
    garbage = MemFill(gpa=LAY.dt, data="efbeaddeefbeadde")  # DTE[0]: V=1, ITT outside RAM
    s = tiny(
        MAPC(0, 0, True),
        MAPD(1, 1, ITT, True),
        MAPTI(1, 0, 8192, 0),
        restores=(Restore(name="clean"), Restore(name="garbage", patches=(garbage,))),
    )
    obs = observe(s, kernel="7.3")
    clean, bad = obs.restores
    assert bad.ret == -14 and bad.resave_ret is None
    assert clean.ret == 0 and clean.resave_ret == 0
    tables = lambda m: {g: w for g, w in m.items() if LAY.dt <= g < LAY.cmdq}  # noqa: E731
    assert tables(clean.memory) == tables(obs.save_pending.memory)
    assert clean.regs["GITS_CTLR"] & 1 and clean.regs["GITS_BASER0"] == obs.regs["GITS_BASER0"]


def test_registers_read_back_as_kvm_returns_them():
    regs = observe(tiny(MAPC(0, 0, True)), kernel="7.3").regs
    assert regs["GITS_TYPER"] == 0x1EF71  # what the real guest read
    assert regs["GITS_IIDR"] == 0x4B00043B
    assert regs["GITS_CTLR"] == 1 | 1 << 31  # Enabled, quiescent
    assert regs["GICR0_CTLR"] == 0x7  # EnableLPIs | CES | IR
    assert regs["GICR1_PENDBASER"] == LAY.pend(1) | 1 << 10 | 7 << 7
    assert regs["GITS_BASER2"] == 0 and regs["GITS_CREADR"] == regs["GITS_CWRITER"] == 32


def test_int_then_save_pending_sets_the_bit_in_the_target_pending_table():
    s = tiny(MAPC(0, 1, True), MAPD(1, 1, ITT, True), MAPTI(1, 0, 8200, 0), INT(1, 0))
    obs = observe(s, kernel="7.3")
    word = LAY.pend(1) + 8200 // 8 // 8 * 8
    assert word not in obs.save.memory
    assert obs.save_pending.ret == 0
    assert obs.save_pending.memory[word] == 1 << (8200 % 64)


def test_protected_guest_that_shares_nothing_advances_creadr_and_nothing_takes_effect():
    streams = {s.name: s for s in pkvm_streams()}
    none = observe(streams["pkvm-share-none"], kernel="7.3")
    full = observe(streams["pkvm-share-all"], kernel="7.3")
    assert none.creadr == full.creadr and len(none.creadr) == 19
    assert none.commands.memory == {} and none.save.ret == -14
    assert full.save.ret == 0 and full.save.memory
    unshared = streams["pkvm-share-all"].host_reads[1]
    assert full.host_reads == {streams["pkvm-share-all"].host_reads[0]: "ok", unshared: "fault"}
    assert set(none.host_reads.values()) == {"fault"}
    no_itt = observe(streams["pkvm-share-no-itt"], kernel="7.3")
    assert no_itt.save.ret == -14  # the ITE write faults on the unshared ITT page


def _tables(memory):
    """The device table (level-2 pages excepted) and the collection table."""
    return {g: w for g, w in memory.items() if LAY.dt <= g < LAY.cmdq}


def test_the_dte_real_kvm_wrote_for_a_linux_device():
    """real-software.md: KVM saved `80100000080c0081` for DeviceID 8 (next=8 to DeviceID
    16, ITT 0x40600400, Size=1) after the captured 6.1 boot stream."""
    s = tiny(
        MAPC(0, 0, True),
        MAPD(8, 1, 0x4060_0400, True),
        MAPTI(8, 0, 8192, 0),
        MAPD(16, 1, 0x4060_0600, True),
        MAPTI(16, 0, 8193, 0),
    )
    assert observe(s, kernel="6.1").save.memory[LAY.dt + 8 * 8] == 0x8010_0000_080C_0081


def test_real_linux_boot_creadr_follows_cwriter_and_the_restore_resaves_the_same_tables():
    from sim.oracle.streams import real_guest_streams

    for s in real_guest_streams():
        obs = observe(s, kernel="6.1" if "6.1" in s.name else "7.3")
        assert obs.creadr == tuple(32 * (i + 1) for i in range(len(s.commands)))
        assert obs.save.ret == 0 and obs.save_pending.ret == 0
        (restore,) = obs.restores
        assert restore.ret == 0 and restore.resave_ret == 0
        assert _tables(restore.memory) == _tables(obs.save_pending.memory)


def test_a_protected_destination_shares_as_the_source_so_its_restore_needs_the_tables_shared():
    """The destination runs the source's prologue (owns RAM, shares the same pages)
    before RESTORE_TABLES: KVM reads the tables only where they were shared."""
    streams = {s.name: s for s in pkvm_streams()}
    result = {
        name: [(x.ret, x.resave_ret) for x in observe(streams[name], kernel="7.3").restores]
        for name in ("pkvm-share-none", "pkvm-share-no-device-table", "pkvm-share-all")
    }
    assert result == {
        "pkvm-share-none": [(-14, None)],
        "pkvm-share-no-device-table": [(-14, None)],
        "pkvm-share-all": [(0, 0)],
    }


def test_an_itt_in_the_vmm_code_memslot_is_refused_with_a_clear_message():
    import pytest

    from sim.oracle.model import StreamError

    s = tiny(MAPD(1, 0, 0x1000_0100, True), name="itt-in-code")
    with pytest.raises(StreamError, match=r"itt-in-code: command 0 \(MAPD\).*code memslot"):
        observe(s, kernel="7.3")


def test_a_protected_vm_on_6_1_is_refused_as_kvm_create_vm_refuses_it():
    """6.1's kvm_arm_setup_stage2() refuses the protected VM type with -EINVAL; the
    VMM abandons the stream at its first ioctl, and the model predicts exactly that."""
    from sim.oracle.compare import compare
    from sim.oracle.streams import pkvm_streams

    stream = pkvm_streams()[0]
    old = observe(stream, kernel="6.1.0-57-arm64")
    assert old.error == "KVM_CREATE_VM: Invalid argument (errno 22)"
    assert old.creadr == () and old.save is None
    kvm = Observation(name=stream.name, source="kvm", kernel="6.1.0-57-arm64", error=old.error)
    assert compare(kvm, old, stream).mismatches == []
    new = observe(stream, kernel="7.3.4+deb13-arm64")
    assert new.error == "" and len(new.creadr) == len(stream.commands)
