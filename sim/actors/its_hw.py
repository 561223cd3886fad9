"""The physical GICv3 ITS: a DMA master over its own tables, driven by the host.

The host programs it for the host's own devices through its command queue. It reads and
writes ITTs in memory by DMA, which no stage-2 checks: only an IOMMU domain registered
for it (``memory.iommu[name]``) does, or EL2 if the lowvisor mediates the host's ITS
commands (a scenario setting). The model keeps the architectural effect that matters
here: MAPTI makes the ITS write the 8-byte ITE at ``ITT + EventID * 8``.

Commands are checked as the GICv3 architecture (Arm IHI 0069, the MAPD and MAPTI/MAPI
command descriptions) requires: a DeviceID or ICID beyond what GITS_TYPER supports, an
ITT Size beyond GITS_TYPER.ID_bits, a MAPTI for a device with no valid mapping, an
EventID that exceeds the size supported by the ITT, or a pINTID outside the LPI range
is a command error. What the ITS then does is IMPLEMENTATION DEFINED (it may ignore the
command, or stall with GITS_CREADR.Stalled, with a system error if GITS_TYPER.SEIS).
The model does what QEMU's ITS does (hw/intc/arm_gicv3_its.c, process_mapd and
process_mapti: "in case of error we ignore this command and move onto the next command
in the queue"; a failed memory transaction sets GITS_CREADR.Stalled): a command error
is ignored and logged, and a DMA access the IOMMU refuses stalls the ITS, which then
runs no further command. GITS_TYPER as QEMU's: 16 DeviceID bits, 16 EventID bits,
16-bit collection IDs; the ITE is 8 bytes, as in KVM's vITS (QEMU's is 12).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.its.commands import MAPD, MAPI, MAPTI, ITSCommand
from sim.its.regs import GIC_LPI_OFFSET
from sim.its.tables import ITE, ITE_ESZ
from sim.memory.access import Stage2Fault
from sim.memory.ownership import HOST, PageState
from sim.memory.physmem import PAGE_SHIFT

if TYPE_CHECKING:
    from sim.world import Machine

DEVICE_ID_BITS = 16  # GITS_TYPER.Devbits + 1
EVENT_ID_BITS = 16  # GITS_TYPER.ID_bits + 1
ICID_BITS = 16  # GITS_TYPER.CIL = 0: 16-bit collection IDs
INTID_BITS = 16  # GICD_TYPER.IDbits + 1: LPIs are 8192 .. 65535


class MediationRefused(Exception):
    """EL2 refused a host command to the physical ITS."""


class ITSHardware:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.initiator = machine.lowvisor.its_dma_initiator()
        self.itts: dict[int, tuple[int, int]] = {}  # DeviceID -> (ITT address, size)
        self.command_errors: list[str] = []  # commands the ITS ignored, and why
        self.stalled = False  # GITS_CREADR.Stalled: a memory error stopped the queue

    def host_command(self, cmd: ITSCommand) -> str | None:
        """The host queues ``cmd`` on the physical ITS; the ITS carries it out by DMA.

        Returns ``None`` once the command has run, or the command error for which the
        ITS ignored it (or the queue being stalled). Raises :class:`MediationRefused` if
        EL2 refused it, and the :class:`Stage2Fault` of a DMA access the ITS's IOMMU
        domain refused (the ITS stalls)."""
        if self.stalled:
            return self._error(f"{type(cmd).__name__}: the ITS is stalled (GITS_CREADR.Stalled)")
        if isinstance(cmd, MAPD):
            return self._mapd(cmd)
        if isinstance(cmd, MAPTI):
            return self._mapti("MAPTI", cmd.device_id, cmd.event_id, cmd.intid, cmd.icid)
        if isinstance(cmd, MAPI):  # MAPTI with pINTID = EventID
            return self._mapti("MAPI", cmd.device_id, cmd.event_id, cmd.event_id, cmd.icid)
        return None  # other commands write no memory: not modelled

    def _error(self, why: str) -> str:
        self.command_errors.append(why)
        return why

    def _mapd(self, cmd: MAPD) -> str | None:
        if cmd.device_id >= 1 << DEVICE_ID_BITS:
            return self._error(f"MAPD: DeviceID {cmd.device_id:#x} >= 2^{DEVICE_ID_BITS}")
        if not cmd.valid:
            self.itts.pop(cmd.device_id, None)
            return None
        if cmd.size + 1 > EVENT_ID_BITS:
            return self._error(f"MAPD: ITT Size {cmd.size} > GITS_TYPER.ID_bits")
        size = (1 << (cmd.size + 1)) * ITE_ESZ
        if self.machine.lowvisor.mediate_physical_its:
            self._mediate(cmd.itt_addr, size)
        self.itts[cmd.device_id] = (cmd.itt_addr, size)
        return None

    def _mapti(self, name: str, device_id: int, event_id: int, intid: int, icid: int) -> str | None:
        mapped = self.itts.get(device_id)
        if device_id >= 1 << DEVICE_ID_BITS or mapped is None:
            return self._error(f"{name}: DeviceID {device_id:#x} is not mapped")
        itt, size = mapped
        events = size // ITE_ESZ
        if event_id >= events:
            return self._error(f"{name}: EventID {event_id:#x} exceeds the ITT's {events} events")
        if not GIC_LPI_OFFSET <= intid < 1 << INTID_BITS:
            return self._error(f"{name}: pINTID {intid} is not an LPI INTID")
        if icid >= 1 << ICID_BITS:
            return self._error(f"{name}: ICID {icid:#x} >= 2^{ICID_BITS}")
        entry = ITE(0, intid, icid).encode().to_bytes(ITE_ESZ, "little")
        try:
            self.machine.memory.write(self.initiator, itt + event_id * ITE_ESZ, entry)
        except Stage2Fault:
            self.stalled = True
            raise
        return None

    def _mediate(self, addr: int, size: int) -> None:
        ownership = self.machine.memory.ownership
        for pfn in range(addr >> PAGE_SHIFT, ((addr + size - 1) >> PAGE_SHIFT) + 1):
            if ownership.state(HOST, pfn) is not PageState.OWNED:
                raise MediationRefused(
                    f"EL2 refused MAPD: ITT page {pfn << PAGE_SHIFT:#x} is not host memory"
                )
