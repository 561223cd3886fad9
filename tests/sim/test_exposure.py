"""What the host can reach, counted the way a reviewer would count it (issue 12, gaps 1,
2, 3, 6 and 9): DMA reach is exposure, teardown does not end it, a longer exposure is an
attack's success, a guest byte counts once per instant, and the migration stream is read
by whoever can read it.

Every expected figure is recomputed here from the world's ground truth (labels, page
states, IOMMU domains, the access log), never taken from the tracker or the auditor.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from sim.matrix import attack_matrix, audit_run, cell, with_attack
from sim.memory.access import Initiator
from sim.memory.labels import LabelKind
from sim.memory.ownership import HOST, PageState
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE
from sim.run import collect, simulate
from sim.scenario import Scenario, load_scenario
from sim.world import GUEST
from tests.sim.test_audit import KZ, POOL, audited, check_all, merge, scenario, size

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def secret_spans(machine, keep) -> list[tuple[int, int]]:
    """Secret bytes on the pages ``keep(pfn)`` accepts, merged."""
    out = []
    for start, end, label in machine.memory.labels.labelled():
        if label.kind is not LabelKind.SECRET:
            continue
        for pfn in range(start >> PAGE_SHIFT, ((end - 1) >> PAGE_SHIFT) + 1):
            if keep(pfn):
                out.append((max(start, pfn << PAGE_SHIFT), min(end, (pfn + 1) << PAGE_SHIFT)))
    return merge(out)


def sample_every(world, period_us: float, probe) -> None:
    """Call ``probe(now)`` every ``period_us`` (off the event grid) until the window ends."""
    env = world.env
    end = world.scenario.workload.duration_ms * 1000.0

    def run():
        yield env.timeout(0.0137)
        while env.now < end:
            probe(env.now)
            yield env.timeout(period_us)

    env.process(run())


# ---- gap 1: DMA reach is exposure --------------------------------------------------------


def its_domain_pages(machine) -> set[int]:
    domain = machine.memory.iommu.get(machine.its_hw.initiator.name)
    return set(domain.mapped_pfns()) if domain is not None else set()


def test_secrets_the_its_iommu_domain_grants_are_dma_reachable_exposure(monkeypatch):
    """iommu-gated-its with kzalloc'd ITTs: the guest maps whole slab pages for the ITS,
    secrets next to the ITTs included. The host drives that ITS, so those secret bytes
    are DMA-reachable, in peak and byte x ms, though its stage-2 reaches none of them."""
    scen = load_scenario(SCENARIOS / "kzalloc-dense-secrets.yaml")
    peaks: list[int] = []
    seen = {}

    def probe(now):
        union = []
        for m in seen["world"].machines.values():
            pages = its_domain_pages(m)
            union += secret_spans(m, pages.__contains__)
        peaks.append(size(merge(union)))

    real = simulate.__globals__["Auditor"]

    def hooked(world):
        seen["world"] = world
        sample_every(world, 100.0, probe)
        return real(world)

    monkeypatch.setitem(simulate.__globals__, "Auditor", hooked)
    run = audit_run(scen, "iommu-gated-its")
    e = run.result.exposure
    assert e.peak_exposed_bytes == 0  # the host's stage-2 reaches no secret
    # Recomputed from the domains: the 15,360 B before kmalloc slabs took SLUB's
    # order (kmalloc-512 in 8 KiB slabs of 16; tests/sim/test_valid_scenarios.py).
    assert max(peaks) == 16_896
    assert e.dma_reachable_peak_bytes == max(peaks)
    assert e.dma_reachable_byte_ms > 0
    assert run.summary.dma_reachable_peak_bytes == max(peaks)
    dma = [v for v in run.violations if v.how == "dma-reachable"]
    assert dma and all(v.kind == "confidentiality" and v.victim.startswith("secret:") for v in dma)
    assert all("IOMMU" in v.chain[0] for v in dma)


def test_an_its_with_no_iommu_reaches_every_secret_and_el2_mediation_none():
    """No IOMMU in front of the physical ITS: every guest secret is DMA-reachable while
    the guest is on the machine; with EL2 mediating the host's physical ITS commands, the
    ITS reaches only host memory, so no secret of the guest's (protected) pages."""
    plain = audit_run(scenario(POOL), "userspace-serialization")
    e = plain.result.exposure
    assert e.peak_exposed_bytes == 0
    assert e.dma_reachable_peak_bytes == e.secret_bytes > 0
    mediated = Scenario.model_validate(
        {**scenario(POOL).model_dump(), "lowvisor": {"mediate_physical_its": True}}
    )
    run = audit_run(mediated, "userspace-serialization")
    assert run.result.exposure.dma_reachable_peak_bytes == 0
    assert not [v for v in run.violations if v.how == "dma-reachable"]


def test_bundled_its_dma_aims_at_a_secret_the_domain_reaches():
    """Under iommu-gated-its with kzalloc'd ITTs, its-dma aims where an attacker would:
    at a secret on a page the ITS's domain maps. The write lands; the audit reports it."""
    run, truth = audited(scenario(KZ, [{"kind": "its-dma"}]), "iommu-gated-its")
    wrote = [v for v in run.violations if v.how == "wrote"]
    assert wrote and all(v.actor == "src.its-hw" for v in wrote)
    assert all(v.victim.startswith("secret:") for v in wrote)
    check_all(run, truth)


# ---- gap 2: teardown does not end exposure -----------------------------------------------


def test_pages_the_guest_had_shared_stay_host_readable_after_teardown(monkeypatch):
    """pKVM poisons only guest-owned pages at teardown (mem_protect.c:
    __pkvm_host_reclaim_page_guest); a shared page goes back to the host as it is. A host
    read of those pages 1 ms after teardown gets the guest's secrets, and the exposure
    interval runs on to the end."""
    scen = scenario(KZ)
    kept: dict[str, list] = {}
    seen = {}

    def hooked(world):
        seen["world"] = world
        src = world.src
        teardown = src.lowvisor.teardown_vm

        def snapshot_then_teardown():
            state = src.memory.ownership.state
            kept["spans"] = secret_spans(src, lambda p: state(GUEST, p) is PageState.SHARED_OWNED)
            kept["at"] = world.env.now
            teardown()

            def read_back():
                yield world.env.timeout(1000.0)
                who = Initiator("src.host.attack", HOST)
                for start, end in kept["spans"]:
                    src.memory.read(who, start, end - start)

            world.env.process(read_back())

        monkeypatch.setattr(src.lowvisor, "teardown_vm", snapshot_then_teardown)
        return real(world)

    real = simulate.__globals__["Auditor"]
    monkeypatch.setitem(simulate.__globals__, "Auditor", hooked)
    run = audit_run(scen, "share-enlightened-guest")
    assert size(kept["spans"]) > 0
    did = merge((v.addr, v.addr + v.length) for v in run.violations if v.how == "did-read")
    assert did == kept["spans"]
    assert run.summary.did_read_bytes == size(kept["spans"])
    # The exposure outlives teardown, to the end of the run.
    world = seen["world"]
    after = merge(
        (v.addr, v.addr + v.length)
        for v in run.violations
        if v.how == "could-read" and v.machine == "src" and v.end_ms * 1000 >= world.env.now
    )
    assert after == kept["spans"]


def test_teardown_still_poisons_and_forgets_private_pages():
    world = simulate(scenario(KZ), "share-enlightened-guest")
    src = world.src
    for start, _end, label in src.memory.labels.labelled():
        pfn = start >> PAGE_SHIFT
        assert src.memory.ownership.state(HOST, pfn) is PageState.OWNED
        # Only what the guest had shared keeps its labels: its last change was the
        # unpoisoned reclaim of a shared page.
        change = src.memory.ownership.last_change(pfn)
        assert change.cause == "teardown" and not change.transition.spec.poison, label


# ---- gap 3: the matrix judges duration too -------------------------------------------------


def test_a_host_that_keeps_its_claims_longer_succeeds_by_duration():
    """share-host-claims on big-itts: keep-stale-share exposes the same bytes as the
    honest run, for far longer. That is the attack's success."""
    scen = load_scenario(SCENARIOS / "big-itts.yaml")
    cells, runs = attack_matrix(scen, ["share-host-claims"], ["keep-stale-share"])
    base, attacked = runs
    # 169-fold when the two machines were summed; 85-fold with each byte counted once.
    assert attacked.summary.could_read_byte_ms > 50 * base.summary.could_read_byte_ms > 0
    (c,) = cells
    assert c.outcome == "succeeded", c
    assert "B x ms" in c.why
    assert c.byte_ms == pytest.approx(
        attacked.summary.could_read_byte_ms - base.summary.could_read_byte_ms, abs=1e-3
    )


def test_a_shorter_or_equal_exposure_is_no_success():
    base = audit_run(scenario(KZ), "share-enlightened-guest")
    assert base.summary.could_read_byte_ms > 0
    same = cell("honest", base, base)
    assert same.outcome == "blocked"


# ---- gap 6: each guest byte once per instant -----------------------------------------------


def union_byte_us(intervals, window_us: float) -> float:
    """Integral over time of the number of distinct guest bytes covered: sweep the
    elementary address segments, and union each one's time intervals."""
    cuts = sorted({x for _m, a, n, _s, _e in intervals for x in (a, a + n)})
    total = 0.0
    for lo, hi in itertools.pairwise(cuts):
        times = merge(
            (s, min(e, window_us))
            for _m, a, n, s, e in intervals
            if a <= lo and hi <= a + n and s < window_us
        )
        total += (hi - lo) * sum(e - s for s, e in times)
    return total


def test_a_secret_exposed_on_both_machines_at_once_counts_once():
    world = simulate(scenario(KZ), "share-enlightened-guest")
    result = collect(world)
    window = world.scenario.workload.duration_ms * 1000.0
    intervals = [
        (name, i.addr, i.length, i.start, i.end)
        for name, m in world.machines.items()
        for i in m.exposure.intervals
    ]
    # The overlap exists: the same bytes on source and destination at the same time.
    src = [i for i in intervals if i[0] == "src"]
    dst = [i for i in intervals if i[0] == "dst"]
    assert any(
        a[1] < b[1] + b[2] and b[1] < a[1] + a[2] and a[3] < b[4] and b[3] < a[4]
        for a in src
        for b in dst
    )
    per_machine = sum(i[2] * (min(i[4], window) - i[3]) for i in intervals if i[3] < window)
    union = union_byte_us(intervals, window)
    assert union < per_machine
    assert result.exposure.exposed_byte_ms == pytest.approx(union / 1000, abs=1e-3)


# ---- gap 9: the migration stream ------------------------------------------------------------


def dirtied_by_save(world) -> set[int]:
    src = world.src
    kvm = src.host.its.kvm.who.name
    start = world.scenario.migration.at_ms * 1000.0
    return src.memory.log.pages_written(start, {kvm})


def test_the_vmm_reads_the_shared_pages_it_streams_and_gets_their_secrets():
    """The save dirtied shared ITT pages; the VMM reads them to send them in the clear,
    co-located secrets and all: a host read like any other."""
    run, truth = audited(scenario(KZ), "share-enlightened-guest")
    world = truth.world
    vmm = [
        r
        for r in world.src.memory.log
        if r.actor == "src.host.vmm" and not r.write and r.length == PAGE_SIZE
    ]
    dirtied = dirtied_by_save(world)
    assert dirtied and {r.addr >> PAGE_SHIFT for r in vmm} == dirtied
    read = [v for v in run.violations if v.how == "did-read" and v.actor == "src.host.vmm"]
    assert read
    check_all(run, truth)


def test_el2_exports_private_pages_encrypted_and_the_host_reads_none():
    """iommu-gated-its: the save writes ITEs by DMA into guest-private pages. The VMM
    cannot read them; EL2 exports them encrypted (the model's choice, stated in the
    README), charging its time, and no host access to them is logged."""
    run, truth = audited(scenario(KZ), "iommu-gated-its")
    world = truth.world
    src = world.src
    dirtied = dirtied_by_save(world)
    at_pause = {p.pfn: p.host_can_reach for p in world.memory_map}
    private = {p for p in dirtied if not at_pause[p]}
    assert private  # nothing of the ITTs is shared
    assert not [r for r in src.memory.log if r.actor == "src.host.vmm" and r.allowed]
    exported = {
        r.addr >> PAGE_SHIFT
        for r in src.memory.log
        if r.actor == "src.lowvisor"
        and not r.write
        and r.length == PAGE_SIZE
        and r.time >= world.scenario.migration.at_ms * 1000.0
    }
    assert private <= exported
    assert world.ledger.cpu_us["src.lowvisor"] > 0
    assert run.summary.did_read_bytes == 0
    check_all(run, truth)


def test_stream_bytes_still_count_every_dirtied_page():
    scen = scenario(KZ)
    base = with_attack(scen, None)
    result = collect(world := simulate(base, "share-enlightened-guest"))
    assert result.costs.stream_bytes == len(dirtied_by_save(world)) * PAGE_SIZE
