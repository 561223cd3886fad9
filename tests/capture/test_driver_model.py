"""The ``linux`` driver model against the real streams: for the devices of each bundled
capture, the model of that kernel generation sends the same commands, field for field,
except the ITT addresses (the allocator picks those; see test_alloc_calibration.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.actors.linux_driver import affinity_masks
from sim.actors.replay import capture_of
from sim.capture.twin import modelled_twin
from sim.its.commands import DISCARD, INV, MAPD, MAPTI, SYNC, decode
from sim.run import run, simulate
from sim.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def _replay(gen: str):
    return load_scenario(SCENARIOS / f"real-guest-{gen}.yaml")


def _model_stream(scenario, kernel: str | None = None) -> list:
    twin = modelled_twin(scenario)
    updates = {"workload": twin.workload.model_copy(update={"affinity_moves_per_s": 0.0})}
    if kernel is not None:
        updates["guest"] = twin.guest.model_copy(update={"kernel": kernel})
    world = simulate(twin.model_copy(update=updates), "share-cmdq-snoop")
    guest = world.guest
    queue = guest.machine.memory.peek(guest.cmdq, guest.cwriter)
    return [decode(queue[i : i + 32]) for i in range(0, len(queue), 32)]


def _shape(cmds: list) -> list:
    """Every field but MAPD's ITT address."""
    return [MAPD(c.device_id, c.size, 0, c.valid) if isinstance(c, MAPD) else c for c in cmds]


@pytest.mark.parametrize("gen", ["6.1", "7.3"])
def test_model_sends_what_the_real_guest_sent(gen):
    scenario = _replay(gen)
    real = [decode(c.encode()) for c in capture_of(scenario).commands]
    model = _model_stream(scenario)
    assert len(model) == len(real)
    for i, (m, r) in enumerate(zip(_shape(model), _shape(real), strict=True)):
        assert m == r, f"command {i}: model {m}, real {r}"


def _mapds(cmds: list, device_id: int) -> list[tuple[int, bool]]:
    return [(c.size, c.valid) for c in cmds if isinstance(c, MAPD) and c.device_id == device_id]


def test_where_the_generations_differ_the_model_follows_each():
    m61, m73 = _model_stream(_replay("6.1")), _model_stream(_replay("7.3"))
    # nvme: 6.1 sizes the ITT per allocation (Size 0 for the admin vector, freed with
    # MAPD V=0, Size 1 for the full set, MAPD V=0 at shutdown); 7.3 once by the MSI-X
    # table (65 entries: Size 6) and never unmaps the device on free.
    assert _mapds(m61, 0x20) == [(0, True), (0, False), (1, True), (1, False)]
    assert _mapds(m73, 0x20) == [(6, True)]
    # virtio-net: Size 1 (3 vectors) on 6.1, Size 2 (a 6-entry table) on 7.3.
    assert _mapds(m61, 0x8) == [(1, True)] and _mapds(m73, 0x8) == [(2, True)]
    # The LPIs follow the blocks: 7.3's virtio-blk starts after virtio-net's 8.
    first = {
        g: next(c.intid for c in m if isinstance(c, MAPTI) and c.device_id == 0x10)
        for g, m in (("6.1", m61), ("7.3", m73))
    }
    assert first == {"6.1": 8196, "7.3": 8200}
    # The wrong generation does not reproduce a capture.
    real61 = [decode(c.encode()) for c in capture_of(_replay("6.1")).commands]
    assert _shape(_model_stream(_replay("6.1"), kernel="7.3")) != _shape(real61)


def test_shutdown_masks_then_discards_last_vector_first():
    model = _model_stream(_replay("7.3"))
    tail = [(type(c).__name__, getattr(c, "event_id", None)) for c in model[-12:]]
    assert tail == [
        ("INV", 2),
        ("SYNC", None),
        ("DISCARD", 2),
        ("SYNC", None),
        ("INV", 1),
        ("SYNC", None),
        ("DISCARD", 1),
        ("SYNC", None),
        ("INV", 0),
        ("SYNC", None),
        ("DISCARD", 0),
        ("SYNC", None),
    ]
    assert all(isinstance(c, INV | DISCARD | SYNC) for c in model[-12:])


def test_affinity_masks_spread_managed_vectors():
    assert affinity_masks(2, 2) == [range(0, 1), range(1, 2)]
    assert affinity_masks(2, 4) == [range(0, 2), range(2, 4)]
    assert affinity_masks(3, 4) == [range(0, 2), range(2, 3), range(3, 4)]
    assert affinity_masks(4, 2) == [range(0, 1), range(1, 2), range(0, 1), range(1, 2)]


@pytest.mark.parametrize("gen", ["6.1", "7.3"])
def test_the_twin_migrates_correctly_under_every_proposal(gen):
    twin = modelled_twin(_replay(gen))
    for proposal in twin.proposals:
        c = run(twin, proposal).correctness
        assert c.its_correct and c.expected_translations == 11, (proposal, c)
