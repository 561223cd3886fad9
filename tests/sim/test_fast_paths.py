"""The hot paths' shortcuts: each must give what the long way gives.

- sim.parallel.call: the collector paused for the job, restored after, errors pass through.
- sim.its.commands.decode shares decoded commands by their bytes: equal to a fresh
  decode, errors still raised, the table bounded.
- sim.proposals.base.hooks_of: the trap hooks a proposal replaces (the others are skipped).
- The MSI workload (Host.msi_workload) draws its arrivals, devices and vectors inline:
  the same numbers, from the same stream, as rng.expovariate, rng.choices and
  rng.randrange on this Python.
- share-host-claims' command_write_pages looks ITEs up lazily: the pages a batch's
  DISCARDs and MAPD V=0s make KVM write, as a whole-device set would give them.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import math
import random

import pytest

from sim.its import commands as c
from sim.its.commands import DISCARD, INV, MAPC, MAPD, MAPTI, SYNC, CommandDecodeError, decode
from sim.parallel import call
from sim.proposals import make_proposal
from sim.proposals.base import TRAP_HOOKS, hooks_of


def _gc_state() -> bool:
    return gc.isenabled()


def _boom() -> None:
    raise KeyError("boom")


def test_call_pauses_the_collector_for_the_job_and_restores_it():
    assert gc.isenabled()
    assert call(_gc_state, ()) is False
    assert gc.isenabled()
    with pytest.raises(KeyError, match="boom"):
        call(_boom, ())
    assert gc.isenabled()
    gc.disable()
    try:
        assert call(_gc_state, ()) is False
        assert not gc.isenabled()  # left as it was found
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "cmd",
    [
        MAPTI(7, 3, 8195, 1),
        SYNC(2),
        INV(7, 3),
        DISCARD(9, 0),
        MAPC(1, 1, True),
        MAPD(5, 4, 0x4100_0000, True),
        MAPD(5, 0, 0, False),
    ],
)
def test_decode_of_the_same_bytes_twice_equals_a_fresh_decode(cmd):
    raw = cmd.encode()
    c._DECODED.clear()
    first = decode(raw)
    again = decode(bytes(raw))  # other bytes objects, same value
    assert first == cmd and again == cmd and type(again) is type(cmd)
    assert decode(bytearray(raw)) == cmd  # unhashable input: decoded, not cached


def test_decode_still_refuses_bad_bytes_after_good_ones():
    raw = SYNC(1).encode()
    decode(raw)
    with pytest.raises(CommandDecodeError, match="unknown ITS command number 0xff"):
        decode(b"\xff" + raw[1:])
    with pytest.raises(CommandDecodeError, match="32 bytes, got 31"):
        decode(raw[:31])
    with pytest.raises(CommandDecodeError, match="unknown ITS command number 0xff"):
        decode(b"\xff" + raw[1:])  # not remembered as good


def test_the_decoded_table_stays_bounded():
    c._DECODED.clear()
    for i in range(c._DECODED_MAX + 10):
        assert decode(INV(1, i).encode()) == INV(1, i)
    assert len(c._DECODED) <= c._DECODED_MAX


def test_the_msi_workloads_inline_draws_are_the_librarys():
    rates = [40000, 5000, 20000, 2000, 10, 50]  # cloud-vm's devices
    vectors = [17, 5, 17, 5, 1, 2]
    cum = list(itertools.accumulate(rates))
    total, last = cum[-1] + 0.0, len(rates) - 1
    rate = sum(rates) / 1e6
    inline, library = random.Random("7:src.msi"), random.Random("7:src.msi")
    for _ in range(20_000):
        delay = -math.log(1.0 - inline.random()) / rate
        assert delay == library.expovariate(rate)
        i = bisect.bisect(cum, inline.random() * total, 0, last)
        assert i == library.choices(range(len(rates)), cum_weights=cum)[0]
        n, bits = vectors[i], vectors[i].bit_length()
        vector = inline.getrandbits(bits)
        while vector >= n:
            vector = inline.getrandbits(bits)
        assert vector == library.randrange(n)
    assert inline.getstate() == library.getstate()


def test_hooks_of_names_the_trap_hooks_each_proposal_replaces():
    assert hooks_of(make_proposal("trusted-host")) == frozenset()
    assert hooks_of(make_proposal("userspace-serialization")) == frozenset()
    assert hooks_of(make_proposal("share-host-claims")) == {"before_process", "after_process"}
    assert hooks_of(make_proposal("share-cmdq-snoop")) == {"before_mmio", "after_process"}
    assert hooks_of(make_proposal("share-cmdq-shadow")) == {
        "before_mmio",
        "after_mmio",
        "after_process",
    }
    proposal = make_proposal("trusted-host")
    proposal.after_mmio = lambda machine, offset, val: iter(())  # set on the instance
    assert hooks_of(proposal) == {"after_mmio"}
    assert set(TRAP_HOOKS) == {"before_mmio", "after_mmio", "before_process", "after_process"}


def _whole_set_pages(its, target):
    """command_write_pages as it was: every device's live EventIDs as a set, up front."""
    from sim.its import regs as r
    from sim.its.tables import ITE_ESZ
    from sim.memory.physmem import PAGE_SHIFT

    base, size = r.cbaser_addr(its.cbaser), r.cbaser_size(its.cbaser)
    itts = {
        d.device_id: (d.itt_addr, {ev for ev, ite in d.ites.items() if ite.collection})
        for d in its.devices.values()
    }
    addrs, slot = [], its.creadr
    while slot != target:
        raw = its.kvm.read(base + slot, r.ITS_CMD_SIZE)
        slot = (slot + r.ITS_CMD_SIZE) % size
        cmd = decode(raw)
        if isinstance(cmd, DISCARD):
            device = itts.get(cmd.device_id)
            if device is not None and cmd.event_id in device[1]:
                device[1].discard(cmd.event_id)
                addrs.append(device[0] + cmd.event_id * ITE_ESZ)
        elif isinstance(cmd, MAPD):
            itts[cmd.device_id] = (cmd.itt_addr, set()) if cmd.valid else None
            gpa = None if cmd.valid else its.check_id(its.baser_device_table, cmd.device_id)
            if gpa is not None:
                addrs.append(gpa)
        elif isinstance(cmd, MAPTI) and itts.get(cmd.device_id) is not None:
            itts[cmd.device_id][1].add(cmd.event_id)
    return sorted({a >> PAGE_SHIFT for a in addrs})


def test_command_write_pages_matches_the_whole_device_sets():
    """A queue of DISCARDs (twice for one event, for a never-mapped one, for an unknown
    device), a MAPTI after its DISCARD, and MAPD V=0 then V=1 for one device, run
    against a guest's mapped vITS: the same pages as the old whole-set scan."""
    from sim.its import regs as r
    from sim.proposals.share_host_claims import command_write_pages
    from sim.run import simulate
    from sim.scenario import load_scenario
    from sim.world import RAM_BASE

    world = simulate(load_scenario("scenarios/small-vm.yaml"), "trusted-host")
    its = world.guest.machine.host.its
    dev = next(iter(its.devices.values()))
    itt = dev.itt_addr
    queue = [
        DISCARD(dev.device_id, 0),
        DISCARD(dev.device_id, 0),
        DISCARD(dev.device_id, 1),
        MAPTI(dev.device_id, 0, 8192, 0),
        DISCARD(dev.device_id, 0),
        DISCARD(dev.device_id, 1000),
        DISCARD(0xBEEF, 0),
        MAPD(dev.device_id, 0, 0, False),
        DISCARD(dev.device_id, 2),
        MAPD(dev.device_id, 4, itt, True),
        DISCARD(dev.device_id, 0),
    ]
    base = r.cbaser_addr(its.cbaser)
    memory = world.guest.machine.memory
    for i, cmd in enumerate(queue):  # the guest writes them, without a CWRITER trap
        memory.write(world.guest.cpu, base + its.creadr + i * r.ITS_CMD_SIZE, cmd.encode())
    target = its.creadr + len(queue) * r.ITS_CMD_SIZE
    assert base >= RAM_BASE and target < r.cbaser_size(its.cbaser)
    assert its.enabled and its.clears_entries
    expected = _whole_set_pages(its, target)
    assert command_write_pages(its, target) == expected
    assert expected  # the batch does make KVM write something
