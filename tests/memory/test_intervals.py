"""IntervalMap against a naive per-point reference over a small domain."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from sim.memory.intervals import IntervalMap

# Points outside [LO, HI) are never assigned in the stateful test, so they must stay default.
LO, HI = 0, 200
DOMAIN = range(LO - 5, HI + 5)
DEFAULT = "d"
VALUES = st.sampled_from([DEFAULT, "a", "b", "c"])
POINTS = st.integers(LO, HI)


def reference_runs(ref: dict[int, str], start: int, end: int) -> list[tuple[int, int, str]]:
    """Maximal runs of the per-point reference over ``[start, end)``."""
    out: list[tuple[int, int, str]] = []
    for p in range(start, end):
        v = ref.get(p, DEFAULT)
        if out and out[-1][2] == v and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1, v)
        else:
            out.append((p, p + 1, v))
    return out


def check_against_reference(m: IntervalMap[str], ref: dict[int, str]) -> None:
    for p in DOMAIN:
        assert m[p] == ref.get(p, DEFAULT), p
    # Far away points (beyond any breakpoint) are default.
    assert m[-(10**9)] == DEFAULT
    assert m[10**9] == DEFAULT
    # The whole domain as one runs() query.
    whole = list(m.runs(DOMAIN.start, DOMAIN.stop))
    assert whole == reference_runs(ref, DOMAIN.start, DOMAIN.stop)
    # intervals(): exactly the non-default runs, in order.
    expected_intervals = [
        r for r in reference_runs(ref, DOMAIN.start, DOMAIN.stop) if r[2] != DEFAULT
    ]
    assert list(m.intervals()) == expected_intervals
    # Canonical: one breakpoint per value change and no more.
    changes = sum(
        1
        for p in range(DOMAIN.start + 1, DOMAIN.stop)
        if ref.get(p, DEFAULT) != ref.get(p - 1, DEFAULT)
    )
    assert len(m) == changes


class IntervalMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.map: IntervalMap[str] = IntervalMap(DEFAULT)
        self.ref: dict[int, str] = {}

    @rule(a=POINTS, b=POINTS, value=VALUES)
    def assign(self, a: int, b: int, value: str) -> None:
        self.map.assign(a, b, value)  # b <= a is a no-op
        for p in range(a, b):
            self.ref[p] = value

    @rule(a=POINTS, b=POINTS)
    def query_runs(self, a: int, b: int) -> None:
        got = list(self.map.runs(a, b))
        if b <= a:
            assert got == []
            return
        assert got == reference_runs(self.ref, a, b)
        # Covers exactly [a, b), contiguous, maximal.
        assert got[0][0] == a
        assert got[-1][1] == b
        for (_s0, e0, v0), (s1, _e1, v1) in pairwise(got):
            assert e0 == s1
            assert v0 != v1
        assert all(s < e for s, e, _ in got)

    @invariant()
    def matches_reference(self) -> None:
        check_against_reference(self.map, self.ref)

    @invariant()
    def equals_rebuilt_map(self) -> None:
        # A map built point by point, in reverse, represents the same function: equal.
        other: IntervalMap[str] = IntervalMap(DEFAULT)
        for p in sorted(self.ref, reverse=True):
            other.assign(p, p + 1, self.ref[p])
        assert other == self.map
        assert self.map == other


TestIntervalMachine = IntervalMachine.TestCase
TestIntervalMachine.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_getitem_default_and_simple_assign() -> None:
    m: IntervalMap[int] = IntervalMap(0)
    assert m[5] == 0
    m.assign(10, 20, 7)
    assert [m[p] for p in (9, 10, 19, 20)] == [0, 7, 7, 0]
    assert list(m.runs(0, 30)) == [(0, 10, 0), (10, 20, 7), (20, 30, 0)]
    assert list(m.intervals()) == [(10, 20, 7)]


def test_empty_and_reversed_assign_is_noop() -> None:
    m: IntervalMap[int] = IntervalMap(0)
    m.assign(10, 10, 1)
    m.assign(20, 10, 1)
    assert len(m) == 0
    assert m == IntervalMap(0)
    assert list(m.runs(5, 5)) == []
    assert list(m.runs(6, 5)) == []


def test_adjacent_equal_assigns_merge() -> None:
    m: IntervalMap[str] = IntervalMap(DEFAULT)
    m.assign(0, 10, "a")
    m.assign(10, 20, "a")
    assert list(m.intervals()) == [(0, 20, "a")]
    assert len(m) == 2
    # Overwriting the middle with the same value changes nothing.
    m.assign(5, 15, "a")
    assert list(m.intervals()) == [(0, 20, "a")]
    # Resetting to default removes all breakpoints.
    m.assign(0, 20, DEFAULT)
    assert len(m) == 0
    assert list(m.intervals()) == []


def test_split_and_rejoin() -> None:
    m: IntervalMap[str] = IntervalMap(DEFAULT)
    m.assign(0, 30, "a")
    m.assign(10, 20, "b")
    assert list(m.intervals()) == [(0, 10, "a"), (10, 20, "b"), (20, 30, "a")]
    m.assign(10, 20, "a")
    assert list(m.intervals()) == [(0, 30, "a")]


def test_different_operation_orders_compare_equal() -> None:
    a: IntervalMap[str] = IntervalMap(DEFAULT)
    a.assign(0, 100, "x")
    a.assign(40, 60, "y")
    a.assign(90, 120, DEFAULT)

    b: IntervalMap[str] = IntervalMap(DEFAULT)
    b.assign(40, 60, "y")
    b.assign(0, 40, "x")
    b.assign(60, 70, "x")
    b.assign(70, 90, "x")

    c: IntervalMap[str] = IntervalMap(DEFAULT)
    for p in range(89, -1, -1):
        c.assign(p, p + 1, "y" if 40 <= p < 60 else "x")

    assert a == b == c
    d: IntervalMap[str] = IntervalMap(DEFAULT)
    d.assign(0, 90, "x")
    assert d != a


def test_different_defaults_not_equal() -> None:
    assert IntervalMap("a") != IntervalMap("b")
    assert IntervalMap("a").__eq__(object()) is NotImplemented


def test_runs_start_inside_a_run_and_before_first_key() -> None:
    m: IntervalMap[str] = IntervalMap(DEFAULT)
    m.assign(10, 20, "a")
    m.assign(30, 40, "b")
    assert list(m.runs(15, 35)) == [(15, 20, "a"), (20, 30, DEFAULT), (30, 35, "b")]
    assert list(m.runs(-5, 5)) == [(-5, 5, DEFAULT)]
    assert list(m.runs(45, 50)) == [(45, 50, DEFAULT)]
    assert list(m.runs(12, 13)) == [(12, 13, "a")]


OPS = st.lists(st.tuples(POINTS, POINTS, VALUES), max_size=30)


@settings(max_examples=100, deadline=None)
@given(ops=OPS, data=st.data())
def test_same_function_different_order_equal(ops: list[tuple[int, int, str]], data) -> None:
    """Replaying the final function's runs in any order yields an equal map."""
    a: IntervalMap[str] = IntervalMap(DEFAULT)
    ref: dict[int, str] = {}
    for s, e, v in ops:
        a.assign(s, e, v)
        for p in range(s, e):
            ref[p] = v
    check_against_reference(a, ref)
    pieces = reference_runs(ref, LO, HI)
    # Split runs further at random points so b is built from different, smaller pieces.
    split: list[tuple[int, int, str]] = []
    for s, e, v in pieces:
        cut = data.draw(st.integers(s, e), label="cut")
        split += [(s, cut, v), (cut, e, v)]
    order = data.draw(st.permutations(split), label="order")
    b: IntervalMap[str] = IntervalMap(DEFAULT)
    for s, e, v in order:
        b.assign(s, e, v)
    assert a == b
    assert list(a.intervals()) == list(b.intervals())


@settings(max_examples=300, deadline=None)
@given(ops=OPS, span=st.tuples(POINTS, POINTS), data=st.data())
def test_replace_is_assigning_default_then_each_run(ops, span, data) -> None:
    """``replace(start, end, runs)`` leaves the map ``assign(start, end, default)`` and then
    each run's assign would: the same function, the same canonical breakpoints."""
    start, end = min(span), max(span)
    cuts = sorted(data.draw(st.lists(st.integers(start, end), max_size=8), label="cuts"))
    runs = [
        (s, e, data.draw(VALUES, label="value"))
        for s, e in zip(cuts[::2], cuts[1::2], strict=False)
        if s < e
    ]
    a: IntervalMap[str] = IntervalMap(DEFAULT)
    b: IntervalMap[str] = IntervalMap(DEFAULT)
    for s, e, v in ops:
        a.assign(s, e, v)
        b.assign(s, e, v)
    a.assign(start, end, DEFAULT)
    for s, e, v in runs:
        a.assign(s, e, v)
    b.replace(start, end, runs)
    assert (b._keys, b._vals) == (a._keys, a._vals)


def test_replace_refuses_runs_out_of_order_or_outside() -> None:
    m: IntervalMap[str] = IntervalMap(DEFAULT)
    for runs in ([(5, 8, "a"), (2, 4, "b")], [(0, 12, "a")], [(3, 3, "a")]):
        with pytest.raises(ValueError, match="replace: run"):
            m.replace(1, 10, runs)
    assert len(m) == 0
