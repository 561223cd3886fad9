"""The stream sources: deterministic, colliding, and what they contain."""

from __future__ import annotations

from collections import Counter

import pytest

from sim.its.commands import MAPD, CommandDecodeError, decode
from sim.oracle.stream import CODE_BASE, CODE_SIZE, NO_MEMSLOT
from sim.oracle.streams import (
    MALFORMED,
    Layout,
    kut_streams,
    pkvm_streams,
    random_streams,
    real_guest_streams,
)


def _itts(stream):
    return [c.itt_addr for c in decoded(stream) if isinstance(c, MAPD)]


def decoded(stream):
    out = []
    for h in stream.commands:
        try:
            out.append(decode(bytes.fromhex(h)))
        except CommandDecodeError:
            out.append(None)
    return out


@pytest.fixture(scope="module")
def rand():
    return random_streams(seed=11, count=300)


def test_random_streams_are_deterministic_per_seed(rand):
    assert random_streams(seed=11, count=300) == rand
    other = random_streams(seed=12, count=300)
    assert [s.commands for s in other] != [s.commands for s in rand]
    assert len({s.name for s in rand}) == 300


def test_random_streams_collide_on_few_ids(rand):
    for s in rand[:50]:
        devs = Counter(getattr(c, "device_id", None) for c in decoded(s) if c is not None)
        devs.pop(None, None)
        # at most a handful of DeviceIDs, and one of them used again and again
        assert len(devs) <= 4 and max(devs.values()) >= 2


def test_random_streams_cover_every_kind_of_command_and_error(rand):
    names, unknown = Counter(), 0
    bad_dev = bad_ev = bad_icid = bad_lpi = movall = 0
    remaps = sum(remapped_live(s) for s in rand)
    for s in rand:
        sizes = {}
        for c in decoded(s):
            if c is None:
                unknown += 1
                continue
            names[type(c).__name__ + ("0" if getattr(c, "valid", True) is False else "")] += 1
            if isinstance(c, MAPD):
                sizes[c.device_id] = c.size
            bad_dev += getattr(c, "device_id", 0) >= 1 << 16
            bad_icid += getattr(c, "icid", 0) >= 8192
            bad_lpi += getattr(c, "intid", 8192) < 8192
            ev = getattr(c, "event_id", None)
            if ev is not None and getattr(c, "device_id", None) in sizes:
                bad_ev += ev >= 1 << (sizes[c.device_id] + 1)
            movall += type(c).__name__ == "MOVALL"
    for name in ("MAPD", "MAPD0", "MAPC", "MAPC0", "MAPTI", "MAPI", "MOVI", "DISCARD"):
        assert names[name] > 0, name
    for name in ("INT", "CLEAR", "INV", "INVALL", "SYNC", "MOVALL"):
        assert names[name] > 0, name
    assert unknown and bad_dev and bad_ev and bad_icid and bad_lpi and movall
    assert remaps


def remapped_live(stream) -> bool:
    """A MAPD V=1 on a device that has ITEs from an earlier MAPD (a remap over a live ITT)."""
    mapped, live = set(), set()
    for c in decoded(stream):
        name = type(c).__name__
        if name == "MAPD" and c.valid:
            if c.device_id in live:
                return True
            mapped.add(c.device_id)
        elif name == "MAPTI" and c.device_id in mapped:
            live.add(c.device_id)
    return False


def test_random_streams_place_itts_over_other_tables_and_restore_malformed_ones(rand):
    over = Counter()
    for s in rand:
        lay = Layout(nr_vcpus=s.nr_vcpus)
        itts = [c.itt_addr for c in decoded(s) if isinstance(c, MAPD) and c.valid]
        pend = {lay.pend(v) + 0x400 for v in range(s.nr_vcpus)}
        over["pend"] += any(a in pend for a in itts)
        over["ct"] += lay.ct in itts
        over["itt"] += len(itts) != len(set(itts))
        over["outside"] += NO_MEMSLOT in itts
    assert all(over[k] for k in ("pend", "ct", "itt", "outside")), over
    # nothing in the VMM's code memslot, which KVM reaches and the model does not have
    assert not any(CODE_BASE <= a < CODE_BASE + CODE_SIZE for s in rand for a in _itts(s))
    kinds = Counter(rs.name for s in rand for rs in s.restores)
    assert set(MALFORMED) <= set(kinds) and kinds["migrate"] > 50
    # some streams run the queue round: more commands than a 4 KiB queue has slots
    assert any(len(s.commands) > 128 and s.regs[-3].value & 0xFF == 0 for s in rand)
    assert any(rs.commands for s in rand for rs in s.restores)


def test_real_guest_streams_keep_the_captured_commands_and_attributes():
    streams = real_guest_streams()
    assert [s.name for s in streams] == [
        "linux-6.1.192-qemu-virt-flat",
        "linux-6.1.192-qemu-virt-2level",
        "linux-7.3.4-qemu-virt-flat",
        "linux-7.3.4-qemu-virt-2level",
    ]
    assert [len(s.commands) for s in streams] == [79, 79, 76, 76]
    regs = {w.reg: w.value for w in streams[1].regs}
    # the real guest's BASER0 0xf907000042590600: attributes kept, table moved
    assert regs["GITS_BASER0"] == 0xF907_0000_4010_0600  # two-level, one page at 0x40100000
    assert regs["GITS_CBASER"] == 0xB800_0000_4019_040F  # 0xb80000004258040f, queue moved
    flat = {w.reg: w.value for w in streams[0].regs}
    assert flat["GITS_BASER0"] == 0xB907_0000_4010_0607  # flat: 8 pages of 64 KiB
    itts = {c.itt_addr for c in decoded(streams[2]) if isinstance(c, MAPD)}
    # 7.3: all four ITTs in one page at +0x000, +0x100, +0x200, +0x300
    assert itts == {Layout().itt_area + off for off in (0, 0x100, 0x200, 0x300)}
    assert all(Layout().base <= a < Layout().base + (16 << 20) for a in itts)


def test_kut_and_pkvm_streams():
    kut = {s.name: s for s in kut_streams()}
    assert set(kut) == {
        "kut-its-trigger",
        "kut-its-migration",
        "kut-its-migrate-unmapped-collection",
        "kut-its-pending-migration",
    }
    assert len(kut["kut-its-pending-migration"].commands) == 3 + 256 + 2
    assert kut["kut-its-migrate-unmapped-collection"].restores[0].commands
    pk = {s.name: s for s in pkvm_streams()}
    assert all(s.protected for s in pk.values())
    assert pk["pkvm-share-none"].share == ()
    pages = lambda s: sum(n for _, n in s.share)  # noqa: E731
    assert pages(pk["pkvm-share-all"]) > pages(pk["pkvm-share-no-itt"]) > 0
