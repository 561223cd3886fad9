"""``LabelMap.set_runs`` (a new slab's objects) and ``copy_from`` (a migrated guest's
labels) leave the labels, the page index and both exposure trackers exactly as setting
each run one by one does, telling the watchers once."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from sim.exposure import ExposureTracker
from sim.memory.access import MemorySystem
from sim.memory.labels import Label, LabelKind
from sim.memory.ownership import Transition
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE

GUEST = "pvm"
FIRST, PAGES = 0x40000, 12
KINDS = [LabelKind.SECRET, LabelKind.KERNEL, LabelKind.ITT]


def _world(shared: set[int], protected: bool = True):
    now = [5.0]
    memory = MemorySystem(clock=lambda: now[0])
    memory.ownership.add_guest(GUEST)
    donate = Transition.HOST_DONATE_GUEST if protected else Transition.HOST_SHARE_GUEST
    memory.ownership.apply(donate, FIRST, PAGES, guest=GUEST)
    for pfn in sorted(shared) if protected else ():
        memory.ownership.apply(Transition.GUEST_SHARE_HOST, pfn, guest=GUEST)
    trackers = [ExposureTracker(memory, lambda: now[0], reach=r) for r in ("stage-2", "dma")]
    return memory, trackers, now


def _state(memory: MemorySystem, trackers: list[ExposureTracker]):
    labels = memory.labels
    out = [list(labels.labelled()), dict(labels.page_kinds), labels._map._keys[:]]
    for t in trackers:
        t.finish()
        out.append(
            (
                sorted(
                    (i.addr, i.length, i.secret, i.start, i.end, i.via, i.trigger, str(i.opened_by))
                    for i in t.intervals
                ),
                t.current,
                t.peak,
                t.byte_us,
            )
        )
    return out


def _random_runs(rng: random.Random, addr: int, length: int) -> list[tuple[int, int, Label]]:
    runs, cur = [], addr
    while cur < addr + length and len(runs) < 40:
        start = cur + rng.choice([0, 0, 8, 64, 300])
        stop = start + rng.choice([8, 64, 256, 512, PAGE_SIZE, 3 * PAGE_SIZE])
        if stop > addr + length:
            break
        runs.append((start, stop, Label(rng.choice(KINDS), rng.choice("abc"))))
        cur = stop
    return runs


@pytest.mark.parametrize("seed", range(30))
def test_set_runs_is_each_set_in_turn(seed):
    rng = random.Random(seed)
    shared = {FIRST + p for p in range(PAGES) if rng.random() < 0.4}
    protected = rng.random() < 0.8
    slab = (FIRST + rng.randrange(4)) << PAGE_SHIFT
    length = rng.choice([1, 2, 4, 8]) * PAGE_SIZE
    runs = _random_runs(rng, slab, length)
    pre = (FIRST + PAGES - 1) << PAGE_SHIFT  # a label outside the slab, set before
    states, calls = [], []
    for batched in (False, True):
        memory, trackers, now = _world(shared, protected)
        memory.labels.set(pre, 128, Label(LabelKind.SECRET, "outside"))
        now[0] = 9.0
        seen: list[tuple[int, int, bool]] = []
        memory.labels.watchers.append(lambda a, n, done, seen=seen: seen.append((a, n, done)))
        if batched:
            memory.labels.set_runs(slab, length, runs)
        else:
            for start, stop, label in runs:
                memory.labels.set(start, stop - start, label)
        now[0] = 20.0
        states.append(_state(memory, trackers))
        calls.append(seen)
    assert states[0] == states[1]
    merging = any(a[1] == b[0] and a[2] == b[2] for a, b in pairwise(runs))
    # Runs that touch with one label are set one by one (their merge closes an exposure).
    assert calls[1] == (calls[0] if merging else [(slab, length, False), (slab, length, True)])


def test_set_runs_on_a_labelled_range_sets_them_one_by_one():
    memory, _, _ = _world(set())
    addr = FIRST << PAGE_SHIFT
    memory.labels.set(addr + 100, 50, Label(LabelKind.KERNEL, "there"))
    seen = []
    memory.labels.watchers.append(lambda a, n, done: seen.append((a, n, done)))
    memory.labels.set_runs(addr, PAGE_SIZE, [(addr, addr + 64, Label(LabelKind.SECRET, "s"))])
    assert seen == [(addr, 64, False), (addr, 64, True)]  # the one set()
    assert memory.labels.at(addr + 120) == Label(LabelKind.KERNEL, "there")


def test_set_runs_refuses_a_partial_page():
    memory, _, _ = _world(set())
    with pytest.raises(ValueError, match="not whole pages"):
        memory.labels.set_runs((FIRST << PAGE_SHIFT) + 8, PAGE_SIZE, [])


@pytest.mark.parametrize("seed", range(30))
def test_copy_from_is_each_labelled_run_set_in_turn(seed):
    rng = random.Random(seed)
    src, _, _ = _world(set())
    ram = FIRST << PAGE_SHIFT, PAGES * PAGE_SIZE
    for start, stop, label in _random_runs(rng, *ram):
        src.labels.set(start, stop - start, label)
    shared = {FIRST + p for p in range(PAGES) if rng.random() < 0.5}
    protected = rng.random() < 0.7
    states = []
    for batched in (False, True):
        memory, trackers, now = _world(shared, protected)
        now[0] = 11.0
        if batched:
            memory.labels.copy_from(src.labels, *ram)
        else:
            for start, stop, label in src.labels.runs(*ram):
                if label.kind is not LabelKind.FREE:
                    memory.labels.set(start, stop - start, label)
        now[0] = 30.0
        states.append(_state(memory, trackers))
    assert states[0] == states[1]
    assert states[1][0] == list(src.labels.labelled())
