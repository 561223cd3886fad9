"""The physical ITS (sim/actors/its_hw.py): the host's commands to it, checked as the
GICv3 architecture checks them, and EL2's mediation of them.

A MAPTI whose EventID is beyond the ITT the MAPD gave the device is a command error;
the modelled ITS ignores such a command and carries on, as QEMU's arm_gicv3_its.c
(process_mapti: "in case of error we ignore this command") does, so no ITE lands
outside the ITT EL2 checked.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from sim.actors.its_hw import ITSHardware, MediationRefused
from sim.its.commands import MAPD, MAPI, MAPTI
from sim.its.tables import ITE
from sim.memory.access import Stage2Fault
from sim.memory.labels import LabelKind
from sim.memory.ownership import PageState
from sim.memory.physmem import PAGE_SIZE
from sim.world import GUEST, RAM_BASE
from tests.sim.test_audit import POOL, Seeded, audited, check_all, scenario

HOST_ITT = RAM_BASE - PAGE_SIZE  # a host page just below guest RAM


def mediated(allocator: str = POOL):
    scen = scenario(allocator)
    return scen.model_copy(
        update={"lowvisor": scen.lowvisor.model_copy(update={"mediate_physical_its": True})}
    )


def _first_private_secret(world) -> int:
    src = world.src
    for start, _end, label in src.memory.labels.labelled():
        owned = src.memory.ownership.state(GUEST, start >> 12) is PageState.OWNED
        if label.kind is LabelKind.SECRET and owned and start % 8 == 0:
            return start
    raise AssertionError("no private secret")


def _mapti_past_a_host_itt(seed: Seeded, world) -> Generator:
    """A 2-entry ITT on a host page (EL2 lets it through), then a MAPTI whose EventID
    puts the ITE on a protected secret."""
    src = world.src
    victim = _first_private_secret(world)
    before = src.memory.peek(victim, 8)
    its_hw = src.its_hw
    seed.done.append(("mapd", its_hw.host_command(MAPD(0x42, 0, HOST_ITT, True))))
    event = (victim - HOST_ITT) // 8
    seed.done.append(("mapti", its_hw.host_command(MAPTI(0x42, event, 8192, 0))))
    seed.done.append(("bytes", victim, before, src.memory.peek(victim, 8)))
    yield from ()


@pytest.mark.parametrize("mediate", [True, False])
def test_a_mapti_beyond_the_itt_is_a_command_error_and_writes_nothing(mediate):
    """Gap 7 of issue 12: with EL2 mediating, the MAPD is legal (its ITT is host
    memory); the MAPTI's EventID 0x200000-odd exceeds the 2 events the ITT holds, so
    the ITS rejects it: no DMA write, no violation, the secret's bytes unchanged.
    Without mediation the answer is the same: the ITT size is the hardware's check."""
    scen = mediated() if mediate else scenario(POOL)
    seed = Seeded(_mapti_past_a_host_itt)
    run, truth = audited(scen, "share-cmdq-snoop", seed)
    (_, mapd), (_, mapti), (_, _victim, before, after) = seed.done
    assert mapd is None  # executed
    assert mapti is not None and "EventID" in mapti and "2 events" in mapti
    assert after == before
    src = truth.world.src
    assert not [r for r in src.memory.log if r.actor == "src.its-hw" and r.write]
    assert not [v for v in run.violations if v.how == "wrote"]
    assert src.its_hw.command_errors == [mapti]
    check_all(run, truth)


def _mapti_within_the_itt(seed: Seeded, world) -> Generator:
    src = world.src
    its_hw = src.its_hw
    assert its_hw.host_command(MAPD(0x42, 2, HOST_ITT, True)) is None  # 8 events
    assert its_hw.host_command(MAPTI(0x42, 7, 8200, 1)) is None
    seed.done.append(src.memory.peek(HOST_ITT + 7 * 8, 8))
    yield from ()


def test_a_mapti_within_the_itt_writes_the_ite_at_its_slot():
    seed = Seeded(_mapti_within_the_itt)
    run, truth = audited(mediated(), "share-cmdq-snoop", seed)
    (entry,) = seed.done
    assert entry == ITE(0, 8200, 1).encode().to_bytes(8, "little")
    assert truth.world.src.its_hw.command_errors == []
    check_all(run, truth)


def _its_hw(world) -> ITSHardware:
    return world.src.its_hw


def _commands(seed: Seeded, world) -> Generator:
    its_hw = _its_hw(world)
    seed.done.append(its_hw.host_command(MAPTI(0x43, 0, 8192, 0)))  # no MAPD yet
    seed.done.append(its_hw.host_command(MAPD(0x43, 16, HOST_ITT, True)))  # > 16 bits
    seed.done.append(its_hw.host_command(MAPD(1 << 16, 0, HOST_ITT, True)))  # DeviceID
    seed.done.append(its_hw.host_command(MAPD(0x43, 15, HOST_ITT - (1 << 20), True)))
    seed.done.append(its_hw.host_command(MAPTI(0x43, 0, 100, 0)))  # not an LPI
    seed.done.append(its_hw.host_command(MAPTI(0x43, 0, 8192, 1 << 16)))  # ICID
    seed.done.append(its_hw.host_command(MAPI(0x43, 8192, 0)))  # EventID 8192 = pINTID 8192
    seed.done.append(its_hw.host_command(MAPI(0x43, 100, 0)))  # EventID = pINTID 100
    seed.done.append(its_hw.host_command(MAPD(0x43, 0, 0, False)))  # unmap
    seed.done.append(its_hw.host_command(MAPTI(0x43, 0, 8192, 0)))  # unmapped again
    yield from ()


def test_command_errors_follow_the_architecture():
    """Each bad parameter is a command error the ITS ignores (the queue goes on); the
    good MAPDs execute. Before the fix, a MAPTI for a device never mapped raised
    KeyError out of the model."""
    seed = Seeded(_commands)
    _run, truth = audited(scenario(POOL), "userspace-serialization", seed)
    errors = seed.done
    ok = [e is None for e in errors]
    assert ok == [False, False, False, True, False, False, True, False, True, False]
    assert "not mapped" in errors[0] and "not mapped" in errors[9]
    assert errors[7].startswith("MAPI: pINTID 100")
    assert "Size" in errors[1] and "DeviceID" in errors[2]
    assert "INTID" in errors[4] and "ICID" in errors[5]
    assert _its_hw(truth.world).command_errors == [e for e in errors if e]
    writes = [r for r in truth.world.src.memory.log if r.actor == "src.its-hw" and r.write]
    itt = HOST_ITT - (1 << 20)
    assert [(r.addr, r.length) for r in writes] == [(itt + 8192 * 8, 8)]  # the good MAPI


def _mapd_onto_guest_memory(seed: Seeded, world) -> Generator:
    victim = _first_private_secret(world)
    try:
        _its_hw(world).host_command(MAPD(0x44, 0, victim & ~0xFF, True))
    except MediationRefused as exc:
        seed.done.append(str(exc))
    yield from ()


def test_el2_still_refuses_an_itt_on_guest_memory():
    seed = Seeded(_mapd_onto_guest_memory)
    _run, truth = audited(mediated(), "share-cmdq-snoop", seed)
    (refusal,) = seed.done
    assert "not host memory" in refusal
    assert 0x44 not in _its_hw(truth.world).itts


def _its_write_faults(seed: Seeded, world) -> Generator:
    its_hw = _its_hw(world)
    victim = _first_private_secret(world)
    assert its_hw.host_command(MAPD(0x45, 0, victim & ~0xFF, True)) is None
    try:
        its_hw.host_command(MAPTI(0x45, 0, 8192, 0))
    except Stage2Fault as fault:
        seed.faults.append(fault)
    seed.done.append(its_hw.stalled)
    seed.done.append(its_hw.host_command(MAPTI(0x45, 0, 8193, 0)))
    yield from ()


def test_an_iommu_fault_stalls_the_its():
    """Under iommu-gated-its the ITS's own write to a page its domain does not map is a
    memory error: the ITS stalls (GITS_CREADR.Stalled) and runs nothing more."""
    seed = Seeded(_its_write_faults)
    audited(scenario(POOL), "iommu-gated-its", seed)
    assert len(seed.faults) == 1 and "IOMMU" in seed.faults[0].reason
    stalled, after = seed.done
    assert stalled is True
    assert after is not None and "stalled" in after
