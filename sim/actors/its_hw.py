"""The physical GICv3 ITS: a DMA master over its own tables, driven by the host.

The host programs it for the host's own devices through its command queue. It reads and
writes ITTs in memory by DMA, which no stage-2 checks: only an IOMMU domain registered
for it (``memory.iommu[name]``) does, or EL2 if the lowvisor mediates the host's ITS
commands (a scenario setting). The model keeps the architectural effect that matters
here: MAPTI makes the ITS write the 8-byte ITE at ``ITT + EventID * 8``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.its.commands import MAPD, MAPTI, ITSCommand
from sim.its.tables import ITE
from sim.memory.ownership import HOST, PageState
from sim.memory.physmem import PAGE_SHIFT

if TYPE_CHECKING:
    from sim.world import Machine


class MediationRefused(Exception):
    """EL2 refused a host command to the physical ITS."""


class ITSHardware:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.initiator = machine.lowvisor.its_dma_initiator()
        self.itts: dict[int, tuple[int, int]] = {}  # DeviceID -> (ITT address, size)

    def host_command(self, cmd: ITSCommand) -> None:
        """The host queues ``cmd`` on the physical ITS; the ITS carries it out by DMA."""
        if isinstance(cmd, MAPD) and cmd.valid:
            size = (1 << (cmd.size + 1)) * 8
            if self.machine.lowvisor.mediate_physical_its:
                self._mediate(cmd.itt_addr, size)
            self.itts[cmd.device_id] = (cmd.itt_addr, size)
        elif isinstance(cmd, MAPTI):
            itt, _ = self.itts[cmd.device_id]
            entry = ITE(0, cmd.intid, cmd.icid).encode().to_bytes(8, "little")
            self.machine.memory.write(self.initiator, itt + cmd.event_id * 8, entry)

    def _mediate(self, addr: int, size: int) -> None:
        ownership = self.machine.memory.ownership
        for pfn in range(addr >> PAGE_SHIFT, ((addr + size - 1) >> PAGE_SHIFT) + 1):
            if ownership.state(HOST, pfn) is not PageState.OWNED:
                raise MediationRefused(
                    f"EL2 refused MAPD: ITT page {pfn << PAGE_SHIFT:#x} is not host memory"
                )
