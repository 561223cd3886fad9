"""The allocator profiles against the captures they are calibrated to: every figure in
sim/actors/alloc.py's PROFILES is checked against the capture it cites and against what
the modelled guest of that generation does with the same devices."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from sim.actors.alloc import KMALLOC_512_NEIGHBOURS, PROFILES
from sim.capture.format import bundled_captures, load_capture
from sim.capture.twin import modelled_twin
from sim.memory.labels import LabelKind
from sim.memory.physmem import PAGE_SIZE
from sim.run import simulate
from sim.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
GEN = {"linux-kzalloc": "6.1", "linux-shared-pool": "7.3"}


def _capture(profile):
    return load_capture(bundled_captures()[profile.source.removesuffix(".capture.json")])


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_names_its_generation_and_capture(name):
    profile = PROFILES[name]
    assert profile.generation == GEN[name] == _capture(profile).kernel.generation


def test_kzalloc_figures_are_the_61_dump():
    profile = PROFILES["linux-kzalloc"]
    cap = _capture(profile)
    assert len(cap.colocation) == 5
    neighbours: Counter[str] = Counter()
    for page in cap.colocation:
        a = page.allocator
        assert a.kind == "slab" and a.cache == f"kmalloc-{profile.object_size}"
        assert (a.object_size, a.slab_order, a.objects_per_slab, a.objects_per_page, a.align) == (
            profile.object_size,
            profile.slab_order,
            profile.objects_per_slab,
            profile.objects_per_page,
            profile.align,
        )
        assert all(o.addr % profile.align == 0 for o in page.objects)
        others = [o for o in page.objects if o.kind == "kernel" and o.live]
        assert len(others) == profile.others_per_itt_page
        if any(o.kind == "itt" and o.live for o in page.objects):
            neighbours.update(o.what for o in others)
    assert neighbours == dict(KMALLOC_512_NEIGHBOURS)


def test_shared_pool_figures_are_the_73_dump():
    profile = PROFILES["linux-shared-pool"]
    cap = _capture(profile)
    (page,) = cap.colocation
    assert page.allocator.kind == "pool"
    itts = [o for o in page.objects if o.kind == "itt"]
    assert [o.addr - page.page for o in itts] == [0x000, 0x100, 0x200, 0x300]
    assert all(o.addr % profile.align == 0 for o in itts)
    assert sum(1 for o in page.objects if o.kind == "kernel") == profile.others_per_itt_page
    assert all(o.zero for o in page.objects if o.kind == "free")


def _twin_world(gen: str):
    twin = modelled_twin(load_scenario(SCENARIOS / f"real-guest-{gen}.yaml"))
    twin = twin.model_copy(update={"guest": twin.guest.model_copy(update={"power_off": False})})
    return simulate(twin, "share-host-claims")


def test_the_61_model_lays_itts_out_as_the_dump():
    profile = PROFILES["linux-kzalloc"]
    world = _twin_world("6.1")
    guest = world.guest
    labels = guest.machine.memory.labels
    cache = guest.kmalloc[profile.object_size]
    assert (cache.order, cache.objects_per_slab) == (profile.slab_order, profile.objects_per_slab)
    assert cache.slab_bytes // PAGE_SIZE * profile.objects_per_page == profile.objects_per_slab
    kinds = {k for k, _ in KMALLOC_512_NEIGHBOURS}
    for dev in guest.devices.values():
        obj, size = dev.itt_object
        assert size == profile.object_size and obj % profile.align == 0, dev.spec.name
        page = obj & ~(PAGE_SIZE - 1)
        others = [
            lab
            for start, _, lab in labels.runs(page, PAGE_SIZE)
            if start % profile.object_size == 0 and lab.kind in (LabelKind.KERNEL, LabelKind.SECRET)
        ]
        assert len(others) == profile.others_per_itt_page, dev.spec.name
        assert all(lab.name.split(" in ")[0] in kinds for lab in others)


def test_the_73_model_lays_itts_out_as_the_dump():
    world = _twin_world("7.3")
    guest = world.guest
    cap = _capture(PROFILES["linux-shared-pool"])
    want = {d.device_id: d.itts[0].addr % PAGE_SIZE for d in cap.devices}
    got = {d.spec.device_id: d.itt_addr % PAGE_SIZE for d in guest.devices.values()}
    assert got == want  # +0x000, +0x100, +0x200, +0x300 (first fit, 256-aligned)
    pages = {d.itt_addr & ~(PAGE_SIZE - 1) for d in guest.devices.values()}
    assert len(pages) == 1 and guest.pool.pool_pages == 1
    kinds = {lab.kind for _, _, lab in guest.machine.memory.labels.runs(pages.pop(), PAGE_SIZE)}
    assert kinds == {LabelKind.ITT, LabelKind.FREE}
