"""The exposure tracker's one-page relabelling shortcut gives what re-deriving the whole
page gives: the same open runs, intervals, current and peak exposure, for random
relabellings and page-state changes."""

from __future__ import annotations

import random

import pytest

from sim.exposure import ExposureTracker
from sim.memory.access import MemorySystem
from sim.memory.labels import Label, LabelKind
from sim.memory.ownership import Transition

GUEST = "pvm"


class FullRefresh(ExposureTracker):
    """The reference: every relabelling re-derives its whole page."""

    def _relabelled(self, pfn: int, start: int, end: int) -> None:
        self._refresh(pfn, pfn + 1, "label")


def _state(t: ExposureTracker):
    intervals = sorted(
        (i.addr, i.length, i.secret, i.start, i.end, i.via, i.trigger, str(i.opened_by))
        for i in t.intervals
    )
    opened = {p: {r: v[0] for r, v in runs.items()} for p, runs in t._open.items()}
    return intervals, opened, t.current, t.peak, t.byte_us


@pytest.mark.parametrize("seed", range(40))
def test_one_page_relabelling_matches_a_full_re_derivation(seed):
    rng = random.Random(seed)
    now = [0.0]
    memories, trackers = [], []
    for cls in (ExposureTracker, FullRefresh):
        memory = MemorySystem(clock=lambda: now[0])
        memory.ownership.add_guest(GUEST)
        memory.ownership.apply(Transition.HOST_DONATE_GUEST, 0x40000, 8, guest=GUEST)
        memories.append(memory)
        trackers.append(cls(memory, lambda: now[0], window_end=900.0))
    names = ["a", "b", "c", ""]
    kinds = [LabelKind.SECRET, LabelKind.SECRET, LabelKind.KERNEL, LabelKind.FREE]
    shared: set[int] = set()
    for _ in range(300):
        now[0] += rng.choice([0.0, 0.5, 3.0])
        if rng.random() < 0.15:
            pfn = 0x40000 + rng.randrange(8)
            t = Transition.GUEST_UNSHARE_HOST if pfn in shared else Transition.GUEST_SHARE_HOST
            for m in memories:
                m.ownership.apply(t, pfn, guest=GUEST)
            shared ^= {pfn}
            continue
        addr = (0x40000 + rng.randrange(8)) * 4096 + rng.randrange(4096)
        length = rng.choice([1, 8, 64, 128, 300, 4096 - (addr & 4095)])
        label = Label(rng.choice(kinds), rng.choice(names))
        for m in memories:
            m.labels.set(addr, length, label)
        assert _state(trackers[0]) == _state(trackers[1])
    for t in trackers:
        t.finish()
    assert _state(trackers[0]) == _state(trackers[1])
    assert trackers[0].intervals  # something was exposed and closed
