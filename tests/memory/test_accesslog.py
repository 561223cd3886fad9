"""AccessLog: the columnar access log reads back exactly what was appended."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.memory.accesslog import AccessLog, AccessRecord
from sim.memory.physmem import PAGE_SHIFT, page_span

ADDR_MAX = 1 << 48
# Many actor names, so the per-actor index goes well past a handful (and short random ones).
ACTORS = st.one_of(
    st.sampled_from([f"m{i}.actor{j}" for i in range(4) for j in range(40)]),
    st.text(min_size=0, max_size=6),
)


@st.composite
def records(draw, max_size: int = 60, min_length: int = 0) -> list[AccessRecord]:
    """Accesses in time order: times never decrease (often equal), lengths may be 0."""
    steps = draw(
        st.lists(
            st.tuples(
                st.one_of(st.just(0.0), st.floats(0.0, 50.0, allow_nan=False)),
                ACTORS,
                st.one_of(
                    st.integers(0, ADDR_MAX - 1),
                    st.integers(0, 64).map(lambda p: p << PAGE_SHIFT),  # aligned, low
                    st.integers(0, 1 << 18),  # small, unaligned
                ),
                st.one_of(
                    st.integers(min_length, 16),
                    st.integers(max(min_length, 1), 5 << PAGE_SHIFT),
                    st.sampled_from([1 << PAGE_SHIFT, (1 << PAGE_SHIFT) + 1]),
                ),
                st.booleans(),
                st.booleans(),
            ),
            max_size=max_size,
        )
    )
    out = []
    now = draw(st.floats(0.0, 1e6, allow_nan=False))
    for dt, actor, addr, length, write, allowed in steps:
        now += dt
        addr = min(addr, ADDR_MAX - length)  # stays inside the 48-bit physical space
        out.append(AccessRecord(now, actor, addr, length, write, allowed))
    return out


def build(recs: list[AccessRecord]) -> AccessLog:
    log = AccessLog()
    for rec in recs:
        log.append(*rec)
    return log


def reference_pages_written(recs: list[AccessRecord], since: float, actors: set[str]) -> set[int]:
    return {
        pfn
        for rec in recs
        if rec.write and rec.allowed and rec.actor in actors and rec.time >= since
        for pfn in page_span(rec.addr, rec.length)
    }


@settings(max_examples=150, deadline=None)
@given(records(), st.data())
def test_reads_back_as_the_list_it_was_built_from(recs, data) -> None:
    log = build(recs)
    n = len(recs)
    assert len(log) == n
    assert list(log) == recs
    assert list(reversed(log)) == recs[::-1]
    for i in range(-n, n):
        got = log[i]
        assert got == recs[i]
        assert type(got) is AccessRecord
        assert type(got.write) is bool and type(got.allowed) is bool
        assert type(got.time) is float
    for bad in (n, n + 1, -n - 1, -n - 7):
        with pytest.raises(IndexError):
            log[bad]
    for _ in range(5):
        sl = data.draw(st.slices(n + 3))
        assert log[sl] == recs[sl]
    assert log[:] == recs
    assert log[::-1] == recs[::-1]
    assert log[n:] == []


@settings(max_examples=100, deadline=None)
@given(records(max_size=25), st.data())
def test_equality_with_lists_and_logs(recs, data) -> None:
    log = build(recs)
    assert log == recs
    assert recs == log  # list.__eq__ defers to AccessLog.__eq__
    assert log == build(recs)
    assert (log != build(recs)) is False
    assert log != [*recs, AccessRecord(0.0, "x", 0, 1, True, True)]
    assert log != build(recs[:-1]) or not recs
    if recs:
        i = data.draw(st.integers(0, len(recs) - 1))
        field = data.draw(st.sampled_from(["write", "allowed", "addr", "length", "actor"]))
        old = getattr(recs[i], field)
        change = {
            "write": lambda v: not v,
            "allowed": lambda v: not v,
            "addr": lambda v: v ^ 1,
            "length": lambda v: v + 1,
            "actor": lambda v: v + "!",
        }[field]
        new = change(old)
        changed = [*recs]
        changed[i] = recs[i]._replace(**{field: new})
        assert log != changed
        assert log != build(changed)
    assert log != 0 and log != "log" and log != tuple(recs)
    with pytest.raises(TypeError):
        hash(log)


def test_empty_log() -> None:
    log = AccessLog()
    assert len(log) == 0
    assert list(log) == [] and list(reversed(log)) == []
    assert log == [] and log == AccessLog()
    assert log[:] == []
    for i in (0, -1):
        with pytest.raises(IndexError):
            log[i]
    assert log.pages_written(0.0, {"anyone"}) == set()


def test_actor_names_and_flags_round_trip() -> None:
    log = AccessLog()
    names = [f"actor{i}" for i in range(1000)]  # index << 2 needs more than 8 bits
    for i, name in enumerate(names):
        log.append(float(i), name, (1 << 48) - 1 - i, i, bool(i & 1), bool(i & 2))
    log.append(1000.0, names[0], 0, 0, False, False)
    assert [r.actor for r in log] == [*names, names[0]]
    assert log[999] == AccessRecord(999.0, "actor999", (1 << 48) - 1000, 999, True, True)
    assert log[998] == AccessRecord(998.0, "actor998", (1 << 48) - 999, 998, False, True)
    assert log[-1] == AccessRecord(1000.0, "actor0", 0, 0, False, False)


@settings(max_examples=200, deadline=None)
@given(records(min_length=1), st.data())
def test_pages_written_matches_brute_force(recs, data) -> None:
    log = build(recs)
    names = sorted({r.actor for r in recs})
    times = [r.time for r in recs]
    for _ in range(4):
        actors = set(data.draw(st.lists(st.sampled_from(names), max_size=4))) if names else set()
        if data.draw(st.booleans()):
            actors.add("not-an-actor")
        since = data.draw(
            st.one_of(
                st.sampled_from(times) if times else st.just(0.0),  # boundary: time == since
                st.floats(-1.0, (times[-1] if times else 0.0) + 1.0, allow_nan=False),
            )
        )
        assert log.pages_written(since, actors) == reference_pages_written(recs, since, actors)
    everyone = set(names)
    assert log.pages_written(float("-inf"), everyone) == reference_pages_written(
        recs, float("-inf"), everyone
    )
    assert log.pages_written(float("-inf"), {"nobody", "\x00"}) == set()
    assert log.pages_written(float("-inf"), set()) == set()


def test_pages_written_by_example() -> None:
    log = AccessLog()
    log.append(1.0, "its", 0x1000, 8, True, True)  # before ``since``
    log.append(2.0, "its", 0x2FFC, 8, True, True)  # straddles pages 2 and 3
    log.append(2.0, "its", 0x5000, 0x3000, True, True)  # pages 5, 6, 7
    log.append(2.0, "its", 0x9000, 8, True, False)  # denied
    log.append(3.0, "its", 0xA000, 8, False, True)  # a read
    log.append(3.0, "vmm", 0xB000, 8, True, True)  # someone else
    log.append(4.0, "its", 0xFFFF_FFFF_F000, 0x1000, True, True)  # the last page
    assert log.pages_written(2.0, {"its"}) == {2, 3, 5, 6, 7, 0xFFFF_FFFF_F}
    assert log.pages_written(1.0, {"its"}) == {1, 2, 3, 5, 6, 7, 0xFFFF_FFFF_F}
    assert log.pages_written(2.0, {"its", "vmm"}) == {2, 3, 5, 6, 7, 0xB, 0xFFFF_FFFF_F}
    assert log.pages_written(3.5, {"its", "vmm"}) == {0xFFFF_FFFF_F}
    assert log.pages_written(4.5, {"its", "vmm"}) == set()
    assert log.pages_written(0.0, {"ghost"}) == set()


def test_zero_length_write_dirties_no_page() -> None:
    log = AccessLog()
    log.append(1.0, "its", 0x1000, 0, True, True)
    log.append(1.0, "its", 0x2008, 0, True, True)
    assert log.pages_written(0.0, {"its"}) == set()
