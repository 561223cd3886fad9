"""share-cmdq-snoop: EL2 parses the guest's ITS command queue and shares each ITT.

On every GITS_CWRITER trap the lowvisor decodes the new commands before the host sees
them. A MAPD V=1 shares the whole pages of its ITT with the host; a MAPD that unmaps or
remaps a device releases the old pages once the host has processed the queue (not
before: the DISCARDs ahead of it make KVM write the ITT), so the host sets the timing. CBASER
writes tell EL2 where the queue is. EL2's tracking state moves with the VM.
So KVM's writes while it runs the queue reach their pages: each DISCARD zeroes an ITE
on a page still shared, MAPD V=0 zeroes a DTE in the device table the driver shares.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sim.its import regs as r
from sim.its.commands import GITS_CMD_MAPD, MAPD, CommandDecodeError, command_number, decode
from sim.memory.ownership import PageState
from sim.memory.physmem import PAGE_SHIFT
from sim.proposals.base import Payload, Proposal, kvm_restore_tables

if TYPE_CHECKING:
    from sim.world import Machine, World

VITS_TYPER_IDBITS = 16


@dataclass
class SnoopState:
    """What EL2 keeps: where the queue is, how far it has read, which ITT is where."""

    base: int = 0
    size: int = 0
    read: int = 0
    itts: dict[int, list[int]] = field(default_factory=dict)  # DeviceID -> ITT pages
    refs: Counter[int] = field(default_factory=Counter)  # ITTs on each page
    shared: set[int] = field(default_factory=set)  # pages EL2 shared itself
    release: list[int] = field(default_factory=list)  # pages to drop after the host ran


class ShareCmdqSnoop(Proposal):
    name = "share-cmdq-snoop"
    summary = "EL2 parses MAPD in the command queue and shares each ITT's pages"
    el2_loc_cost = "el2_loc_share_cmdq_snoop"
    el2_lines_source = (
        "vgic-its.c (v6.12) decoders and MAPD/MAPC/MAPTI handlers counted (sim/costs.py)"
    )

    def __init__(self) -> None:
        self.state: dict[str, SnoopState] = {}

    def _state(self, machine: Machine) -> SnoopState:
        return self.state.setdefault(machine.name, SnoopState())

    def before_mmio(self, machine: Machine, offset: int, val: int) -> Generator:
        st = self._state(machine)
        if offset == r.GITS_CBASER:
            st.base, st.size, st.read = r.cbaser_addr(val), r.cbaser_size(val), 0
            return
        if offset != r.GITS_CWRITER or not st.size:
            return
        target = r.cmd_offset(val)
        lowvisor = machine.lowvisor
        world = lowvisor.world
        while target < st.size and st.read != target:
            slot = st.base + st.read
            raw = lowvisor.read_guest(slot, r.ITS_CMD_SIZE)
            st.read = (st.read + r.ITS_CMD_SIZE) % st.size
            yield world.charge(lowvisor.name, world.costs.el2_cmd_parse_us, "proposal")
            if command_number(raw) != GITS_CMD_MAPD:
                continue  # EL2 switches on DW0[7:0]; only MAPD is decoded further
            try:
                cmd = decode(raw)
            except CommandDecodeError:
                continue
            if isinstance(cmd, MAPD):
                yield from self._snoop_mapd(machine, st, cmd, slot)

    def _snoop_mapd(self, machine: Machine, st: SnoopState, cmd: MAPD, slot: int) -> Generator:
        old = st.itts.pop(cmd.device_id, None)
        if old is not None:
            st.release.extend(old)
        if not cmd.valid or cmd.size + 1 > VITS_TYPER_IDBITS:
            return  # KVM rejects the oversized ITT too
        end = cmd.itt_addr + (1 << (cmd.size + 1)) * 8
        pages = list(range(cmd.itt_addr >> PAGE_SHIFT, ((end - 1) >> PAGE_SHIFT) + 1))
        st.itts[cmd.device_id] = pages
        lowvisor = machine.lowvisor
        for pfn in pages:
            st.refs[pfn] += 1
            if lowvisor.guest_state(pfn) is PageState.OWNED:
                cause = f"snooped MAPD device {cmd.device_id:#x} at queue slot {slot:#x}"
                yield from lowvisor.el2_share(pfn, cause)
                st.shared.add(pfn)

    def after_process(self, machine: Machine) -> Generator:
        st = self._state(machine)
        release, st.release = st.release, []
        for pfn in release:
            st.refs[pfn] -= 1
            if st.refs[pfn] == 0 and pfn in st.shared:
                st.shared.discard(pfn)
                if machine.lowvisor.guest_state(pfn) is PageState.SHARED_OWNED:
                    # (Not so if the VM has left this machine in the meantime.)
                    yield from machine.lowvisor.el2_unshare(pfn, "snooped MAPD: ITT released")

    def restore(self, world: World, payload: Payload) -> Generator:
        # EL2 state travels EL2 to EL2 with the VM; the shares came with guest RAM.
        self.state[world.dst.name] = copy.deepcopy(self._state(world.src))
        yield from kvm_restore_tables(world, world.dst, payload)
