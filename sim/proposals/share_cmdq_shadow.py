"""share-cmdq-shadow: EL2 copies the guest's commands into a queue it owns, then decides.

The vITS variant of Sebastian Ene's series (March 2026, ``arch/arm64/kvm/hyp/nvhe/
its_emulate.c``; read at raspberry-vanilla/android_kernel_brcm_rpi 1904225b8f2d), which
hardens the host's *physical* ITS: there the host writes a shadow queue, EL2 copies each
command into a queue it owns (``cwriter_write``), decodes it there (``process_cmd``),
shares and pins each MAPD's ITT pages (``track_pfn_add``: ``hyp_pin_shared_mem``), drops
them on unmap (``track_pfn_remove``), refuses every VLPI command (``req_type & 0x20``:
-EFAULT) and polls GITS_CREADR after each command, up to 1000 x ``pkvm_udelay(100)``
(``submit_single_cmd``). Here the same machinery stands between a protected guest and
KVM's emulated ITS:

- The guest's command queue is the shadow queue. The driver keeps it private (not
  shared with the host), so what the guest queued is what EL2 reads, through the guest's
  stage-2 (fixmap); the host can neither read nor rewrite it.
- On each GITS_CWRITER trap EL2 copies the new commands into its own queue (host pages
  donated to EL2, ``__pkvm_host_donate_hyp``, as ``pkvm_setup_its_shadow_cmdq`` does) and
  decodes them there. A MAPD V=1 shares (if still private) and pins every page its ITT
  covers; a VLPI command stops the batch there, as the series' ``cwriter_write`` returns.
- The executor is KVM at EL1, not an ITS, so EL2 forwards the checked commands to a ring
  in host memory shared with EL2 and pinned (``__pkvm_host_share_hyp`` +
  ``hyp_pin_shared_mem``), at the guest's offsets; KVM runs its queue from there. The host
  may rewrite that ring: it then misemulates its own ITS, which it can always do; what EL2
  shared was decided on its own copy.
- A MAPD that unmaps or remaps a device releases the old ITT pages (unpin, and unshare
  the pages EL2 shared once no pin is left) at the trap itself when KVM has run every
  command before it (MAPD V=0 touches the DTE, never the ITT: vgic_its_cmd_handle_mapd);
  else once KVM's CREADR has caught up with what EL2 forwarded (the DISCARDs ahead of it
  write the ITT), or when the poll times out. The host cannot stretch the share.
- After the host has run (or deferred) the batch, EL2 polls KVM's CREADR once per
  command; while it lags, every 100 us up to 1000 times, holding the vCPU.

Differences from the series, on purpose: the series refuses a MAPD whose ITT is not
page aligned (-EINVAL) because it shares host pages with itself; a guest's ITTs are
256-byte aligned, so the covering pages are shared. The series submits and polls
command by command; here a batch is forwarded in one exit and polled per command. On a
poll timeout the series rolls the command back; here EL2 keeps the pins of a MAPD V=1
the host has not run (the pages are the guest's ITT, shared for that device) and
releases the pages of a pending unmap. EL2 state (queue offset, pins) moves with the VM;
the destination's EL2 sets its queue and ring up inside the downtime (17 host hypercalls
and a 64 KiB copy each way), which a VMM could have done before the pause.
"""

from __future__ import annotations

import copy
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sim.its import regs as r
from sim.its.commands import GITS_CMD_MAPD, MAPD, CommandDecodeError, command_number, decode
from sim.memory.access import Initiator
from sim.memory.ownership import HOST, HYP, OwnershipError, PageState, Transition
from sim.memory.physmem import PAGE_SHIFT
from sim.proposals.base import Payload, Proposal, kvm_restore_tables

if TYPE_CHECKING:
    from sim.world import Machine, World

VITS_TYPER_IDBITS = 16
ITS_ITT_ALIGN = 256
# Host memory past guest RAM, 64 GiB beyond the VMM's buffer (vmm_buffer_base): EL2's own
# queue (donated to the hyp) and, 1 MiB above it, the ring EL2 forwards to KVM (host pages
# shared with the hyp). Derived from the layout, so no guest RAM size reaches them.
SHADOW_QUEUES_OFFSET = 0x10_0000_0000
KVM_RING_OFFSET = 0x10_0000


def el2_cmdq_base(machine: Machine) -> int:
    """EL2's own command queue, in host memory past guest RAM."""
    from sim.proposals.userspace_serialization import vmm_buffer_base

    return vmm_buffer_base(machine.lowvisor.world) + SHADOW_QUEUES_OFFSET


def kvm_ring_base(machine: Machine) -> int:
    """The ring of checked commands KVM runs its queue from."""
    return el2_cmdq_base(machine) + KVM_RING_OFFSET


POLL_INTERVAL_US = 100.0  # its_emulate.c submit_single_cmd: pkvm_udelay(100)
POLL_TRIES = 1000  # ... timeout = 1000
VLPI_COMMAND_BIT = 0x20  # process_cmd: "Block all VLPI related commands" (req_type & 0x20)


@dataclass
class ShadowState:
    """What EL2 keeps per machine."""

    guest_base: int = 0  # the guest's queue (its GITS_CBASER)
    size: int = 0
    read: int = 0  # commands before this offset are copied, checked and forwarded
    ready: int = 0  # bytes of EL2's queue and KVM's ring set up on this machine
    itts: dict[int, list[int]] = field(default_factory=dict)  # DeviceID -> pinned pages
    shared: set[int] = field(default_factory=set)  # pages EL2 shared itself
    pending: list[int] = field(default_factory=list)  # pages to release once KVM caught up
    batch: int = 0  # commands forwarded by the last CWRITER trap
    refused: list[str] = field(default_factory=list)


class ShareCmdqShadow(Proposal):
    name = "share-cmdq-shadow"
    summary = (
        "EL2 copies the guest's (private) queue into its own, shares and pins each MAPD's"
        " ITT, refuses VLPI commands, forwards the rest to KVM"
    )
    el2_loc_cost = "el2_loc_share_cmdq_shadow"
    el2_lines_source = "counted by function in the series' its_emulate.c (sim/costs.py)"
    guest_shares_cmdq = False

    def __init__(self) -> None:
        self.state: dict[str, ShadowState] = {}

    def _state(self, machine: Machine) -> ShadowState:
        return self.state.setdefault(machine.name, ShadowState())

    @staticmethod
    def _hyp(machine: Machine) -> Initiator:
        return Initiator(f"{machine.name}.lowvisor.its-shadow", HYP)

    # ---- set-up: EL2's queue and KVM's ring -------------------------------------------

    def _setup(self, machine: Machine, st: ShadowState) -> Generator:
        """``pkvm_setup_its_shadow_cmdq``: the host donates EL2's queue and shares (pinned)
        the ring KVM reads; KVM is told to run its queue from the ring."""
        if st.ready == st.size:  # the same queue; a reset vITS (new_vits) reads it afresh
            self._attach(machine, st)
            return
        if st.ready:  # a new queue size (a new kernel's CBASER): start again
            yield from self._teardown(machine, st)
        st.ready = st.size
        lowvisor = machine.lowvisor
        costs = lowvisor.world.costs
        nr = st.size >> PAGE_SHIFT
        cause = "share-cmdq-shadow: EL2's command queue"
        lowvisor._hypercall("host __pkvm_host_donate_hyp", "proposal")
        yield lowvisor.world.charge(lowvisor.name, costs.host_hvc_us, "proposal")
        yield from lowvisor._apply(
            Transition.HOST_DONATE_HYP, el2_cmdq_base(machine) >> PAGE_SHIFT, nr, cause
        )
        cause = "share-cmdq-shadow: the ring EL2 forwards commands to KVM in"
        for pfn in range(
            kvm_ring_base(machine) >> PAGE_SHIFT, (kvm_ring_base(machine) >> PAGE_SHIFT) + nr
        ):
            lowvisor._hypercall("host __pkvm_host_share_hyp", "proposal")  # one pfn per call
            yield lowvisor.world.charge(lowvisor.name, costs.host_hvc_us, "proposal")
            yield from lowvisor._apply(Transition.HOST_SHARE_HYP, pfn, 1, cause)
        machine.memory.ownership.pin_shared(
            kvm_ring_base(machine) >> PAGE_SHIFT, nr, owner=HOST, borrower=HYP
        )
        self._attach(machine, st)

    def _teardown(self, machine: Machine, st: ShadowState) -> Generator:
        """``pkvm_teardown_its_shadow_cmdq``: unpin and unshare the ring, give EL2's queue
        back to the host."""
        lowvisor = machine.lowvisor
        costs = lowvisor.world.costs
        nr = st.ready >> PAGE_SHIFT
        ring = kvm_ring_base(machine) >> PAGE_SHIFT
        machine.memory.ownership.unpin_shared(ring, nr)
        for pfn in range(ring, ring + nr):
            lowvisor._hypercall("host __pkvm_host_unshare_hyp", "proposal")
            yield lowvisor.world.charge(lowvisor.name, costs.host_hvc_us, "proposal")
            yield from lowvisor._apply(Transition.HOST_UNSHARE_HYP, pfn, 1, "ring torn down")
        cause = "share-cmdq-shadow: EL2's queue back to the host"
        yield from lowvisor._apply(
            Transition.HYP_DONATE_HOST, el2_cmdq_base(machine) >> PAGE_SHIFT, nr, cause
        )
        st.ready = 0

    @staticmethod
    def _attach(machine: Machine, st: ShadowState) -> None:
        its = machine.host.its
        who = its.kvm.who

        base = kvm_ring_base(machine)  # guest RAM's size, so the ring's place, is fixed

        def ring(gpa: int, length: int) -> bytes:
            return machine.memory.read(who, base + (gpa - st.guest_base), length)

        its.cmdq_reader = ring

    # ---- the trap path ----------------------------------------------------------------

    def before_mmio(self, machine: Machine, offset: int, val: int) -> Generator:
        st = self._state(machine)
        if offset == r.GITS_CBASER:
            if not machine.host.its.enabled:  # KVM ignores CBASER while the ITS is on
                st.guest_base, st.size, st.read = r.cbaser_addr(val), r.cbaser_size(val), 0
                yield from self._setup(machine, st)
            return None
        if offset != r.GITS_CWRITER or not st.size:
            return None
        target = r.cmd_offset(val)
        if target >= st.size:
            return None  # KVM ignores it too
        lowvisor = machine.lowvisor
        world = lowvisor.world
        costs = world.costs
        memory = machine.memory
        hyp = self._hyp(machine)
        start, st.batch = st.read, 0
        own, ring = el2_cmdq_base(machine), kvm_ring_base(machine)
        pages: set[int] = set()
        while st.read != target:
            slot = st.read
            pages.add((st.guest_base + slot) >> PAGE_SHIFT)
            raw = lowvisor.read_guest(st.guest_base + slot, r.ITS_CMD_SIZE)
            memory.write(hyp, own + slot, raw)  # memcpy into EL2's own queue
            raw = memory.read(hyp, own + slot, r.ITS_CMD_SIZE)  # decoded there
            yield world.charge(
                lowvisor.name,
                costs.el2_cmd_parse_us + 2 * r.ITS_CMD_SIZE / (costs.memcpy_gbps * 1e3),
                "proposal",
            )
            number = command_number(raw)
            if number & VLPI_COMMAND_BIT:
                self._refuse(machine, st, f"VLPI command {number:#04x} at queue slot {slot:#x}")
                break
            if number == GITS_CMD_MAPD:
                ok = yield from self._mapd(machine, st, raw, slot, first=slot == start)
                if not ok:
                    break
            memory.write(hyp, ring + slot, raw)  # forward the checked command
            st.read = (slot + r.ITS_CMD_SIZE) % st.size
            st.batch += 1
        yield world.charge(lowvisor.name, len(pages) * costs.el2_fixmap_us, "proposal")
        return st.read  # KVM's CWRITER: up to what EL2 checked

    def _refuse(self, machine: Machine, st: ShadowState, what: str) -> None:
        why = f"{machine.lowvisor.name}: share-cmdq-shadow refused {what} (-EFAULT)"
        st.refused.append(why)
        machine.lowvisor.refusals.append(why)

    def _mapd(
        self, machine: Machine, st: ShadowState, raw: bytes, slot: int, first: bool
    ) -> Generator[object, object, bool]:
        """``process_its_mapd``: release the device's old ITT, share and pin the new one;
        False (the batch stops, nothing changed) if a page cannot be pinned."""
        try:
            cmd = decode(raw)
        except CommandDecodeError:
            return True  # KVM fails it the same way
        assert isinstance(cmd, MAPD)
        old = st.itts.pop(cmd.device_id, None)
        if old is not None:
            # KVM has run everything before this MAPD: no DISCARD will write the old ITT.
            caught_up = first and machine.host.its.creadr == slot
            if caught_up:
                yield from self._release(machine, st, old)
            else:
                st.pending.extend(old)
        if not cmd.valid or cmd.size + 1 > VITS_TYPER_IDBITS:
            return True  # KVM rejects the oversized ITT too (E_ITS_MAPD_ITTSIZE_OOR)
        end = cmd.itt_addr + max((1 << (cmd.size + 1)) * 8, ITS_ITT_ALIGN)
        pages = list(range(cmd.itt_addr >> PAGE_SHIFT, ((end - 1) >> PAGE_SHIFT) + 1))
        lowvisor = machine.lowvisor
        ownership = machine.memory.ownership
        guest = lowvisor.guest
        pinned: list[int] = []
        try:
            for pfn in pages:
                if lowvisor.guest_state(pfn) is PageState.OWNED:
                    cause = f"shadow-queue MAPD device {cmd.device_id:#x} at queue slot {slot:#x}"
                    yield from lowvisor.el2_share(pfn, cause)
                    st.shared.add(pfn)
                ownership.pin_shared(pfn, 1, owner=guest, borrower=HOST)
                pinned.append(pfn)
        except OwnershipError as exc:
            yield from self._release(machine, st, pinned)  # track_pfn's roll back
            self._refuse(machine, st, f"MAPD device {cmd.device_id:#x}: {exc}")
            return False
        st.itts[cmd.device_id] = pages
        return True

    def _release(self, machine: Machine, st: ShadowState, pages: list[int]) -> Generator:
        """``track_pfn_remove``: unpin; a page EL2 shared goes back once no pin is left."""
        ownership = machine.memory.ownership
        lowvisor = machine.lowvisor
        for pfn in pages:
            ownership.unpin_shared(pfn, 1)
            if not ownership.pins.get(pfn) and pfn in st.shared:
                st.shared.discard(pfn)
                if lowvisor.guest_state(pfn) is PageState.SHARED_OWNED:
                    yield from lowvisor.el2_unshare(pfn, "shadow-queue MAPD: ITT released")

    def _caught_up(self, machine: Machine, st: ShadowState) -> bool:
        return machine.host.its.creadr == st.read

    def after_process(self, machine: Machine) -> Generator:
        st = self._state(machine)
        if st.pending and self._caught_up(machine, st):
            pending, st.pending = st.pending, []
            yield from self._release(machine, st, pending)

    def after_mmio(self, machine: Machine, offset: int, val: int) -> Generator:
        """``submit_single_cmd``: poll KVM's CREADR, once per command forwarded, then every
        100 us while it lags, at most 1000 times."""
        st = self._state(machine)
        if offset != r.GITS_CWRITER or not st.batch:
            return
        lowvisor = machine.lowvisor
        world = lowvisor.world
        poll = world.costs.el2_creadr_poll_us
        yield world.charge(lowvisor.name, st.batch * poll, "proposal")
        tries = 0
        while not self._caught_up(machine, st) and tries < POLL_TRIES:
            tries += 1
            yield world.charge(lowvisor.name, POLL_INTERVAL_US + poll, "proposal")  # udelay spins
        st.batch = 0
        if st.pending:  # caught up, or timed out: the unmapped ITT goes back either way
            pending, st.pending = st.pending, []
            yield from self._release(machine, st, pending)

    # ---- migration ---------------------------------------------------------------------

    def restore(self, world: World, payload: Payload) -> Generator:
        """EL2 state travels EL2 to EL2 with the VM; the destination's EL2 sets up its
        queue and ring, copies its queue across and pins the ITT pages again (the shares
        came with guest RAM). In a live update EL2 stays: only the new vITS is attached."""
        src, dst = world.src, world.dst
        if dst is src:  # a host live update: EL2, its queue, ring and pins persist
            self._attach(dst, self._state(src))  # the new host's vITS reads the same ring
            yield from kvm_restore_tables(world, dst, payload)
            return
        st = copy.deepcopy(self._state(src))
        st.ready = 0
        self.state[dst.name] = st
        yield from self._setup(dst, st)
        hyp = self._hyp(dst)
        queue = src.memory.read(self._hyp(src), el2_cmdq_base(src), st.size)
        dst.memory.write(hyp, el2_cmdq_base(dst), queue)
        dst.memory.write(hyp, kvm_ring_base(dst), queue)
        yield world.charge(
            dst.lowvisor.name, 2 * st.size / (world.costs.memcpy_gbps * 1e3), "proposal"
        )
        ownership = dst.memory.ownership
        for pfn in [*(p for pages in st.itts.values() for p in pages), *st.pending]:
            ownership.pin_shared(pfn, 1, owner=dst.lowvisor.guest, borrower=HOST)
        yield from kvm_restore_tables(world, dst, payload)
