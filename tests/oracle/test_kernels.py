"""Every stream source through the model under both kernel generations; where the two
generations differ, the differences are exactly the documented ones."""

from __future__ import annotations

import pytest

from sim.oracle.compare import KERNEL_DIFFERENCES, compare
from sim.oracle.model import KERNELS, observe
from sim.oracle.streams import STREAM_SOURCES, known_divergence_streams, random_streams


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("source", [*STREAM_SOURCES, "random"])
def test_every_source_runs_through_the_model(source, kernel):
    streams = random_streams(seed=3, count=60) if source == "random" else STREAM_SOURCES[source]()
    assert streams
    for s in streams:
        obs = observe(s, kernel=kernel)
        assert obs.source == "model" and obs.kernel == kernel and obs.name == s.name
        if s.protected and kernel == "6.1":  # 6.1 refuses the protected VM type
            assert obs.error.startswith("KVM_CREATE_VM: Invalid argument")
            continue
        assert len(obs.creadr) == len(s.commands)
        assert len(obs.restores) == len(s.restores)
    # deterministic: the same stream gives the same observation
    assert observe(streams[-1], kernel=kernel) == obs


EXPECTED = {
    "kd-mapti-lpi-twice": (
        "a second MAPTI/MAPI onto a mapped LPI",
        {"save:cte", "save:ite", "save_pending:cte", "save_pending:ite"},
    ),
    "kd-save-unmapped-collection": (
        "SAVE_TABLES with an ITE whose collection was unmapped (MAPC V=0)",
        {"save:ite", "save_pending:ite"},
    ),
    "kd-save-l1-cleared": (
        "SAVE_TABLES with a device vgic_its_check_id() now rejects",
        {"save:ret", "save:cte", "save:dte", "save:ite"}
        | {"save_pending:cte", "save_pending:dte", "save_pending:ite"},
    ),
    "kd-mapc-v0-bad-target": (
        "MAPC V=0 with an out-of-range target",
        {"save:cte", "save_pending:cte"},
    ),
}


@pytest.mark.parametrize("stream", known_divergence_streams(), ids=lambda s: s.name)
def test_6_1_and_7_3_differ_exactly_as_documented(stream):
    title, classes = EXPECTED[stream.name]
    c = compare(observe(stream, kernel="6.1"), observe(stream, kernel="7.3"), stream)
    assert set(c.classes) == classes
    explained = compare(
        observe(stream, kernel="6.1"), observe(stream, kernel="7.3"), stream, KERNEL_DIFFERENCES
    )
    assert explained.ok
    assert {k.title for k in explained.explained.values()} == {title}


def test_6_1_and_7_3_differ_on_random_streams_only_where_documented():
    differing = 0
    for s in random_streams(seed=5, count=150):
        c = compare(observe(s, kernel="6.1"), observe(s, kernel="7.3"), s, KERNEL_DIFFERENCES)
        assert c.ok, (s.name, [m.key for m in c.unexplained])
        differing += bool(c.mismatches)
    assert differing >= 10  # the random streams do reach the differences
