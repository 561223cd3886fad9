"""Soundness of the audit: seeded violations are found with the right bytes, and honest
runs of proposals whose design allows no violation report none.

The expected bytes never come from the auditor. A recorder hooked into the same world
(`Truth`) keeps its own copy of what happened, straight from the model's ground truth:
every allowed host or DMA access with the labels and page states it met at that instant
(labels of poisoned pages are cleared at teardown, so they have to be caught live), and a
sampler that, every quarter millisecond, lists the secret bytes lying on host-readable
pages and those a DMA master the host drives reaches (from the IOMMU domains, the
registered masters and the page states, recomputed here). The audit's report is then
compared with that record byte for byte.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sim.run
from sim.audit import Violation
from sim.its.tables import ITE
from sim.matrix import DURATION_TOLERANCE, AuditRun, audit_run, cell
from sim.memory.access import Initiator, Stage2Fault
from sim.memory.labels import Label, LabelKind
from sim.memory.ownership import HOST, PageState, Transition
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE
from sim.run import simulate
from sim.scenario import Scenario
from sim.world import GUEST, RAM_BASE
from tests.sim.test_valid_scenarios import possible_churn

ITS_STRUCTURES = {
    LabelKind.DEVICE_TABLE,
    LabelKind.DEVICE_TABLE_L2,
    LabelKind.COLLECTION_TABLE,
    LabelKind.CMDQ,
    LabelKind.ITT,
    LabelKind.PROP_TABLE,
    LabelKind.PEND_TABLE,
}
GUEST_DATA = {LabelKind.SECRET, LabelKind.KERNEL}
SAMPLE_US = 250.0
SAMPLE_PHASE_US = 0.0137  # off the grid of event times, so no sample ties with an event
AFTER_TEARDOWN = 8  # samples taken after the source's teardown

Spans = list[tuple[int, int]]  # sorted, merged [start, end) byte ranges


# ---- building scenarios --------------------------------------------------------------


def scenario(
    allocator: str = "linux-kzalloc",
    behaviours: list[dict] | None = None,
    churn: bool = False,
    seed: int = 5,
    devices: list[dict] | None = None,
    duration_ms: float = 30.0,
    migrate_ms: float = 10.0,
    secret_density: float = 1.0,
    moves_per_s: float = 50.0,
    vcpus: int = 2,
) -> Scenario:
    """A small protected VM: 2-3 devices, 30 ms, migrated at 10 ms, every neighbour a
    secret (``secret_density=1``) unless told otherwise."""
    devices = devices or [
        {"name": "net", "device_id": 0x08, "vectors": 3, "rate_hz": 1000},
        {"name": "blk", "device_id": 0x09, "vectors": 2, "rate_hz": 500},
        {"name": "nvme", "device_id": 0x10, "vectors": 5, "rate_hz": 500},
    ]
    events = []
    if churn:
        events = [
            {"at_ms": 3, "device": devices[-1]["name"], "action": "remove"},
            {"at_ms": 20, "device": devices[-1]["name"], "action": "add"},
        ]
    return Scenario.model_validate(
        {
            "name": "mutation",
            "question": "is every seeded violation found?",
            "seed": seed,
            "guest": {
                "ram_mib": 256,
                "vcpus": vcpus,
                "allocator": allocator,
                "secret_density": secret_density,
            },
            "devices": devices,
            "workload": {
                "duration_ms": duration_ms,
                "affinity_moves_per_s": moves_per_s,
                "churn": events,
            },
            "migration": {"at_ms": migrate_ms},
            "host": {"behaviours": behaviours or [{"kind": "honest"}]},
        }
    )


# ---- byte ranges -----------------------------------------------------------------------


def merge(spans) -> Spans:
    out: Spans = []
    for start, end in sorted(spans):
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def size(spans: Spans) -> int:
    return sum(end - start for start, end in spans)


def by_machine(items) -> dict[str, Spans]:
    """{machine: merged spans} from (machine, start, end) triples."""
    out: dict[str, list] = {}
    for machine, start, end in items:
        out.setdefault(machine, []).append((start, end))
    return {m: merge(s) for m, s in out.items() if merge(s)}


def violation_spans(violations: list[Violation], how: str) -> dict[str, Spans]:
    return by_machine((v.machine, v.addr, v.addr + v.length) for v in violations if v.how == how)


# ---- the independent record -------------------------------------------------------------


@dataclass
class Hit:
    machine: str
    time_us: float
    actor: str
    start: int
    end: int
    label: Label


@dataclass
class Truth:
    """What the world's ground truth says happened, recorded beside the auditor."""

    world: object = None
    reads: list[Hit] = field(default_factory=list)  # secret bytes a host/DMA read got
    writes: list[Hit] = field(default_factory=list)  # guest bytes a host/DMA write hit
    samples: list[tuple[float, str, Spans]] = field(default_factory=list)
    dma_samples: list[tuple[float, str, Spans]] = field(default_factory=list)
    extra: list[Callable] = field(default_factory=list)  # seeding processes to start
    # (machine, addr, time_ms) of each share on the host's word -> labels on the page then
    claimed: dict[tuple, str] = field(default_factory=dict)
    # (machine, slot) -> the bytes the guest last wrote into that command-queue slot
    guest_wrote: dict[tuple, bytes] = field(default_factory=dict)
    # (machine, slot) -> whether EL2's latest read of that slot got other bytes
    el2_read_forged: dict[tuple, bool] = field(default_factory=dict)
    # (machine, addr, length, time_ms) of shares EL2 made parsing a slot whose bytes, when
    # it read them, were not the guest's
    forged_shares: list[tuple] = field(default_factory=list)
    # (machine, pfn) shared on a host claim or a forged slot, and not unshared since
    host_word: set[tuple] = field(default_factory=set)
    # (machine, addr, length, time_ms) of shares the destination made of such pages
    migrated_shares: list[tuple] = field(default_factory=list)

    def install(self, world) -> None:
        self.world = world
        for machine in world.machines.values():
            machine.memory.watch(lambda who, rec, m=machine: self._on_access(m, who, rec))
            machine.memory.ownership.watchers.append(
                lambda first, nr, done, m=machine: self._on_pages(m, done)
            )
            machine.memory.write = self._recording_writes(machine, machine.memory.write)
        world.env.process(self._sample())
        for seed in self.extra:
            world.env.process(seed(world))

    def _queue_slots(self, machine, addr: int, length: int) -> list[int]:
        return [
            a
            for s, e, lab in machine.memory.labels.runs(addr, length)
            if lab.kind is LabelKind.CMDQ
            for a in range(s & ~31, e, 32)
        ]

    def _recording_writes(self, machine, write):
        """Keep a copy of what the guest writes into queue slots (and what EL2 copies in
        on import: the source's record comes with the source's bytes)."""

        def recorded(who: Initiator, addr: int, data: bytes) -> None:
            write(who, addr, data)
            for slot in self._queue_slots(machine, addr, len(data)):
                key = (machine.name, slot)
                if who.component == GUEST and who.name.endswith(".lowvisor"):
                    source = self.world.src.name
                    if (source, slot) in self.guest_wrote and machine.name != source:
                        self.guest_wrote[key] = self.guest_wrote[source, slot]
                elif who.component == GUEST:
                    self.guest_wrote[key] = data[slot - addr : slot - addr + 32]

        return recorded

    def _on_pages(self, machine, done: bool) -> None:
        if not done:
            return
        change = machine.memory.ownership.history[-1]
        addr, length = change.first_pfn << PAGE_SHIFT, change.nr_pages << PAGE_SHIFT
        pages = {
            (machine.name, p) for p in range(change.first_pfn, change.first_pfn + change.nr_pages)
        }
        if change.transition in (
            Transition.GUEST_UNSHARE_HOST,
            Transition.HOST_RECLAIM_SHARED_PAGE,
        ):
            self.host_word -= pages
        if change.transition is not Transition.GUEST_SHARE_HOST:
            return
        when = change.time / 1000
        slot = re.search(r"queue slot (0x[0-9a-f]+)", change.cause)
        if change.cause.startswith("migration"):
            source = {(self.world.src.name, p) for _, p in pages}
            if not source & self.host_word:
                return
            self.migrated_shares.append((machine.name, addr, length, when))
        elif slot and self.el2_read_forged.get((machine.name, int(slot[1], 16))):
            self.forged_shares.append((machine.name, addr, length, when))
        elif not change.cause.startswith("host claim"):
            return
        labels = sorted({str(lab) for _, _, lab in machine.memory.labels.runs(addr, length)})
        self.claimed[machine.name, addr, when] = ", ".join(labels)
        self.host_word |= pages

    def _on_access(self, machine, who: Initiator, rec) -> None:
        if rec.allowed and not rec.write and who.name == f"{machine.name}.lowvisor":
            for slot in self._queue_slots(machine, rec.addr, rec.length):
                got = machine.memory._pages.read(slot, 32)
                wanted = self.guest_wrote.get((machine.name, slot))
                self.el2_read_forged[machine.name, slot] = got != wanted
        if not rec.allowed or not (who.component == HOST or who.dma):
            return
        lo = max(rec.addr, RAM_BASE)
        hi = min(rec.addr + rec.length, RAM_BASE + self.world.ram_size)
        memory = machine.memory
        for start, end, label in memory.labels.runs(lo, max(0, hi - lo)):
            for pfn in range(start >> PAGE_SHIFT, ((end - 1) >> PAGE_SHIFT) + 1):
                s = max(start, pfn << PAGE_SHIFT)
                e = min(end, (pfn + 1) << PAGE_SHIFT)
                hit = Hit(machine.name, rec.time, rec.actor, s, e, label)
                if not rec.write:
                    if label.kind is LabelKind.SECRET:
                        self.reads.append(hit)
                    continue
                guest_state = memory.ownership.state(GUEST, pfn)
                if guest_state is PageState.NOPAGE:
                    continue  # torn down: the page is no longer the guest's
                private = guest_state is PageState.OWNED
                consented = (
                    who.dma
                    and label.kind in ITS_STRUCTURES
                    and who.name in memory.iommu
                    and memory.iommu[who.name].allows(pfn, write=True)
                )
                if label.kind in GUEST_DATA or (private and not consented):
                    self.writes.append(hit)

    def exposed_now(self, machine) -> Spans:
        """Secret bytes on pages the host's stage-2 reaches, right now."""
        ownership = machine.memory.ownership
        out = []
        for start, end, label in machine.memory.labels.labelled():
            if label.kind is not LabelKind.SECRET:
                continue
            for pfn in range(start >> PAGE_SHIFT, ((end - 1) >> PAGE_SHIFT) + 1):
                if ownership.state(HOST, pfn).accessible:
                    out.append((max(start, pfn << PAGE_SHIFT), min(end, (pfn + 1) << PAGE_SHIFT)))
        return merge(out)

    def dma_reachable_now(self, machine) -> Spans:
        """Secret bytes a DMA master the host drives could read or write, right now: one
        behind an IOMMU where its domain grants the page, one with none anywhere, unless
        EL2 mediates it (then host-owned pages only)."""
        memory = machine.memory

        def reaches(pfn: int) -> bool:
            for name, mediated in memory.host_dma.items():
                domain = memory.iommu.get(name)
                if domain is not None:
                    if domain.allows(pfn, write=False) or domain.allows(pfn, write=True):
                        return True
                elif not mediated or memory.ownership.state(HOST, pfn) is PageState.OWNED:
                    return True
            return False

        out = []
        for start, end, label in memory.labels.labelled():
            if label.kind is not LabelKind.SECRET:
                continue
            for pfn in range(start >> PAGE_SHIFT, ((end - 1) >> PAGE_SHIFT) + 1):
                if reaches(pfn):
                    out.append((max(start, pfn << PAGE_SHIFT), min(end, (pfn + 1) << PAGE_SHIFT)))
        return merge(out)

    def torn_down(self) -> bool:
        history = self.world.src.memory.ownership.history
        return any(c.cause == "teardown" for c in history)

    def _sample(self) -> Generator:
        """Every SAMPLE_US over the window, and on past the source's teardown (what the
        host keeps then is still exposure), for AFTER_TEARDOWN more samples."""
        env = self.world.env
        end = self.world.scenario.workload.duration_ms * 1000.0
        yield env.timeout(SAMPLE_PHASE_US)
        after = 0
        while env.now < end or after < AFTER_TEARDOWN:
            if self.torn_down():
                after += 1
            for machine in self.world.machines.values():
                self.samples.append((env.now, machine.name, self.exposed_now(machine)))
                self.dma_samples.append((env.now, machine.name, self.dma_reachable_now(machine)))
            yield env.timeout(SAMPLE_US)

    def spans(self, hits: list[Hit]) -> dict[str, Spans]:
        return by_machine((h.machine, h.start, h.end) for h in hits)


@contextlib.contextmanager
def recording(truth: Truth) -> Iterator[Truth]:
    """Hook ``truth`` into the next world ``simulate`` builds, right after its auditor
    (same place: after the host behaviours are installed, before anything runs)."""
    real = sim.run.Auditor

    def auditor(world):
        made = real(world)
        truth.install(world)
        return made

    sim.run.Auditor = auditor
    try:
        yield truth
    finally:
        sim.run.Auditor = real


def audited(scen: Scenario, proposal: str, *seeds: Callable) -> tuple[AuditRun, Truth]:
    truth = Truth(extra=list(seeds))
    with recording(truth):
        run = audit_run(scen, proposal)
    return run, truth


# ---- what must hold of every audited run -------------------------------------------------


def check_well_formed(run: AuditRun) -> None:
    for v in run.violations:
        assert v.chain and all(step for step in v.chain), v
        assert v.victim, v
        assert v.length > 0, v
        assert v.addr >= RAM_BASE and v.addr + v.length <= RAM_BASE + (256 << 20), v
        assert v.proposal == run.proposal
        if v.kind == "confidentiality":
            assert v.victim.startswith("secret:"), v


def check_reads(run: AuditRun, truth: Truth) -> None:
    """did-read: exactly the secret bytes host or DMA reads were allowed to get."""
    assert violation_spans(run.violations, "did-read") == truth.spans(truth.reads)
    for v in (v for v in run.violations if v.how == "did-read"):
        matching = [
            h
            for h in truth.reads
            if h.machine == v.machine
            and h.actor == v.actor
            and h.time_us / 1000 == v.time_ms
            and h.start <= v.addr
            and v.addr + v.length <= h.end
        ]
        assert matching, v
        assert v.victim == str(matching[0].label)
    distinct = sum(size(s) for s in truth.spans(truth.reads).values())
    assert run.summary.did_read_bytes == distinct


def check_writes(run: AuditRun, truth: Truth) -> None:
    """wrote: exactly the guest bytes host or DMA writes hit (guest data, or a page the
    guest never shared), nothing else."""
    assert violation_spans(run.violations, "wrote") == truth.spans(truth.writes)
    for v in (v for v in run.violations if v.how == "wrote"):
        assert any(
            h.machine == v.machine
            and h.actor == v.actor
            and h.time_us / 1000 == v.time_ms
            and h.start <= v.addr
            and v.addr + v.length <= h.end
            and str(h.label) == v.victim
            for h in truth.writes
        ), v
    distinct = sum(size(s) for s in truth.spans(truth.writes).values())
    assert run.summary.corrupted_bytes == distinct


def check_exposure(run: AuditRun, truth: Truth) -> None:
    """could-read and dma-reachable: at every sample, the open intervals are exactly the
    secret bytes on host-readable pages (on pages a host-driven DMA master reaches); they
    are the trackers' intervals, one for one; and the peak is at least the largest
    sampled union over both machines (a guest byte on both counts once)."""
    world = truth.world
    for how, samples, tracker in (
        ("could-read", truth.samples, "exposure"),
        ("dma-reachable", truth.dma_samples, "dma_exposure"),
    ):
        could = [v for v in run.violations if v.how == how]
        for t_us, machine, exposed in samples:
            open_now = merge(
                (v.addr, v.addr + v.length)
                for v in could
                if v.machine == machine and v.time_ms * 1000 <= t_us < v.end_ms * 1000
            )
            assert open_now == exposed, (how, machine, t_us)
        tracked = sorted(
            (name, i.addr, i.length, i.start / 1000, i.end / 1000)
            for name, m in world.machines.items()
            for i in getattr(m, tracker).intervals
        )
        reported = sorted((v.machine, v.addr, v.length, v.time_ms, v.end_ms) for v in could)
        assert reported == tracked
        union: dict[float, list] = {}
        window = world.scenario.workload.duration_ms * 1000.0
        for t_us, _machine, exposed in samples:
            if t_us < window:
                union.setdefault(t_us, []).extend(exposed)
        peak = max((size(merge(s)) for s in union.values()), default=0)
        summary = run.summary
        got = (
            summary.could_read_peak_bytes
            if how == "could-read"
            else (summary.dma_reachable_peak_bytes)
        )
        assert got >= peak, how
        if not could:
            assert got == 0, how


def host_claims(truth: Truth, shares_only: bool = False) -> list[tuple]:
    """Ownership changes EL2 made on a host claim (cause "host claim..."), as
    (machine, addr, length, time_ms); ``shares_only``: just those that shared a page."""
    return sorted(
        (name, c.first_pfn << PAGE_SHIFT, c.nr_pages << PAGE_SHIFT, c.time / 1000)
        for name, m in truth.world.machines.items()
        for c in m.memory.ownership.history
        if c.cause.startswith("host claim")
        and (not shares_only or c.transition is Transition.GUEST_SHARE_HOST)
    )


def check_trust(run: AuditRun, truth: Truth) -> None:
    """unverified-share: every page EL2 shared on a host claim is reported, same page and
    time, and nothing is reported that was not a host-claim ownership change. (Whether a
    *release* of a claim counts is `test_releasing_a_claim_is_not_an_unverified_share`.)"""
    trust = [v for v in run.violations if v.kind == "trust"]
    reported = sorted((v.machine, v.addr, v.length, v.time_ms) for v in trust)
    shares = host_claims(truth, shares_only=True) + truth.forged_shares + truth.migrated_shares
    assert set(shares) <= set(reported)
    assert set(reported) <= set(host_claims(truth)) | set(truth.forged_shares) | set(
        truth.migrated_shares
    )
    assert len(reported) == len(set(reported))
    assert run.summary.unverified_shares == len(trust) >= len(shares)
    assert {v.how for v in trust} <= {"unverified-share"}


def check_all(run: AuditRun, truth: Truth) -> None:
    check_well_formed(run)
    check_reads(run, truth)
    check_writes(run, truth)
    check_exposure(run, truth)
    check_trust(run, truth)


# ---- the mutation corpus: each kind under each proposal where it can occur ---------------

KZ, POOL = "linux-kzalloc", "linux-shared-pool"
CORPUS = [
    # (id, allocator, proposal, behaviour, churn, what must be found, attack actor)
    # could-read: secret bytes on host-readable pages
    ("could/trusted", POOL, "trusted-host", "honest", False, {"could-read"}, None),
    ("could/claims-kz", KZ, "share-host-claims", "honest", False, {"could-read"}, None),
    ("could/enlight-kz", KZ, "share-enlightened-guest", "honest", False, {"could-read"}, None),
    ("could/snoop-kz", KZ, "share-cmdq-snoop", "honest", False, {"could-read"}, None),
    # did-read: a host read that got secret bytes
    ("read/trusted-kz", KZ, "trusted-host", "read-everything", False, {"did-read"}, "attack"),
    ("read/claims-kz", KZ, "share-host-claims", "read-everything", False, {"did-read"}, "attack"),
    (
        "read/enlight-kz",
        KZ,
        "share-enlightened-guest",
        "read-everything",
        False,
        {"did-read"},
        "attack",
    ),
    ("read/snoop-kz", KZ, "share-cmdq-snoop", "read-everything", False, {"did-read"}, "attack"),
    (
        "read/claims-secret-itt",
        POOL,
        "share-host-claims",
        "secret-page-as-itt",
        False,
        {"did-read", "could-read", "unverified-share"},
        "attack",
    ),
    (
        "read/claims-oversized-kz",
        KZ,
        "share-host-claims",
        "oversized-itt",
        False,
        {"did-read", "unverified-share"},
        "attack",
    ),
    (
        "read/snoop-forge",
        POOL,
        "share-cmdq-snoop",
        "forge-queued-mapd",
        False,
        {"did-read", "could-read", "wrote", "unverified-share"},
        "attack",
    ),
    (
        "read/snoop-stale-kz",
        KZ,
        "share-cmdq-snoop",
        "keep-stale-share",
        True,
        {"did-read"},
        None,
    ),
    # wrote by the host CPU: guest data overwritten
    (
        "write/trusted-kz",
        KZ,
        "trusted-host",
        "write-outside-entries",
        False,
        {"wrote"},
        "attack",
    ),
    (
        "write/claims-kz",
        KZ,
        "share-host-claims",
        "write-outside-entries",
        False,
        {"wrote"},
        "attack",
    ),
    (
        "write/enlight-kz",
        KZ,
        "share-enlightened-guest",
        "write-outside-entries",
        False,
        {"wrote"},
        "attack",
    ),
    (
        "write/snoop-kz",
        KZ,
        "share-cmdq-snoop",
        "write-outside-entries",
        False,
        {"wrote"},
        "attack",
    ),
    # A kept claim exposes the reused ITT slot. (It once also "wrote" there: a held
    # run replayed its own stale CWRITER and KVM re-ran the whole ring, a model artefact.)
    (
        "stale/claims-kz",
        KZ,
        "share-host-claims",
        "keep-stale-share",
        True,
        {"could-read", "unverified-share"},
        None,
    ),
    (
        "write/claims-replay-kz",
        KZ,
        "share-host-claims",
        "replay-stale-mapd",
        True,
        {"wrote"},
        None,
    ),
    # wrote by DMA: the physical ITS writes an ITE over a secret, under every proposal
    ("dma/trusted", POOL, "trusted-host", "its-dma", False, {"wrote"}, "its-hw"),
    ("dma/claims", POOL, "share-host-claims", "its-dma", False, {"wrote"}, "its-hw"),
    ("dma/enlight", POOL, "share-enlightened-guest", "its-dma", False, {"wrote"}, "its-hw"),
    ("dma/snoop", POOL, "share-cmdq-snoop", "its-dma", False, {"wrote"}, "its-hw"),
    ("dma/userspace", POOL, "userspace-serialization", "its-dma", False, {"wrote"}, "its-hw"),
    ("dma/userspace-kz", KZ, "userspace-serialization", "its-dma", False, {"wrote"}, "its-hw"),
    # dma-reachable: secrets a DMA master the host drives could read or write
    ("reach/trusted", POOL, "trusted-host", "honest", False, {"dma-reachable"}, None),
    ("reach/userspace", POOL, "userspace-serialization", "honest", False, {"dma-reachable"}, None),
    ("reach/iommu-kz", KZ, "iommu-gated-its", "honest", False, {"dma-reachable"}, None),
    ("reach/snoop-kz", KZ, "share-cmdq-snoop", "honest", True, {"dma-reachable"}, None),
    # ... and the physical ITS aimed at a secret its IOMMU domain maps
    (
        "dma/iommu-kz",
        KZ,
        "iommu-gated-its",
        "its-dma",
        False,
        {"wrote", "dma-reachable"},
        "its-hw",
    ),
    # did-read by an honest VMM: the shared pages it streams hold co-located secrets
    ("stream/enlight-kz", KZ, "share-enlightened-guest", "honest", False, {"did-read"}, "vmm"),
    ("stream/snoop-kz", KZ, "share-cmdq-snoop", "honest", False, {"did-read"}, "vmm"),
    # unverified-share: EL2 shared a page on the host's word
    ("trust/claims-kz", KZ, "share-host-claims", "honest", False, {"unverified-share"}, None),
    (
        "trust/claims-secret-kz",
        KZ,
        "share-host-claims",
        "secret-page-as-itt",
        False,
        {"unverified-share", "did-read"},
        "attack",
    ),
    (
        "trust/claims-delay-kz",
        KZ,
        "share-host-claims",
        "delay-commands",
        True,
        {"unverified-share"},
        None,
    ),
    # trust timing: EL2 parsed host bytes (the forgery landed before EL2's read), and the
    # destination re-shares what the host obtained on the source
    (
        "trust/snoop-forge-kz",
        KZ,
        "share-cmdq-snoop",
        "forge-queued-mapd",
        False,
        {"unverified-share"},
        None,
    ),
    (
        "trust/claims-kept-kz",
        KZ,
        "share-host-claims",
        "keep-stale-share",
        True,
        {"unverified-share"},
        None,
    ),
]


def test_the_corpus_covers_every_kind_under_every_proposal_where_it_can_occur():
    assert len(CORPUS) >= 20
    covered = {(how, case[2]) for case in CORPUS for how in case[5]}
    protected_shares = ("share-host-claims", "share-enlightened-guest", "share-cmdq-snoop")
    for proposal in ("trusted-host", *protected_shares):
        assert ("could-read", proposal) in covered
        assert ("did-read", proposal) in covered
        assert ("wrote", proposal) in covered
    assert ("wrote", "userspace-serialization") in covered
    for proposal in (*protected_shares, "userspace-serialization", "iommu-gated-its"):
        assert ("dma-reachable", proposal) in covered or proposal in protected_shares[:2]
    assert ("wrote", "iommu-gated-its") in covered
    assert ("unverified-share", "share-host-claims") in covered
    assert ("unverified-share", "share-cmdq-snoop") in covered
    dma = {case[2] for case in CORPUS if case[6] == "its-hw"}
    assert dma == {
        "trusted-host",
        "share-host-claims",
        "share-enlightened-guest",
        "share-cmdq-snoop",
        "userspace-serialization",
        "iommu-gated-its",
    }


@pytest.mark.parametrize(
    ("allocator", "proposal", "behaviour", "churn", "expected", "actor"),
    [pytest.param(*case[1:], id=case[0]) for case in CORPUS],
)
def test_mutation_is_detected_with_the_right_bytes(
    allocator, proposal, behaviour, churn, expected, actor
):
    run, truth = audited(scenario(allocator, [{"kind": behaviour}], churn=churn), proposal)
    found = {v.how for v in run.violations}
    assert expected <= found, (expected, found)
    check_all(run, truth)
    if actor is not None:
        hows = expected & {"did-read", "wrote"}
        assert any(v.actor.endswith(actor) for v in run.violations if v.how in hows)


def test_what_the_guest_had_shared_stays_exposed_after_teardown():
    """The sampler runs on past the source's teardown: the secrets on the pages the guest
    had shared are still there and host-readable, and the audit's intervals say so."""
    run, truth = audited(scenario(KZ), "share-enlightened-guest")
    teardown = next(
        c.time for c in truth.world.src.memory.ownership.history if c.cause == "teardown"
    )
    after = [s for t, m, s in truth.samples if m == "src" and t > teardown]
    assert len(after) >= AFTER_TEARDOWN - 1 and all(size(s) > 0 for s in after)
    check_all(run, truth)


def union_byte_us(violations: list[Violation], how: str, window_us: float) -> float:
    """byte x us of the ``how`` intervals (which check_exposure matches with the samples),
    each guest byte once per instant over both machines, inside the window."""
    spans = [v for v in violations if v.how == how]
    cuts = sorted({x for v in spans for x in (v.addr, v.addr + v.length)})
    total = 0.0
    for lo, hi in itertools.pairwise(cuts):
        times = merge(
            (v.time_ms * 1000, min(v.end_ms * 1000, window_us))
            for v in spans
            if v.addr <= lo and hi <= v.addr + v.length
        )
        total += (hi - lo) * sum(e - s for s, e in times)
    return total


# (id, allocator, proposal, attack, churn, exposed longer?): the matrix's verdict on
# duration, against the byte x ms recomputed from the intervals the samples vouch for
# (a ratio far from the tolerance either way).
DURATION_CASES = [
    ("claims-kept-kz", KZ, "share-host-claims", "keep-stale-share", True, True),
    ("snoop-held-kz", KZ, "share-cmdq-snoop", "keep-stale-share", True, True),
    ("enlight-delayed-kz", KZ, "share-enlightened-guest", "delay-commands", False, False),
]


@pytest.mark.parametrize(
    ("allocator", "proposal", "attack", "churn", "longer"),
    [pytest.param(*case[1:], id=case[0]) for case in DURATION_CASES],
)
def test_the_matrix_counts_a_longer_exposure_as_a_success(
    allocator, proposal, attack, churn, longer
):
    base, base_truth = audited(scenario(allocator, churn=churn), proposal)
    run, truth = audited(scenario(allocator, [{"kind": attack}], churn=churn), proposal)
    check_all(base, base_truth)
    window = truth.world.scenario.workload.duration_ms * 1000.0
    before = union_byte_us(base.violations, "could-read", window)
    after = union_byte_us(run.violations, "could-read", window)
    assert base.summary.could_read_byte_ms == pytest.approx(before / 1000, abs=1e-2)
    assert run.summary.could_read_byte_ms == pytest.approx(after / 1000, abs=1e-2)
    ratio = after / before
    verdict = cell(attack, base, run)
    if longer:
        assert ratio > 1 + 2 * DURATION_TOLERANCE, ratio
        assert verdict.outcome == "succeeded" and "exposed longer" in verdict.why, verdict
        assert verdict.byte_ms > 0
    else:
        assert ratio < 1 + DURATION_TOLERANCE / 2, ratio
        assert "longer" not in verdict.why, verdict
    check_all(run, truth)


def test_write_outside_entries_reports_the_bytes_that_now_hold_its_pattern():
    """The reported ranges hold the attacker's pattern in physical memory: the report
    points at real bytes."""
    pattern = 0x5A
    behaviours = [{"kind": "write-outside-entries", "pattern": pattern}]
    run, truth = audited(scenario(KZ, behaviours), "share-enlightened-guest")
    wrote = [v for v in run.violations if v.how == "wrote"]
    assert wrote
    for v in wrote:
        memory = truth.world.machines[v.machine].memory
        assert memory._pages.read(v.addr, v.length) == bytes([pattern]) * v.length, v
        assert v.victim.split(":")[0] in {"secret", "kernel-data"}
    check_all(run, truth)


def test_its_dma_reports_the_ite_the_physical_its_wrote_over_a_secret():
    run, truth = audited(scenario(POOL, [{"kind": "its-dma"}]), "share-enlightened-guest")
    world = truth.world
    src = world.machines["src"]
    dma_writes = [r for r in src.memory.log if r.actor == "src.its-hw" and r.write and r.allowed]
    assert len(dma_writes) == 1
    rec = dma_writes[0]
    (v,) = [v for v in run.violations if v.how == "wrote"]
    assert (v.machine, v.actor, v.addr, v.length) == ("src", "src.its-hw", rec.addr, 8)
    assert v.victim.startswith("secret:")
    assert "DMA" in v.chain[1]
    # The destination holds the migrated copy of the page: the ITE is really there.
    itt, _ = src.its_hw.itts[0xFFFF]
    entry = ITE(0, 8192, 0).encode().to_bytes(8, "little")
    assert world.dst.memory._pages.read(rec.addr, 8) == entry
    assert str(world.dst.memory.labels.at(rec.addr)) == v.victim
    assert itt <= rec.addr < itt + 256


# ---- violations seeded by hand: a process of our own acting as the host or a DMA master ---

SEED_AT_US = 6000.0  # after boot, before the migration at 10 ms


def host_readable_secret(machine) -> tuple[int, int, Label]:
    for start, end, label in machine.memory.labels.labelled():
        if (
            label.kind is LabelKind.SECRET
            and machine.memory.ownership.state(HOST, start >> PAGE_SHIFT).accessible
        ):
            return start, end, label
    raise AssertionError("no host-readable secret to seed with")


def private_run(machine, kind: LabelKind) -> tuple[int, int, Label]:
    for start, end, label in machine.memory.labels.labelled():
        if (
            label.kind is kind
            and machine.memory.ownership.state(GUEST, start >> PAGE_SHIFT) is PageState.OWNED
        ):
            return start, end, label
    raise AssertionError(f"no guest-private {kind} to seed with")


class Seeded:
    """A seeding process and what it did, for the test to compare with the report."""

    def __init__(self, body) -> None:
        self.body = body
        self.done: list[tuple] = []
        self.faults: list[Stage2Fault] = []

    def __call__(self, world) -> Generator:
        yield world.env.timeout(SEED_AT_US)
        try:
            yield from self.body(self, world)
        except Stage2Fault as fault:
            self.faults.append(fault)


def _read_part_of_a_secret(seed: Seeded, world) -> Generator:
    src = world.src
    start, _end, label = host_readable_secret(src)
    who = Initiator("src.host.attack", HOST)
    src.memory.read(who, start + 16, 32)
    seed.done.append(("src", start + 16, 32, str(label)))
    yield from ()


def test_seeded_host_read_of_part_of_a_secret_is_reported_exactly():
    seed = Seeded(_read_part_of_a_secret)
    run, truth = audited(scenario(KZ), "share-enlightened-guest", seed)
    ((machine, addr, length, victim),) = seed.done
    did = [v for v in run.violations if v.how == "did-read" and v.actor == "src.host.attack"]
    assert [(v.machine, v.actor, v.addr, v.length, v.victim, v.time_ms) for v in did] == [
        (machine, "src.host.attack", addr, length, victim, SEED_AT_US / 1000)
    ]
    check_all(run, truth)


def _read_across_a_secret_edge(seed: Seeded, world) -> Generator:
    src = world.src
    start, end, label = host_readable_secret(src)
    who = Initiator("src.host.attack", HOST)
    # From 8 bytes before the secret to 8 bytes after it: only the secret is reported.
    lo = max(start - 8, start & ~(PAGE_SIZE - 1))
    hi = min(end + 8, (start | (PAGE_SIZE - 1)) + 1)
    # Ground truth: the secret runs the range covers (the neighbours may be secrets too).
    for s, e, lab in src.memory.labels.runs(lo, hi - lo):
        if lab.kind is LabelKind.SECRET:
            seed.done.append(("src", s, e - s, str(lab)))
    assert ("src", start, min(end, hi) - start, str(label)) in seed.done
    src.memory.read(who, lo, hi - lo)
    yield from ()


def test_seeded_read_straddling_a_secret_reports_only_the_secret_bytes():
    seed = Seeded(_read_across_a_secret_edge)
    run, truth = audited(scenario(KZ), "share-cmdq-snoop", seed)
    did = [
        (v.machine, v.addr, v.length, v.victim)
        for v in run.violations
        if v.how == "did-read" and v.actor == "src.host.attack"
    ]
    assert did == seed.done
    check_all(run, truth)


def _read_a_private_secret(seed: Seeded, world) -> Generator:
    start, _end, _label = private_run(world.src, LabelKind.SECRET)
    world.src.memory.read(Initiator("src.host.attack", HOST), start, 16)
    yield from ()


@pytest.mark.parametrize(
    "proposal",
    ["share-host-claims", "share-enlightened-guest", "share-cmdq-snoop", "userspace-serialization"],
)
def test_seeded_read_of_a_private_secret_faults_and_is_no_violation(proposal):
    seed = Seeded(_read_a_private_secret)
    run, truth = audited(scenario(KZ), proposal, seed)
    assert len(seed.faults) == 1
    assert not [v for v in run.violations if v.how == "did-read" and v.actor == "src.host.attack"]
    check_all(run, truth)


def _dma_write_over(kind: LabelKind, length: int = 8):
    def body(seed: Seeded, world) -> Generator:
        src = world.src
        start, _end, label = private_run(src, kind)
        addr = start + 8
        seed.done.append(("src", addr, length, str(label)))
        src.memory.write(src.its_hw.initiator, addr, b"\xee" * length)
        yield from ()

    return body


@pytest.mark.parametrize(
    "proposal",
    [
        "trusted-host",
        "share-host-claims",
        "share-enlightened-guest",
        "share-cmdq-snoop",
        "userspace-serialization",
        "iommu-gated-its",
    ],
)
def test_seeded_its_dma_write_over_a_secret_is_reported_unless_an_iommu_stops_it(proposal):
    kind = LabelKind.SECRET
    if proposal == "trusted-host":  # no page is private: aim at a secret anyway

        def body(seed, world):
            src = world.src
            start = next(
                s for s, _e, lab in src.memory.labels.labelled() if lab.kind is LabelKind.SECRET
            )
            seed.done.append(("src", start + 8, 8, str(src.memory.labels.at(start))))
            src.memory.write(src.its_hw.initiator, start + 8, b"\xee" * 8)
            yield from ()
    else:
        body = _dma_write_over(kind)
    seed = Seeded(body)
    run, truth = audited(scenario(POOL), proposal, seed)
    wrote = [
        (v.machine, v.actor, v.addr, v.length, v.victim) for v in run.violations if v.how == "wrote"
    ]
    if proposal == "iommu-gated-its":
        assert len(seed.faults) == 1 and "IOMMU" in seed.faults[0].reason
        assert wrote == []
    else:
        ((machine, addr, length, victim),) = seed.done
        assert seed.faults == []
        assert wrote == [(machine, "src.its-hw", addr, length, victim)]
        assert victim.startswith("secret:")
    check_all(run, truth)


def _its_dma_on_a_secret_the_itss_domain_maps(seed: Seeded, world) -> Generator:
    src = world.src
    domain = src.memory.iommu[src.its_hw.initiator.name]
    for start, _end, label in src.memory.labels.labelled():
        if label.kind is LabelKind.SECRET and domain.allows(start >> PAGE_SHIFT, write=True):
            seed.done.append(("src", start, 8, str(label)))
            src.memory.write(src.its_hw.initiator, start, b"\xee" * 8)
            break
    yield from ()


def test_iommu_gated_its_lets_the_its_write_secrets_on_pages_mapped_for_an_itt():
    """The ITS's IOMMU domain is page granular: with kzalloc'd ITTs the guest maps whole
    slab pages for the ITS, co-located secrets included, and the physical ITS is the
    same DMA master. Aimed at such a secret (the bundled its-dma aims at the first secret
    in RAM, which is not one), the write goes through; the audit must report it."""
    seed = Seeded(_its_dma_on_a_secret_the_itss_domain_maps)
    run, truth = audited(scenario(KZ), "iommu-gated-its", seed)
    ((machine, addr, length, victim),) = seed.done
    assert seed.faults == []
    wrote = [
        (v.machine, v.actor, v.addr, v.length, v.victim) for v in run.violations if v.how == "wrote"
    ]
    assert wrote == [(machine, "src.its-hw", addr, length, victim)]
    check_all(run, truth)


def _dma_write_free_private_page(seed: Seeded, world) -> Generator:
    src = world.src
    # High in guest RAM: nothing is ever allocated there, the page is private and free.
    addr = RAM_BASE + world.ram_size - 2 * PAGE_SIZE + 0x40
    assert src.memory.labels.at(addr).kind is LabelKind.FREE
    assert src.memory.ownership.state(GUEST, addr >> PAGE_SHIFT) is PageState.OWNED
    rogue = Initiator("src.rogue-dma", HOST, dma=True)
    src.memory.write(rogue, addr, b"\x11" * 24)
    seed.done.append(("src", addr, 24, "free"))
    yield from ()


def test_seeded_dma_write_to_a_never_shared_free_page_is_reported():
    seed = Seeded(_dma_write_free_private_page)
    run, truth = audited(scenario(POOL), "userspace-serialization", seed)
    wrote = [
        (v.machine, v.actor, v.addr, v.length, v.victim) for v in run.violations if v.how == "wrote"
    ]
    ((machine, addr, length, victim),) = seed.done
    assert wrote == [(machine, "src.rogue-dma", addr, length, victim)]
    check_all(run, truth)


def _host_claims_a_secret_page(seed: Seeded, world) -> Generator:
    src = world.src
    start, _end, _label = private_run(src, LabelKind.SECRET)
    pfn = start >> PAGE_SHIFT
    ok = yield from src.lowvisor.host_share_guest_page(pfn, "host claim: seeded")
    seed.done.append((ok, pfn, world.env.now))


@pytest.mark.parametrize(
    "proposal", ["share-host-claims", "share-enlightened-guest", "userspace-serialization"]
)
def test_seeded_host_claim_is_an_unverified_share_only_where_el2_takes_claims(proposal):
    seed = Seeded(_host_claims_a_secret_page)
    run, truth = audited(scenario(POOL), proposal, seed)
    ((ok, pfn, when),) = seed.done
    trust = [v for v in run.violations if v.how == "unverified-share" and v.machine == "src"]
    if proposal != "share-host-claims":
        assert not ok and trust == []
        assert not [v for v in run.violations if v.how == "could-read"]
    else:
        assert ok
        (change,) = [
            c for c in truth.world.src.memory.ownership.history if c.cause == "host claim: seeded"
        ]
        assert change.first_pfn == pfn and SEED_AT_US <= change.time <= when
        (v,) = [v for v in trust if v.addr == pfn << PAGE_SHIFT]
        assert (v.length, v.time_ms) == (PAGE_SIZE, change.time / 1000)
        when = change.time
        # From that moment the page's secrets are host-readable (could-read).
        opened = [
            c
            for c in run.violations
            if c.how == "could-read"
            and c.machine == "src"
            and c.addr >> PAGE_SHIFT == pfn
            and c.time_ms == when / 1000
        ]
        assert opened and all("host claim: seeded" in c.chain[1] for c in opened)
    check_all(run, truth)


def test_releasing_a_claim_is_not_an_unverified_share():
    """share-host-claims releases what it claimed once SAVE / RESTORE is done. The
    release is EL2 *unsharing* a page (``__pkvm_guest_unshare_host``, cause "host claim
    released"): it gives the host nothing, so it is no "unverified-share", and the
    chain must not say "the host asked EL2 to share page" of it."""
    run, truth = audited(scenario(KZ), "share-host-claims")
    shares = host_claims(truth, shares_only=True)
    assert shares and len(host_claims(truth)) > len(shares)  # some claims were released
    trust = [v for v in run.violations if v.kind == "trust"]
    assert sorted((v.machine, v.addr, v.length, v.time_ms) for v in trust) == shares
    assert run.summary.unverified_shares == len(shares)
    for v in trust:
        assert "__pkvm_guest_share_host" in v.chain[1], v.chain


def test_an_unverified_share_names_what_the_page_held_when_el2_shared_it():
    """The victim of a trust violation is what the shared page held at that moment: for
    secret-page-as-itt, secrets. (The source's poisoned pages lose their labels at
    teardown, so labels read after the run may say "free" there.)"""
    run, truth = audited(scenario(POOL, [{"kind": "secret-page-as-itt"}]), "share-host-claims")
    trust = [v for v in run.violations if v.kind == "trust"]
    assert any(v.machine == "src" for v in trust)
    for v in trust:
        held = truth.claimed[v.machine, v.addr, v.time_ms]
        assert "secret:" in held
        assert v.victim == held, (v.machine, hex(v.addr), v.victim)


# ---- seeded edge cases the audit must not miss ---------------------------------------------


def _overlapping_partial_reads(seed: Seeded, world) -> Generator:
    src = world.src
    start, end, _label = host_readable_secret(src)
    assert end - start >= 96
    who = Initiator("src.host.attack", HOST)
    src.memory.read(who, start, 64)
    yield world.env.timeout(1.0)
    src.memory.read(who, start + 32, 64)
    seed.done.append(("src", start, 96))


def test_did_read_bytes_counts_distinct_bytes_when_reads_overlap():
    """Two reads of one secret, [0, 64) and [32, 96): 96 distinct secret bytes were read.

    The summary documents ``did_read_bytes`` as "distinct secret bytes read"."""
    seed = Seeded(_overlapping_partial_reads)
    run, truth = audited(scenario(KZ), "share-enlightened-guest", seed)
    ((machine, start, distinct),) = seed.done
    attack = [h for h in truth.reads if h.actor == "src.host.attack"]
    assert truth.spans(attack) == {machine: [(start, start + distinct)]} and distinct == 96
    ours = [v for v in run.violations if v.actor == "src.host.attack"]
    assert violation_spans(ours, "did-read") == {machine: [(start, start + 96)]}
    # With the VMM's reads of the pages it streamed: still each byte once.
    assert run.summary.did_read_bytes == sum(size(s) for s in truth.spans(truth.reads).values())


def _dma_write_to_a_private_itt(seed: Seeded, world) -> Generator:
    src = world.src
    start, _end, label = private_run(src, LabelKind.ITT)
    seed.done.append(("src", start, 8, str(label)))
    src.memory.write(src.its_hw.initiator, start, b"\xee" * 8)
    yield from ()


def test_dma_write_to_an_itt_on_a_never_shared_page_is_reported():
    """kzalloc'd ITTs under userspace-serialization sit on guest-private slab pages that
    nothing maps for the ITS. The physical ITS (no IOMMU) writing one is a DMA write to
    "a page the guest never shared", an integrity violation by the audit's definition."""
    seed = Seeded(_dma_write_to_a_private_itt)
    run, truth = audited(scenario(KZ), "userspace-serialization", seed)
    ((machine, addr, length, victim),) = seed.done
    assert seed.faults == []
    assert truth.spans(truth.writes) == {machine: [(addr, addr + length)]}
    wrote = [(v.machine, v.addr, v.length, v.victim) for v in run.violations if v.how == "wrote"]
    assert wrote == [(machine, addr, length, victim)]


def _dma_write_across_the_start_of_guest_ram(seed: Seeded, world) -> Generator:
    src = world.src
    assert src.memory.ownership.state(GUEST, RAM_BASE >> PAGE_SHIFT) is PageState.OWNED
    rogue = Initiator("src.rogue-dma", HOST, dma=True)
    src.memory.write(rogue, RAM_BASE - 8, b"\x22" * 16)  # 8 host bytes, 8 guest bytes
    seed.done.append(("src", RAM_BASE, 8))
    yield from ()


def test_dma_write_straddling_the_start_of_guest_ram_is_reported():
    """A DMA write that covers host memory and the guest's first (private) page puts 8
    bytes into a page the guest never shared."""
    seed = Seeded(_dma_write_across_the_start_of_guest_ram)
    run, truth = audited(scenario(POOL), "userspace-serialization", seed)
    assert seed.faults == []
    ((machine, addr, length),) = seed.done
    assert truth.spans(truth.writes) == {machine: [(addr, addr + length)]}
    wrote = [(v.machine, v.addr, v.length) for v in run.violations if v.how == "wrote"]
    assert wrote == [(machine, addr, length)]


# ---- hypothesis: honest runs of proposals whose design allows no violation -----------------

# On a platform whose physical ITS cannot reach guest memory (EL2 mediates the host's
# commands to it, or the ITS sits behind an IOMMU): with no IOMMU and no mediation the
# host-driven ITS reaches every secret (test_exposure.py), and with kzalloc'd ITTs the
# ITS's IOMMU domain maps their slab neighbours.
NO_VIOLATION_BY_DESIGN = {
    "linux-shared-pool": [
        "share-host-claims",  # every table page is the driver's share: nothing to claim
        "userspace-serialization",
        "iommu-gated-its",
        "share-enlightened-guest",
        "share-cmdq-snoop",
    ],
    "linux-kzalloc": ["userspace-serialization"],
}


@st.composite
def honest_scenarios(draw, allocator: str) -> Scenario:
    n = draw(st.integers(1, 3))
    ids = draw(st.lists(st.integers(0, 0x3FFF), min_size=n, max_size=n, unique=True))
    devices = [
        {
            "name": f"dev{i}",
            "device_id": dev_id,
            "vectors": draw(st.integers(1, 20)),
            "rate_hz": draw(st.sampled_from([0.0, 200.0, 2000.0])),
        }
        for i, dev_id in enumerate(ids)
    ]
    churn = []
    if draw(st.booleans()):
        churn = possible_churn(
            (draw(st.floats(0.0, 29.0)), draw(st.sampled_from(devices))["name"])
            for _ in range(draw(st.integers(1, 3)))
        )
    return Scenario.model_validate(
        {
            "name": "honest",
            "question": "does an honest run stay clean?",
            "seed": draw(st.integers(0, 2**16)),
            "guest": {
                "ram_mib": 256,
                "vcpus": draw(st.integers(1, 4)),
                "allocator": allocator,
                "secret_density": draw(st.sampled_from([0.25, 1.0])),
                "two_level_device_table": draw(st.booleans()),
            },
            "devices": devices,
            "workload": {
                "duration_ms": 30.0,
                "affinity_moves_per_s": draw(st.sampled_from([0.0, 100.0])),
                "churn": churn,
            },
            "migration": {"at_ms": draw(st.floats(2.0, 25.0))},
            "lowvisor": {"mediate_physical_its": True},
        }
    )


@pytest.mark.parametrize(
    ("allocator", "proposal"),
    [(a, p) for a, ps in NO_VIOLATION_BY_DESIGN.items() for p in ps],
)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_honest_runs_report_no_violation(allocator, proposal, data):
    scen = data.draw(honest_scenarios(allocator))
    run = audit_run(scen, proposal)
    assert run.violations == []
    s = run.summary
    assert (s.could_read_peak_bytes, s.did_read_bytes, s.corrupted_bytes) == (0, 0, 0)
    assert (s.dma_reachable_peak_bytes, s.dma_reachable_byte_ms) == (0, 0.0)
    assert s.unverified_shares == 0


def test_honest_run_has_secrets_to_lose():
    """The zero above is not for want of secrets: the same guest exposes plenty without
    protection."""
    world = simulate(scenario(POOL), "trusted-host")
    assert any(m.exposure.intervals for m in world.machines.values())
