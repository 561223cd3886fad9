"""Audit runs and the attack x proposal matrix.

Each cell runs the scenario with one host under one proposal and compares it with the
honest run of the same proposal. A row's host is one behaviour with its default
parameters (named by its kind), or any list of behaviours with their parameters, composed
(named by :func:`sim.scenario.describe_behaviours`, e.g. a scenario's own host).
What the attack adds is what it achieved: secret bytes exposed (to the host's stage-2 or
to a DMA master it drives) that the honest run never exposed, the same secrets exposed
for longer (byte x ms more than ``DURATION_TOLERANCE`` above the honest run's), secret
bytes read, guest bytes written, unverified shares, a share that outlived the guest's
MAPD V=0 for longer, or an ITS that no longer works (translations broken, commands
failing: availability). The tolerance keeps the timing shifts an attack causes (a
command run a little later) from counting as gains. If it added nothing, the cell says
what stopped it, from the refusals and faults the attack met.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

from sim.audit import Violation
from sim.memory.intervals import IntervalMap
from sim.migration import MemoryMap
from sim.proposals import PROPOSALS
from sim.report.words import plural
from sim.run import RunResult, collect, simulate
from sim.scenario import ATTACK_SPECS, Honest, Scenario, describe_behaviours

ATTACK_DEFAULTS = {cls.model_fields["kind"].annotation.__args__[0]: cls for cls in ATTACK_SPECS}
WINDOW_TOLERANCE_MS = 0.1  # a share outliving MAPD V=0 by less is processing time
# An attack run exposing secrets for at most this fraction more byte x ms than the honest
# run (same bytes) has gained nothing beyond timing noise; more is a longer exposure.
DURATION_TOLERANCE = 0.10


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuditSummary(_Model):
    window_ms: float  # exposure is measured over [0, window_ms): the workload's duration
    could_read_peak_bytes: int  # each guest byte once per instant, over both machines
    could_read_byte_ms: float
    dma_reachable_peak_bytes: int  # secret bytes a DMA master the host drives reaches
    dma_reachable_byte_ms: float
    did_read_bytes: int  # distinct secret bytes read
    corrupted_bytes: int  # distinct guest bytes written
    unverified_shares: int
    post_unmap_share_ms: float  # longest a page shared for an ITT outlived its MAPD V=0
    translations_preserved: bool
    command_errors: dict[str, int]  # ITS commands KVM failed, by error
    its_correct: bool  # translations kept, no SAVE/RESTORE error, no command failed
    stage2_faults: int
    blocked: list[str]


class AuditRun(_Model):
    scenario: str
    proposal: str
    behaviours: list[str]
    summary: AuditSummary
    violations: list[Violation]
    result: RunResult


class Cell(_Model):
    attack: str
    proposal: str
    outcome: Literal["unprotected", "succeeded", "availability", "blocked"]
    why: str
    bytes: int = 0  # read + corrupted + newly exposed secret bytes
    corrupted: int = 0  # guest bytes written that the honest run did not write
    byte_ms: float = 0.0  # stage-2 exposure the attack added (B x ms)
    dma_byte_ms: float = 0.0  # DMA reach the attack added (B x ms)
    duration_ms: float = 0.0


def _coverage(violations: list[Violation], how: str) -> dict[str, IntervalMap[bool]]:
    """The bytes the ``how`` violations cover, per machine."""
    out: dict[str, IntervalMap[bool]] = {}
    for v in violations:
        if v.how == how:
            out.setdefault(v.machine, IntervalMap(False)).assign(v.addr, v.addr + v.length, True)
    return out


def _count(coverage: dict[str, IntervalMap[bool]], minus=None) -> int:
    """Bytes covered, less those ``minus`` covers on the same machine."""
    total = 0
    for machine, covered in coverage.items():
        other = (minus or {}).get(machine)
        for start, end, _ in covered.intervals():
            if other is None:
                total += end - start
            else:
                total += sum(e - s for s, e, hit in other.runs(start, end) if not hit)
    return total


def _distinct_bytes(violations: list[Violation], how: str) -> int:
    return _count(_coverage(violations, how))


def post_unmap_share_ms(world) -> float:
    """How long a page shared for an ITT (not by the driver) stayed shared after the
    guest sent MAPD V=0 for its device: until EL2 or the guest unshared it, the VM left
    the machine, or the run ended."""
    from sim.memory.ownership import Transition

    closing = {
        Transition.GUEST_UNSHARE_HOST,
        Transition.HOST_RECLAIM_PAGE,
        Transition.HOST_RECLAIM_SHARED_PAGE,
    }
    longest = 0.0
    for t0, machine_name, pfns in world.guest.unmaps:
        machine = world.machines[machine_name]
        ownership = machine.memory.ownership
        for pfn in pfns:
            if pfn in world.guest.driver_shared:
                continue
            covering = [
                c for c in ownership.history if c.first_pfn <= pfn < c.first_pfn + c.nr_pages
            ]
            before = [c for c in covering if c.time <= t0]
            if not before or before[-1].transition is not Transition.GUEST_SHARE_HOST:
                continue  # not shared with the host when the guest unmapped the device
            after = [c for c in covering if c.time >= t0 and c.transition in closing]
            end = after[0].time if after else world.env.now
            longest = max(longest, (end - t0) / 1000)
    return round(longest, 6)


def audit_run(scenario: Scenario, proposal: str) -> AuditRun:
    return _audit(simulate(scenario, proposal), proposal)


def _audit(world, proposal: str) -> AuditRun:
    scenario = world.scenario
    violations = world.auditor.all()
    result = collect(world)
    blocked = [b for m in world.machines.values() for h in m.host.behaviours for b in h.blocked]
    blocked += [r for m in world.machines.values() for r in m.lowvisor.refusals]
    summary = AuditSummary(
        window_ms=scenario.workload.duration_ms,
        could_read_peak_bytes=result.exposure.peak_exposed_bytes,
        could_read_byte_ms=result.exposure.exposed_byte_ms,
        dma_reachable_peak_bytes=result.exposure.dma_reachable_peak_bytes,
        dma_reachable_byte_ms=result.exposure.dma_reachable_byte_ms,
        did_read_bytes=_distinct_bytes(violations, "did-read"),
        corrupted_bytes=_distinct_bytes(violations, "wrote"),
        unverified_shares=sum(1 for v in violations if v.kind == "trust"),
        post_unmap_share_ms=post_unmap_share_ms(world),
        translations_preserved=result.correctness.translations_preserved
        and not result.correctness.its_errors,
        command_errors=result.correctness.command_errors,
        its_correct=result.correctness.its_correct,
        stage2_faults=result.correctness.stage2_faults,
        blocked=list(dict.fromkeys(blocked)),
    )
    return AuditRun(
        scenario=scenario.name,
        proposal=proposal,
        behaviours=[describe_behaviours([b]) for b in scenario.host.behaviours],
        summary=summary,
        violations=violations,
        result=result,
    )


# A matrix row's host: one attack by name (default parameters), or behaviours composed.
AttackRow = str | list


def row_behaviours(attack: AttackRow) -> list:
    """The behaviour specs of a matrix row."""
    if isinstance(attack, str):
        return [ATTACK_DEFAULTS[attack](kind=attack)]
    return list(attack)


def with_behaviours(scenario: Scenario, behaviours: list) -> Scenario:
    host = scenario.host.model_copy(update={"behaviours": behaviours or [Honest()]})
    return scenario.model_copy(update={"host": host})


def with_attack(scenario: Scenario, attack: AttackRow | None) -> Scenario:
    """The scenario with an honest host (``None``), or with the row's host."""
    return with_behaviours(scenario, [Honest()] if attack is None else row_behaviours(attack))


def scenario_row(scenario: Scenario) -> list | None:
    """The scenario's own host as one composed row, unless it is honest or a single
    attack with its default parameters (a row the matrix has anyway)."""
    own = [b for b in scenario.host.behaviours if b.kind != "honest"]
    if not own or (len(own) == 1 and own[0] == row_behaviours(own[0].kind)[0]):
        return None
    return own


def cell(attack: str, base: AuditRun, run: AuditRun) -> Cell:
    if not PROPOSALS[run.proposal].protected:
        return Cell(
            attack=attack,
            proposal=run.proposal,
            outcome="unprotected",
            why="a non-protected VM: the host reads and writes all guest memory anyway",
        )
    b, a = base.summary, run.summary

    def spans(r: AuditRun, how: str) -> set[tuple]:
        """Secret runs exposed ``how`` at some time inside the window (both runs are
        compared over the same window; an attack that slows the run down is not
        credited with what happens after the honest run's window closed)."""
        return {
            (v.machine, v.addr, v.length, v.victim)
            for v in r.violations
            if v.how == how and v.time_ms < r.summary.window_ms
        }

    exposed = spans(run, "could-read") - spans(base, "could-read")
    dma_exposed = spans(run, "dma-reachable") - spans(base, "dma-reachable")
    read = _count(_coverage(run.violations, "did-read"), _coverage(base.violations, "did-read"))
    wrote = _count(_coverage(run.violations, "wrote"), _coverage(base.violations, "wrote"))
    trust = a.unverified_shares - b.unverified_shares
    window = a.post_unmap_share_ms - b.post_unmap_share_ms
    parts = []
    if read:
        parts.append(f"read {read} secret B")
    if wrote:
        parts.append(f"corrupted {wrote} B")
    if exposed:
        parts.append(f"exposed {sum(s[2] for s in exposed)} more secret B")
    if dma_exposed:
        parts.append(f"made {sum(s[2] for s in dma_exposed)} more secret B DMA-reachable")
    for what, before, after in (
        ("exposed", b.could_read_byte_ms, a.could_read_byte_ms),
        ("DMA-reachable", b.dma_reachable_byte_ms, a.dma_reachable_byte_ms),
    ):
        # (From nothing, the exposure is new bytes, reported above.)
        if before > 0 and after > before * (1 + DURATION_TOLERANCE):
            parts.append(f"secrets {what} longer: {after:,.1f} B x ms against {before:,.1f} honest")
    if trust > 0:
        parts.append(plural(trust, "unverified share"))
    if window > WINDOW_TOLERANCE_MS:
        parts.append(f"an ITT share outlived MAPD V=0 by {a.post_unmap_share_ms:,.1f} ms")
    if parts:
        honest = set(base.violations)
        new = [v for v in run.violations if v not in honest]
        start = min((v.time_ms for v in new), default=0.0)
        end = max((v.end_ms or v.time_ms for v in new), default=0.0)
        return Cell(
            attack=attack,
            proposal=run.proposal,
            outcome="succeeded",
            why=", ".join(parts),
            bytes=read + wrote + sum(s[2] for s in exposed) + sum(s[2] for s in dma_exposed),
            corrupted=wrote,
            byte_ms=round(max(a.could_read_byte_ms - b.could_read_byte_ms, 0.0), 6),
            dma_byte_ms=round(max(a.dma_reachable_byte_ms - b.dma_reachable_byte_ms, 0.0), 6),
            duration_ms=round(max(end - start, window, 0.0), 6),
        )
    if b.its_correct and not a.its_correct:
        broke = []
        if not a.translations_preserved:
            broke.append("translations broken on the destination")
        if a.command_errors:
            errors = ", ".join(f"{e} x{n}" for e, n in a.command_errors.items())
            broke.append(f"ITS commands failed ({errors})")
        return Cell(
            attack=attack,
            proposal=run.proposal,
            outcome="availability",
            why=f"{'; '.join(broke)} (the host can always deny service)",
        )
    faults = a.stage2_faults - b.stage2_faults
    why = a.blocked[0] if a.blocked else (f"{faults} stage-2 faults" if faults > 0 else "no effect")
    return Cell(attack=attack, proposal=run.proposal, outcome="blocked", why=why)


def attack_matrix(
    scenario: Scenario,
    proposals: list[str],
    attacks: list[AttackRow],
    advance: Callable[[], None] = lambda: None,
) -> tuple[list[Cell], list[AuditRun]]:
    """Honest run plus one run per attack row, for each proposal; ``advance`` after each.

    A row is an attack's name (its default parameters) or a list of behaviour specs run
    together; the cell's ``attack`` names it either way."""
    cells, runs = [], []
    for proposal in proposals:
        base = audit_run(with_attack(scenario, None), proposal)
        runs.append(base)
        advance()
        for attack in attacks:
            run = audit_run(with_attack(scenario, attack), proposal)
            runs.append(run)
            name = attack if isinstance(attack, str) else describe_behaviours(attack)
            cells.append(cell(name, base, run))
            advance()
    return cells, runs


# ---- the compare set as jobs (sim.parallel) --------------------------------------------------


class ChartWorld(NamedTuple):
    """What the timeline and memory-map charts read from a world: picklable, so a worker
    process can hand it back."""

    scenario: Scenario
    trace: list
    memory_map: MemoryMap


def honest_job(
    scenario: Scenario, proposal: str, chart: bool
) -> tuple[AuditRun, ChartWorld | None]:
    """The run with an honest host: the proposal's row in the tables and its attack
    matrix's baseline; with ``chart``, also what the charts draw."""
    world = simulate(with_attack(scenario, None), proposal)
    run = _audit(world, proposal)
    view = ChartWorld(world.scenario, world.trace, world.memory_map) if chart else None
    return run, view


def attack_job(scenario: Scenario, proposal: str, attack: AttackRow) -> AuditRun:
    """One attack row's run under one proposal."""
    return audit_run(with_attack(scenario, attack), proposal)


class CompareSet(NamedTuple):
    results: list[RunResult]  # honest runs, scenario by scenario, in each one's proposal order
    matrices: dict[str, list[Cell]]  # by scenario name, in attack_matrix's order
    worlds: dict[str, ChartWorld]  # the focus scenario's honest runs, by proposal


def compare_set(
    scenarios: list[Scenario],
    rows: dict[str, list[AttackRow]],
    focus: str,
    workers: int | None = None,
    advance: Callable[[], None] = lambda: None,
    seeds: int = 1,
    attacked: set[str] | None = None,
) -> CompareSet:
    """Every scenario under every proposal with an honest host over ``seeds`` seeds, and
    each protected proposal's attack matrix (at the scenario's own seed; only the
    scenarios in ``attacked``, default all), as jobs on ``workers`` processes
    (sim.parallel); the same cells and results as ``run_all`` and :func:`attack_matrix`
    give, in the same order (sim.cells.cells: proposals in order, seeds ascending)."""
    from sim.cells import run_cell, seeds_of
    from sim.parallel import Job, run_jobs

    def matrix(s: Scenario) -> bool:
        return attacked is None or s.name in attacked

    jobs: list[Job] = []
    for s in scenarios:
        cost = s.workload.duration_ms  # a longer workload simulates more events
        for p in s.proposals:
            jobs.append(Job(honest_job, (s, p, s.name == focus), cost))
            jobs += [Job(run_cell, (s, p, seed), cost) for seed in seeds_of(s, seeds)[1:]]
        for p in s.proposals:
            if PROPOSALS[p].protected and matrix(s):
                jobs += [Job(attack_job, (s, p, a), cost) for a in rows[s.name]]
    done = iter(run_jobs(jobs, workers, advance))
    results, matrices, worlds = [], {}, {}
    for s in scenarios:
        bases = {}
        for p in s.proposals:
            base, view = next(done)
            bases[p] = base
            results.append(base.result)
            results += [next(done) for _ in seeds_of(s, seeds)[1:]]
            if view is not None:
                worlds[p] = view
        if not matrix(s):
            continue
        cells = matrices[s.name] = []
        for p in s.proposals:
            if PROPOSALS[p].protected:
                for attack in rows[s.name]:
                    name = attack if isinstance(attack, str) else describe_behaviours(attack)
                    cells.append(cell(name, bases[p], next(done)))
    return CompareSet(results, matrices, worlds)


def run_cells_on(workers: int | None):
    """A sim.sensitivity runner: the cells as jobs on ``workers`` processes, in order."""
    from sim.cells import run_cell
    from sim.parallel import Job, run_jobs

    def runner(todo: list, tick: Callable[[], None]) -> list[RunResult]:
        jobs = [Job(run_cell, tuple(c), c.scenario.workload.duration_ms) for c in todo]
        return run_jobs(jobs, workers, tick)

    return runner
