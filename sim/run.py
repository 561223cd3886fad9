"""One run: build the world for (scenario, proposal), simulate it, and read off the result.

Everything in :class:`RunResult` is computed from what the actors did: the ledger they
filled, the ownership history and access log of both machines, the exposure trackers,
and the translations checked across migration.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel, ConfigDict

from sim import attacks
from sim.actors.lowvisor import DRIVER, PROPOSAL, part_of
from sim.audit import Auditor
from sim.exposure import union_totals
from sim.memory.labels import LabelKind
from sim.memory.ownership import Transition
from sim.migration import migrate
from sim.proposals import make_proposal
from sim.scenario import Scenario, describe_behaviours
from sim.world import RAM_BASE, World

MAX_FAILURES = 20  # failed commands listed in a result (all are counted)


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExposureResult(_Result):
    """Each guest byte counts once per instant, on however many machines it is exposed."""

    secret_bytes: int  # secret bytes the guest holds
    peak_exposed_bytes: int  # most secret bytes the host's stage-2 could read at once
    exposed_byte_ms: float  # integral of that over time
    exposed_secrets: int  # distinct secrets the host could read at some time
    dma_reachable_peak_bytes: int  # most secret bytes a host-driven DMA master reached
    dma_reachable_byte_ms: float  # integral of that over time


class CostResult(_Result):
    downtime_ms: float
    its_downtime_ms: float
    its_downtime_share: float
    cpu_us: dict[str, float]
    hypercalls: int
    hypercalls_by_call: dict[str, int]
    pages_shared: int  # every guest page shared with the host, on either machine
    pages_shared_by_proposal: int  # ... beyond what the guest's ITS driver shares itself
    pages_unshared: int
    tlb_invalidations: int  # stage-2, after a valid-to-invalid change
    iotlb_invalidations: int  # the ITS's IOMMU domain (every one of them the proposal's)
    # What the proposal adds, separated from the guest driver's own sharing
    # (sim.actors.lowvisor.part_of): hypercalls, stage-2 invalidations, and EL2 time of
    # those hypercalls, page-state changes and any queue parsing, over the whole run.
    hypercalls_by_proposal: int
    tlb_invalidations_by_proposal: int
    proposal_el2_us: float
    driver_el2_us: float
    bytes_copied: int
    stream_bytes: int
    itt_bytes: int  # what the ITTs need
    itt_memory_bytes: int  # what the guest allocator holds for them
    guest_memory_overhead_bytes: int
    el2_loc: float


class CorrectnessResult(_Result):
    expected_translations: int
    ok_before_migration: int
    ok_after_migration: int
    translations_preserved: bool
    mismatches: list[str]
    resume_msis: int
    resume_msis_delivered: int
    msis_delivered: int
    msis_failed: int
    its_errors: list[str]  # SAVE / RESTORE errors
    command_errors: dict[str, int]  # ITS commands KVM failed, by error, both machines
    command_failures: list[str]  # the first of them, with what failed and why
    kvm_faults: int  # stage-2 / IOMMU faults on KVM's own guest-memory accesses
    stage2_faults: int  # every denied access, an attacker's included
    # The ITS did its job: every translation kept, no SAVE/RESTORE error, and no command
    # failed (a failed command is skipped silently by KVM, the guest never learns).
    its_correct: bool


class RunResult(_Result):
    scenario: str
    proposal: str
    host: str  # the host's behaviours, as sim.scenario.describe_behaviours names them
    seed: int
    cost_overrides: dict[str, float]
    exposure: ExposureResult
    costs: CostResult
    correctness: CorrectnessResult


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector.

    A run allocates millions of long-lived objects (ITEs, LPIs, SimPy events) and little
    cyclic garbage; the collector would rescan the survivors again and again, a fifth of
    a large run's wall time. Reference counting still frees everything acyclic.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def simulate(scenario: Scenario, proposal_name: str, wrap=None) -> World:
    """Build, connect and run the world; return it for inspection.

    ``wrap(name, process)``, if given, returns the generator to run in place of each
    top-level process ("guest", "msi", "migration"), e.g. one that times it (bench)."""
    world = World(scenario, make_proposal(proposal_name))
    env = world.env
    for machine in world.machines.values():
        machine.host.create_vm()
    attacks.install(world, scenario)
    world.auditor = Auditor(world)
    attacks.start(world)
    wrap = wrap or (lambda _name, process: process)
    env.process(wrap("guest", world.guest.run()))
    for machine in world.machines.values():
        env.process(wrap("msi", machine.host.msi_workload()))
    env.process(wrap("migration", migrate(world, world.correctness)))
    with gc_paused():
        env.run()
    for machine in world.machines.values():
        machine.exposure.finish()
        machine.dma_exposure.finish()
    return world


def run(scenario: Scenario, proposal_name: str) -> RunResult:
    """Simulate, then collect, with the collector paused throughout: resumed between the
    two, its first pass would scan the whole live world only to keep it (a 1M-ITE run's
    world: a quarter of a second)."""
    with gc_paused():
        return collect(simulate(scenario, proposal_name))


def _secret_bytes(world: World) -> int:
    labels = world.guest.machine.memory.labels
    return sum(
        end - start
        for start, end, label in labels.runs(RAM_BASE, world.ram_size)
        if label.kind is LabelKind.SECRET
    )


def collect(world: World) -> RunResult:
    ledger = world.ledger
    machines = list(world.machines.values())
    history = [ch for m in machines for ch in m.memory.ownership.history]
    shared = sum(ch.nr_pages for ch in history if ch.transition is Transition.GUEST_SHARE_HOST)
    by_proposal = sum(
        ch.nr_pages
        for ch in history
        if ch.transition is Transition.GUEST_SHARE_HOST
        and not ch.cause.startswith(("driver:", "migration:"))
    )
    unshared = sum(ch.nr_pages for ch in history if ch.transition is Transition.GUEST_UNSHARE_HOST)
    tlbi_causes = [
        ch.cause
        for ch in history
        if ch.transition.spec.tlbi and ch.cause not in ("VM creation", "teardown")
    ]
    tlbis = len(tlbi_causes)
    tlbis_by_proposal = sum(1 for cause in tlbi_causes if part_of(cause) == PROPOSAL)
    window = world.scenario.workload.duration_ms * 1000.0
    peak, byte_us = union_totals((i for m in machines for i in m.exposure.intervals), window)
    dma_peak, dma_byte_us = union_totals(
        (i for m in machines for i in m.dma_exposure.intervals), window
    )
    exposure = ExposureResult(
        secret_bytes=_secret_bytes(world),
        peak_exposed_bytes=peak,
        exposed_byte_ms=round(byte_us / 1000.0, 3),
        exposed_secrets=len(set().union(*(m.exposure.exposed_secrets for m in machines))),
        dma_reachable_peak_bytes=dma_peak,
        dma_reachable_byte_ms=round(dma_byte_us / 1000.0, 3),
    )
    guest = world.guest
    held, needed = guest.itt_memory()
    downtime = ledger.downtime_us
    costs = CostResult(
        downtime_ms=round(downtime / 1000.0, 6),
        its_downtime_ms=round(ledger.its_downtime_us / 1000.0, 6),
        its_downtime_share=round(ledger.its_downtime_us / downtime, 6) if downtime else 0.0,
        cpu_us={k: round(v, 3) for k, v in sorted(ledger.cpu_us.items())},
        hypercalls=sum(ledger.hypercalls.values()),
        hypercalls_by_call=dict(sorted(ledger.hypercalls.items())),
        pages_shared=shared,
        pages_shared_by_proposal=by_proposal,
        pages_unshared=unshared,
        tlb_invalidations=tlbis,
        iotlb_invalidations=ledger.iotlb_invalidations,
        hypercalls_by_proposal=ledger.hypercalls_by_part[PROPOSAL],
        tlb_invalidations_by_proposal=tlbis_by_proposal,
        proposal_el2_us=round(ledger.cpu_us_by_part[PROPOSAL], 3),
        driver_el2_us=round(ledger.cpu_us_by_part[DRIVER], 3),
        bytes_copied=ledger.bytes_copied,
        stream_bytes=ledger.stream_bytes,
        itt_bytes=needed,
        itt_memory_bytes=held,
        guest_memory_overhead_bytes=held - needed,
        el2_loc=world.proposal.el2_lines(world.costs),
    )
    correctness = world.correctness
    command_errors: Counter[str] = Counter()
    failures: list[str] = []
    for m in machines:
        log = m.host.its.command_log
        for error, n in log.error_counts().items():
            command_errors[str(error)] += n
        for rec in log.failed(MAX_FAILURES - len(failures)):
            what = (
                type(rec.command).__name__
                if rec.command
                else ("unreadable slot" if rec.raw is None else "undecodable command")
            )
            failures.append(
                f"{m.name} t={rec.time / 1000:.3f} ms queue slot {rec.offset:#x} {what}:"
                f" {rec.error}" + (f" ({rec.detail})" if rec.detail else "")
            )
    kvm_faults = sum(
        1 for m in machines for f in m.memory.faults if f.record.actor == m.host.its.kvm.who.name
    )
    preserved = correctness.ok_after == correctness.expected
    result = CorrectnessResult(
        expected_translations=correctness.expected,
        ok_before_migration=correctness.ok_before,
        ok_after_migration=correctness.ok_after,
        translations_preserved=preserved,
        mismatches=correctness.mismatches,
        resume_msis=correctness.resume_msis,
        resume_msis_delivered=correctness.resume_msis_delivered,
        msis_delivered=ledger.msis_delivered,
        msis_failed=ledger.msis_failed,
        its_errors=world.its_errors,
        command_errors=dict(sorted(command_errors.items())),
        command_failures=failures,
        kvm_faults=kvm_faults,
        stage2_faults=sum(len(m.memory.faults) for m in machines),
        its_correct=preserved and not world.its_errors and not command_errors,
    )
    scenario = world.scenario
    return RunResult(
        scenario=scenario.name,
        proposal=world.proposal.name,
        host=describe_behaviours(scenario.host.behaviours),
        seed=scenario.seed,
        cost_overrides=scenario.costs.model_dump(exclude_defaults=True),
        exposure=exposure,
        costs=costs,
        correctness=result,
    )


__all__ = ["RunResult", "collect", "run", "simulate"]
