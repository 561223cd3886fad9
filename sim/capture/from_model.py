"""A capture of a modelled guest: what the simulated ``linux`` driver wrote into its queue,
in the capture format, so a replay of the model's own stream can be set beside the model
(the replay-speed benchmark in the README, and tests that a replay changes nothing but
the driver). The queue is read back after the run, as ``pkvm-sim capture`` reads a real
guest's: a stream that wrapped the 64 KiB queue cannot be captured this way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.capture.format import (
    FORMAT,
    Capture,
    CapturedCommand,
    CapturedDevice,
    GuestInfo,
    ITTInfo,
    KernelInfo,
    Registers,
)
from sim.its import regs as r
from sim.its.commands import MAPD, decode

if TYPE_CHECKING:
    from sim.world import World


def capture_of_world(world: World) -> Capture:
    """The boot stream of ``world``'s guest (run it with no workload after boot)."""
    guest = world.guest
    if guest.cwriter == 0 or guest.cwriter // r.ITS_CMD_SIZE >= guest.cmdq_size // 32 - 1:
        raise ValueError("the queue is empty or may have wrapped")
    queue = guest.machine.memory.peek(guest.cmdq, guest.cwriter)
    commands, itts = [], {}
    for i in range(0, len(queue), r.ITS_CMD_SIZE):
        raw = queue[i : i + r.ITS_CMD_SIZE]
        cmd = decode(raw)
        if isinstance(cmd, MAPD) and cmd.valid:
            itts.setdefault(cmd.device_id, []).append(ITTInfo(addr=cmd.itt_addr, size=cmd.size))
        dws = [f"{int.from_bytes(raw[j : j + 8], 'little'):016x}" for j in range(0, 32, 8)]
        commands.append(CapturedCommand(index=i // r.ITS_CMD_SIZE, raw=dws))
    spec = world.scenario.guest
    baser0 = r.make_baser(
        guest.device_table, guest.device_table_size, indirect=spec.two_level_device_table
    )
    return Capture(
        format=FORMAT,
        kernel=KernelInfo(release=f"model-{spec.kernel or '7.3'}", generation=spec.kernel or "7.3"),
        guest=GuestInfo(ram_base=guest.ram_base, ram_size=world.ram_size, vcpus=spec.vcpus),
        registers=Registers(
            gits_cbaser=r.make_cbaser(guest.cmdq, guest.cmdq_size),
            gits_baser=[baser0, r.make_baser(guest.collection_table, r.SZ_64K)] + [0] * 6,
        ),
        devices=[CapturedDevice(device_id=d, itts=t) for d, t in sorted(itts.items())],
        commands=commands,
        notes=[f"the simulated linux driver's stream, scenario {world.scenario.name}"],
    )
