"""share-cmdq-shadow and itt-ubuf: bytes, page states, pins, refusals and costs."""

from pathlib import Path

import pytest

from sim.its import regs as r
from sim.its.errors import ITSError
from sim.its.ittbuf import (
    DEVICE,
    ENTRY,
    HEADER,
    MAGIC,
    parse,
    restore_tables_ubuf,
    save_tables_ubuf,
)
from sim.its.vits import VirtualITS
from sim.memory.access import Initiator
from sim.memory.ownership import HOST, HYP, PageOwnership, PagePinned, PageState, Transition
from sim.memory.physmem import PAGE_SHIFT
from sim.proposals import PROPOSALS
from sim.proposals.share_cmdq_shadow import el2_cmdq_base, kvm_ring_base
from sim.report.markdown import render
from sim.run import collect, simulate
from sim.scenario import ALL_PROPOSALS, load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


# ---- the pin refcount (mem_protect.c hyp_pin_shared_mem) ---------------------------------


def test_pinned_host_share_cannot_be_unshared_until_every_pin_is_dropped():
    """mem_protect.c's selftest order: pin twice, unpin once: -EBUSY; unpin: unshare."""
    own = PageOwnership()
    own.apply(Transition.HOST_SHARE_HYP, 0x100)
    own.pin_shared(0x100, 1, owner=HOST, borrower=HYP)
    own.pin_shared(0x100, 1, owner=HOST, borrower=HYP)
    own.unpin_shared(0x100, 1)
    with pytest.raises(PagePinned) as exc:
        own.apply(Transition.HOST_UNSHARE_HYP, 0x100)
    assert exc.value.errno == "EBUSY" and "refcount 1" in str(exc.value)
    assert own.state(HOST, 0x100) is PageState.SHARED_OWNED  # nothing changed
    own.unpin_shared(0x100, 1)
    own.apply(Transition.HOST_UNSHARE_HYP, 0x100)
    assert own.state(HOST, 0x100) is PageState.OWNED
    with pytest.raises(ValueError, match="not pinned"):
        own.unpin_shared(0x100, 1)


def test_only_a_shared_page_can_be_pinned():
    own = PageOwnership()
    with pytest.raises(Exception, match="needs shared-owned"):
        own.pin_shared(0x100, 1, owner=HOST, borrower=HYP)  # host still owns it
    assert not own.pins


def test_a_pinned_guest_page_refuses_the_guests_unshare():
    own = PageOwnership()
    own.add_guest("pvm")
    own.apply(Transition.HOST_DONATE_GUEST, 0x200, guest="pvm")
    own.apply(Transition.GUEST_SHARE_HOST, 0x200, guest="pvm")
    own.pin_shared(0x200, 1, owner="pvm", borrower=HOST)
    with pytest.raises(PagePinned):
        own.apply(Transition.GUEST_UNSHARE_HOST, 0x200, guest="pvm")
    own.unpin_shared(0x200, 1)
    own.apply(Transition.GUEST_UNSHARE_HOST, 0x200, guest="pvm")
    assert own.state(HOST, 0x200) is PageState.NOPAGE


# ---- share-cmdq-shadow ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def shadow():
    return simulate(load_scenario(SCENARIOS / "kzalloc-dense-secrets.yaml"), "share-cmdq-shadow")


def test_shadow_keeps_the_guest_queue_private_and_el2s_queue_hyp_owned(shadow):
    guest = shadow.guest
    for machine in shadow.machines.values():
        own = machine.memory.ownership
        queue = range(guest.cmdq >> PAGE_SHIFT, (guest.cmdq + guest.cmdq_size) >> PAGE_SHIFT)
        if machine is guest.machine:
            assert all(own.state(HOST, pfn) is PageState.NOPAGE for pfn in queue)
        el2 = el2_cmdq_base(machine) >> PAGE_SHIFT
        assert own.state(HYP, el2) is PageState.OWNED
        assert own.state(HOST, el2) is PageState.NOPAGE
        ring = kvm_ring_base(machine) >> PAGE_SHIFT
        assert own.state(HYP, ring) is PageState.SHARED_BORROWED and own.pins[ring] == 1


def test_shadow_forwards_exactly_what_the_guest_queued(shadow):
    """KVM runs the ring; its bytes are the guest's commands, slot for slot."""
    dst = shadow.dst
    its = dst.host.its
    ring = dst.memory.read(its.kvm.who, kvm_ring_base(dst), its.creadr)
    el2 = dst.memory.read(Initiator("test.hyp", HYP), el2_cmdq_base(dst), its.creadr)
    assert ring == el2 and any(ring)
    result = collect(shadow)
    assert result.correctness.its_correct and not result.correctness.command_errors


def test_shadow_pins_every_mapped_itt_page_and_the_guest_cannot_unshare_it(shadow):
    dst = shadow.dst
    own = dst.memory.ownership
    mapped = [d for d in shadow.guest.devices.values() if d.mapped]
    assert mapped
    for dev in mapped:
        first = dev.itt_addr >> PAGE_SHIFT
        assert own.pins.get(first, 0) >= 1
        assert own.state(HOST, first) is PageState.SHARED_BORROWED
    pfn = mapped[0].itt_addr >> PAGE_SHIFT
    results = []

    def unshare():
        results.append((yield from dst.lowvisor.mem_unshare(pfn, "test: guest pulls the ITT")))

    shadow.env.process(unshare())
    shadow.env.run()
    assert results == [False] and own.state(HOST, pfn) is PageState.SHARED_BORROWED


def test_shadow_refuses_a_vlpi_command_and_forwards_nothing_past_it(shadow):
    guest = shadow.guest
    its = shadow.dst.host.its
    before = len(its.command_log)
    creadr = its.creadr
    vmapti = (0x2A | 0x10 << 32).to_bytes(8, "little") + bytes(24)  # VMAPTI, DeviceID 0x10
    refusals = shadow.dst.lowvisor.refusals

    def send():
        guest.write(guest.cmdq + guest.cwriter, vmapti)
        guest.cwriter = (guest.cwriter + r.ITS_CMD_SIZE) % guest.cmdq_size
        yield from guest._kick()

    shadow.env.process(send())
    shadow.env.run()
    assert any("VLPI command 0x2a" in why for why in refusals)
    assert len(its.command_log) == before and its.creadr == creadr  # KVM never saw it
    assert guest.queue_timeouts >= 1  # the guest's CREADR wait gives up, as Linux's does


def test_shadow_pays_for_copy_fixmap_and_polling(shadow):
    scenario = load_scenario(SCENARIOS / "kzalloc-dense-secrets.yaml")
    snoop = collect(simulate(scenario, "share-cmdq-snoop"))
    ours = collect(shadow)
    assert ours.costs.cpu_us["src.lowvisor"] > snoop.costs.cpu_us["src.lowvisor"]
    calls = ours.costs.hypercalls_by_call
    assert calls["host __pkvm_host_share_hyp"] == 2 * 16  # the 64 KiB ring, both machines
    assert calls["host __pkvm_host_donate_hyp"] == 2
    assert ours.costs.el2_loc == 400


# ---- itt-ubuf ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ubuf():
    return simulate(load_scenario(SCENARIOS / "kzalloc-dense-secrets.yaml"), "itt-ubuf")


def test_itt_ubuf_buffer_bytes_hold_each_mapped_devices_ites(ubuf):
    from sim.proposals.userspace_serialization import vmm_buffer_base

    dst = ubuf.dst
    saved = dst.memory.read(dst.host.cpu, vmm_buffer_base(ubuf), ubuf.ledger.bytes_copied // 2)
    assert saved.startswith(MAGIC) and parse(saved)  # what travelled at the migration
    its = dst.host.its  # and a save of the destination as it is now
    error, buf = save_tables_ubuf(its)
    assert error is None and buf.startswith(MAGIC)
    itts = parse(buf)
    assert set(itts) == set(its.devices)
    for device_id, entries in itts.items():
        assert {e for e, _ in entries} == set(its.devices[device_id].ites)
    size = HEADER.size + sum(DEVICE.size + len(e) * ENTRY.size for e in itts.values())
    assert len(buf) == size
    assert collect(ubuf).correctness.its_correct


def test_itt_ubuf_kvm_never_touches_an_itt_in_guest_memory_but_writes_the_tables(ubuf):
    guest = ubuf.guest
    itts = [(d.itt_addr, d.itt_addr + d.itt_size) for d in guest.devices.values() if d.itt_addr]
    kvm = [
        rec
        for m in ubuf.machines.values()
        for rec in m.memory.log
        if rec.actor.endswith("kvm-vits")
    ]
    assert not [rec for rec in kvm if any(s <= rec.addr < e for s, e in itts)]
    dt = guest.device_table
    # The save dirtied guest pages (DTEs, CTEs, pending bits) that travel beside the buffer.
    assert ubuf.ledger.stream_bytes > ubuf.ledger.bytes_copied // 2
    # The tables are the guest's shares, so the host can reach (and corrupt) them.
    own = ubuf.dst.memory.ownership
    assert own.state(HOST, dt >> PAGE_SHIFT) is PageState.SHARED_BORROWED
    assert own.state(HOST, guest.collection_table >> PAGE_SHIFT) is PageState.SHARED_BORROWED


def test_itt_ubuf_restore_rejects_a_malformed_buffer_and_leaves_nothing():
    its = VirtualITS(nr_vcpus=2, probe=False)
    for bad in (
        b"KVMITS\0\0" + bytes(8),  # another format's magic
        HEADER.pack(MAGIC, 0, 1),  # one device promised, none there
        HEADER.pack(MAGIC, 0, 0) + b"\0",  # trailing byte
        HEADER.pack(MAGIC, 0, 1) + DEVICE.pack(5, 1) + ENTRY.pack(0, 1, 0),  # reserved set
    ):
        assert restore_tables_ubuf(its, bad) is ITSError.EINVAL
        assert not its.devices and not its.collections


def test_itt_ubuf_is_distinct_from_userspace_serialization():
    scenario = load_scenario(SCENARIOS / "small-vm.yaml")
    ubuf = collect(simulate(scenario, "itt-ubuf"))
    full = collect(simulate(scenario, "userspace-serialization"))
    # Full serialization dirties no guest page; itt-ubuf writes DTEs, CTEs and pending bits.
    assert ubuf.costs.stream_bytes > full.costs.stream_bytes
    assert ubuf.correctness.its_correct and full.correctness.its_correct


# ---- EL2 lines: an estimate with a source, for every proposal ---------------------------


def test_every_proposal_states_where_its_el2_lines_come_from():
    from sim.costs import CostModel

    assert set(ALL_PROPOSALS) == set(PROPOSALS)
    for cls in PROPOSALS.values():
        note = cls.el2_lines_note(CostModel())
        assert cls.el2_lines_source
        assert note.startswith(f"{cls.el2_lines(CostModel()):.0f}, an estimate (")
    assert PROPOSALS["share-cmdq-shadow"].el2_lines(CostModel()) == 400
    assert PROPOSALS["itt-ubuf"].el2_lines(CostModel()) == 0


def test_report_marks_el2_lines_as_estimates_with_each_source():
    scenario = load_scenario(SCENARIOS / "small-vm.yaml")
    result = collect(simulate(scenario, "share-cmdq-shadow"))
    text = render([scenario], [result], [])
    assert "| EL2 lines (estimate) |" in text.replace(" | ITS command errors", " |")
    assert "~400" in text
    for name, cls in PROPOSALS.items():
        assert f"- `{name}`: {cls.el2_lines_note(result_costs())}" in text


def result_costs():
    from sim.costs import CostModel

    return CostModel()


def test_shadow_sets_its_queues_up_again_for_a_new_queue_size():
    """A new kernel's CBASER with another size: the old ring is unpinned and unshared,
    EL2's queue goes back to the host, and both are set up at the new size."""
    world = simulate(load_scenario(SCENARIOS / "small-vm.yaml"), "share-cmdq-shadow")
    proposal = world.proposal
    dst = world.dst
    st = proposal.state["dst"]
    old = st.size >> PAGE_SHIFT
    st.size *= 2
    world.env.process(proposal._setup(dst, st))
    world.env.run()
    own = dst.memory.ownership
    ring, el2 = kvm_ring_base(dst) >> PAGE_SHIFT, el2_cmdq_base(dst) >> PAGE_SHIFT
    assert all(own.pins[p] == 1 for p in range(ring, ring + 2 * old))
    assert all(own.state(HYP, p) is PageState.OWNED for p in range(el2, el2 + 2 * old))
    assert world.ledger.hypercalls["host __pkvm_host_unshare_hyp"] == old


def test_itt_ubuf_device_table_is_the_hosts_to_corrupt_but_an_itt_is_not(ubuf):
    """The DTE KVM saved in the shared device table: the host rewrites it (no fault), and
    RESTORE_TABLES then refuses the buffer (an ITT for a device the table lost):
    availability. The kzalloc'd ITT page itself faults for the host."""
    from sim.memory.access import Stage2Fault
    from sim.world import GUEST, RAM_BASE

    dst = ubuf.dst
    its = dst.host.its
    error, buf = save_tables_ubuf(its)
    assert error is None
    device = min(its.devices.values(), key=lambda d: d.device_id)
    dte = its.check_id(its.baser_device_table, device.device_id)
    host = Initiator("dst.host.attack", HOST)
    dst.memory.write(host, dte, bytes(8))  # the DTE's Valid bit is the host's to clear
    fresh = VirtualITS(
        nr_vcpus=len(its.vcpus),
        ram_base=RAM_BASE,
        ram_size=ubuf.ram_size,
        memory=dst.memory,
        guest=GUEST,
        name="fresh",
        probe=False,
    )
    fresh.set_regs(its.get_regs())
    assert restore_tables_ubuf(fresh, buf) is ITSError.EINVAL and not fresh.devices
    with pytest.raises(Stage2Fault):
        dst.memory.write(host, device.itt_addr, bytes(8))
