"""The simulated world: two machines (migration source and destination) and one guest.

Built in phases, as desmod does: construct every component (each with a hierarchical
name), connect them, then simulate. The environment owns the randomness: every actor
draws from a named stream derived from the scenario seed, so the same seed gives the
same run, and a stream (say, the guest's allocations) does not shift when another
proposal makes a different number of draws elsewhere.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import simpy

from sim.exposure import ExposureTracker
from sim.memory.access import MemorySystem
from sim.migration import Correctness, MemoryMap

if TYPE_CHECKING:
    from sim.actors.guest import Guest
    from sim.actors.host import Host
    from sim.actors.its_hw import ITSHardware
    from sim.actors.lowvisor import Lowvisor
    from sim.proposals.base import Proposal
    from sim.scenario import Scenario

GUEST = "pvm"  # the guest's pKVM component name on both machines
RAM_BASE = 0x4000_0000  # QEMU virt


class Span(NamedTuple):
    start: float  # us
    end: float
    lane: str  # actor name, or "migration" for the VMM's phases
    what: str


class PageView(NamedTuple):
    """One guest page at the migration pause: what it holds, who can reach it."""

    pfn: int
    labels: dict[str, int]  # label kind -> bytes on the page
    host_can_reach: bool


@dataclass
class Ledger:
    """What the actors did that costs something, filled in as they do it."""

    cpu_us: Counter[str] = field(default_factory=Counter)
    hypercalls: Counter[str] = field(default_factory=Counter)
    bytes_copied: int = 0
    stream_bytes: int = 0
    its_downtime_us: float = 0.0
    downtime_us: float = 0.0
    msis_delivered: int = 0
    msis_failed: int = 0
    iommu_maps: int = 0
    iotlb_invalidations: int = 0
    # Who asked for EL2's work: "driver" (the guest's ITS driver sharing its own tables)
    # or "proposal" (what the migration proposal adds); see sim.actors.lowvisor.part_of.
    hypercalls_by_part: Counter[str] = field(default_factory=Counter)
    cpu_us_by_part: Counter[str] = field(default_factory=Counter)


class World:
    def __init__(self, scenario: Scenario, proposal: Proposal) -> None:
        from sim.actors.guest import Guest
        from sim.actors.host import Host
        from sim.actors.its_hw import ITSHardware
        from sim.actors.lowvisor import Lowvisor

        self.env = simpy.Environment()
        self.scenario = scenario
        self.guest_name = GUEST
        self.costs = scenario.costs
        self.proposal = proposal
        self.ledger = Ledger()
        self.ram_size = scenario.guest.ram_mib << 20
        self.machines: dict[str, Machine] = {}
        clock = partial(getattr, self.env, "_now")  # env.now, without a Python frame
        # A live update replaces the host kernel on the same machine: no destination.
        self.live_update = scenario.migration.mode == "live-update"
        for name in ("src",) if self.live_update else ("src", "dst"):
            memory = MemorySystem(clock=clock)
            memory.ownership.add_guest(GUEST)
            window = scenario.workload.duration_ms * 1000.0
            exposure = ExposureTracker(memory, clock, window_end=window)
            dma = ExposureTracker(memory, clock, window_end=window, reach="dma")
            machine = Machine(name, memory, exposure, dma)
            machine.lowvisor = Lowvisor(self, machine)
            machine.host = Host(self, machine)
            machine.its_hw = ITSHardware(machine)
            # The host drives the physical ITS, a DMA master: what it reaches is exposure.
            memory.add_host_dma(
                machine.its_hw.initiator.name, scenario.lowvisor.mediate_physical_its
            )
            self.machines[name] = machine
        if scenario.guest.its_driver == "replay":
            from sim.actors.replay import ReplayGuest

            self.guest: Guest = ReplayGuest(self, self.src)
        elif scenario.guest.kernel is not None:
            from sim.actors.linux_driver import LinuxGuest

            self.guest = LinuxGuest(self, self.src)
        else:
            self.guest = Guest(self, self.src)
        self.paused = False
        self.resumed = self.env.event()
        self.vcpus = simpy.Resource(self.env, capacity=1)  # held while the guest runs a step
        self.its_errors: list[str] = []
        self.trace: list[Span] = []  # who did what while the VM was paused (the timeline)
        self.memory_map = MemoryMap([], [])  # the guest's pages at the pause
        self.correctness = Correctness()
        self.kernel_events: list[dict] = []  # guest kernel replacements (kernel_swap.py)
        self.live_update_cost = None  # sim.liveupdate.LiveUpdateCost of a live-update run

    @property
    def src(self) -> Machine:
        return self.machines["src"]

    @property
    def dst(self) -> Machine:
        return self.machines["src" if self.live_update else "dst"]

    def rng(self, stream: str) -> random.Random:
        """A reproducible random stream named ``stream`` (string seeds hash with SHA-512)."""
        return random.Random(f"{self.scenario.seed}:{stream}")

    def charge(self, actor: str, us: float, part: str | None = None) -> simpy.Timeout:
        """Account ``us`` of CPU time to ``actor`` and take that long; ``part`` ("driver"
        or "proposal") also books it to whoever asked for the work."""
        self.ledger.cpu_us[actor] += us
        if part is not None:
            self.ledger.cpu_us_by_part[part] += us
        if self.paused and us > 0:  # the timeline shows the migration window only
            self.trace.append(Span(self.env.now, self.env.now + us, actor, "cpu"))
        return self.env.timeout(us)

    def span(self, lane: str, what: str, start: float) -> None:
        """Record that ``lane`` spent ``[start, now)`` on ``what`` (the event trace)."""
        self.trace.append(Span(start, self.env.now, lane, what))


@dataclass
class Machine:
    """One physical host: its memory, its EL2 lowvisor and its EL1 host."""

    name: str
    memory: MemorySystem
    exposure: ExposureTracker  # secrets the host's stage-2 reaches
    dma_exposure: ExposureTracker  # secrets a DMA master the host drives reaches
    lowvisor: Lowvisor = field(init=False)
    host: Host = field(init=False)
    its_hw: ITSHardware = field(init=False)
