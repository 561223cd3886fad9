"""LabelMap and Label: simulator ground truth on guest bytes."""

from __future__ import annotations

from sim.memory.labels import FREE, Label, LabelKind, LabelMap

ITT5 = Label(LabelKind.ITT, "dev5")
SECRET = Label(LabelKind.SECRET, "key")
CMDQ = Label(LabelKind.CMDQ)


def test_label_str() -> None:
    assert str(ITT5) == "its-itt:dev5"
    assert str(SECRET) == "secret:key"
    assert str(CMDQ) == "its-cmdq"
    assert str(FREE) == "free"
    assert Label(LabelKind.FREE) == FREE
    assert Label(LabelKind.ITT, "a") != Label(LabelKind.ITT, "b")


def test_unlabelled_is_free() -> None:
    labels = LabelMap()
    assert labels.at(0) == FREE
    assert labels.at(0x41000000) == FREE
    assert list(labels.labelled()) == []
    assert list(labels.runs(0x1000, 0x100)) == [(0x1000, 0x1100, FREE)]


def test_set_and_at() -> None:
    labels = LabelMap()
    labels.set(0x1000, 0x40, ITT5)
    assert labels.at(0x0FFF) == FREE
    assert labels.at(0x1000) == ITT5
    assert labels.at(0x103F) == ITT5
    assert labels.at(0x1040) == FREE
    assert list(labels.labelled()) == [(0x1000, 0x1040, ITT5)]


def test_overlapping_set_overrides_and_splits() -> None:
    labels = LabelMap()
    labels.set(0x1000, 0x1000, SECRET)
    labels.set(0x1400, 0x100, CMDQ)
    assert list(labels.labelled()) == [
        (0x1000, 0x1400, SECRET),
        (0x1400, 0x1500, CMDQ),
        (0x1500, 0x2000, SECRET),
    ]
    assert list(labels.runs(0x0F00, 0x1200)) == [
        (0x0F00, 0x1000, FREE),
        (0x1000, 0x1400, SECRET),
        (0x1400, 0x1500, CMDQ),
        (0x1500, 0x2000, SECRET),
        (0x2000, 0x2100, FREE),
    ]


def test_clear_middle_and_all() -> None:
    labels = LabelMap()
    labels.set(0, 300, ITT5)
    labels.clear(100, 100)
    assert labels.at(99) == ITT5
    assert labels.at(100) == FREE
    assert labels.at(199) == FREE
    assert labels.at(200) == ITT5
    assert list(labels.labelled()) == [(0, 100, ITT5), (200, 300, ITT5)]
    labels.clear(0, 300)
    assert list(labels.labelled()) == []


def test_adjacent_same_label_merges_different_names_do_not() -> None:
    labels = LabelMap()
    labels.set(0, 8, ITT5)
    labels.set(8, 8, ITT5)
    labels.set(16, 8, Label(LabelKind.ITT, "dev6"))
    assert list(labels.labelled()) == [
        (0, 16, ITT5),
        (16, 24, Label(LabelKind.ITT, "dev6")),
    ]


def test_labelled_in_address_order_regardless_of_set_order() -> None:
    labels = LabelMap()
    labels.set(0x3000, 0x10, CMDQ)
    labels.set(0x1000, 0x10, SECRET)
    labels.set(0x2000, 0x10, ITT5)
    assert [s for s, _, _ in labels.labelled()] == [0x1000, 0x2000, 0x3000]


def test_zero_length_set_is_noop() -> None:
    labels = LabelMap()
    labels.set(0x100, 0, SECRET)
    assert list(labels.labelled()) == []
    assert list(labels.runs(0x100, 0)) == []
