"""The oracle's stream sources: each a function returning ``list[Stream]``, deterministic.

- :func:`real_guest_streams`: the two captured Linux boots (sim/data/real-guests), ITTs
  remapped into L2 RAM keeping which ITTs share a 4 KiB page and their offsets in it,
  with the GITS_BASER/CBASER attribute bits the real guest wrote; flat and two-level
  device-table variants.
- :func:`kut_streams`: the command sequences of kvm-unit-tests' arm/gic.c ITS tests
  (its-trigger, its-migration, its-migrate-unmapped-collection, its-pending-migration),
  with lib/arm64/gic-v3-its*.c's table set-up.
- :func:`random_streams`: seeded streams that collide on purpose.
- :func:`pkvm_streams`: protected VMs sharing all, some or none of the ITS pages.
- :func:`known_divergence_streams`: minimal streams for the 6.1/7.3 differences.

Every stream lays its tables out in 16 MiB of L2 RAM at 0x4000_0000 (:class:`Layout`):
property table, one pending table per vCPU, device table (flat, or level 1 plus level-2
pages), collection table, command queue, ITTs. The VMM zeroes RAM first, so ``fill``
holds only what must be non-zero (level-1 entries, LPI properties, pending bits).

Simplification: a stream has no guest writes between commands, so the kvm-unit-tests
property-table and pending-bit writes the tests make between commands are made before
the first command (noted per stream).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from importlib import resources

from sim.its import regs as r
from sim.its.commands import (
    CLEAR,
    DISCARD,
    INT,
    INV,
    INVALL,
    MAPC,
    MAPD,
    MAPI,
    MAPTI,
    MOVALL,
    MOVI,
    SYNC,
    ITSCommand,
)
from sim.its.tables import CTE, DTE, ITE, l1_entry
from sim.oracle.stream import L2_RAM_BASE, NO_MEMSLOT, MemFill, RegWrite, Restore, Stream

SZ_64K = r.SZ_64K
RAM_SIZE = 16 << 20
LPI_PROP_DEFAULT = 0xA3  # priority 0xa0 | group 1 | enabled (Linux, kvm-unit-tests)
LPI_BASE = r.GIC_LPI_OFFSET

# Linux's GICR_PROPBASER/PENDBASER attributes: InnerShareable | RaWaWb
# (irq-gic-v3-its.c: its_cpu_init_lpis); PROPBASER IDbits = LPI_NRBITS - 1 = 15.
LINUX_RDIST_ATTRS = 1 << 10 | 7 << 7
# KVM's INITIAL_BASER_VALUE (vgic-its.c): inner RaWb, outer SameAsInner, InnerShareable,
# 64K pages; what kvm-unit-tests reads back and ORs its table address into.
KVM_INITIAL_BASER = 3 << 59 | 1 << 10 | r.GITS_BASER_PAGE_SIZE_64K
BASER_ADDR_SIZE_MASK = r.genmask(47, 12) | 0xFF | r.GITS_BASER_INDIRECT
CBASER_ADDR_SIZE_MASK = r.genmask(51, 12) | 0xFF


def _hex(cmd: ITSCommand | bytes) -> str:
    return (cmd if isinstance(cmd, bytes) else cmd.encode()).hex()


def _u64(value: int) -> str:
    return value.to_bytes(8, "little").hex()


@dataclass(frozen=True)
class Layout:
    """Where a stream's tables live in L2 RAM (all 64 KiB aligned)."""

    nr_vcpus: int = 2
    two_level: bool = False
    l1_indices: tuple[int, ...] = (0,)  # level-1 entries made valid (two-level only)
    dt_pages: int = 8  # flat: 8 x 64 KiB = every 16-bit DeviceID
    ct_pages: int = 1  # 8192 collections
    cmdq_size: int = SZ_64K
    base: int = L2_RAM_BASE

    @property
    def prop(self) -> int:
        return self.base

    def pend(self, vcpu: int) -> int:
        return self.base + SZ_64K * (1 + vcpu)

    @property
    def dt(self) -> int:
        return self.base + 0x10_0000

    def l2_page(self, index: int) -> int:
        return self.base + 0x80_0000 + index * SZ_64K

    @property
    def ct(self) -> int:
        return self.base + 0x18_0000

    @property
    def cmdq(self) -> int:
        return self.base + 0x19_0000

    @property
    def itt_area(self) -> int:
        return self.base + 0x20_0000

    def itt(self, k: int) -> int:
        """The ``k``-th private ITT slot: 64 KiB each, room for 13 EventID bits."""
        return self.itt_area + k * SZ_64K

    def dte_addr(self, device_id: int) -> int | None:
        if not self.two_level:
            return self.dt + device_id * 8
        index = device_id // (SZ_64K // 8)
        if index not in self.l1_indices:
            return None
        return self.l2_page(index) + (device_id % (SZ_64K // 8)) * 8

    def baser0(self, attrs: int) -> int:
        if self.two_level:
            return attrs | self.dt | r.GITS_BASER_INDIRECT | r.GITS_BASER_VALID
        return attrs | self.dt | (self.dt_pages - 1) | r.GITS_BASER_VALID

    def baser1(self, attrs: int) -> int:
        return attrs | self.ct | (self.ct_pages - 1) | r.GITS_BASER_VALID

    def cbaser(self, attrs: int) -> int:
        return attrs | self.cmdq | (self.cmdq_size // r.SZ_4K - 1) | r.GITS_CBASER_VALID

    def l1_fill(self) -> tuple[MemFill, ...]:
        if not self.two_level:
            return ()
        return tuple(
            MemFill(gpa=self.dt + 8 * i, data=_u64(l1_entry(self.l2_page(i))))
            for i in self.l1_indices
        )

    def its_pages(self) -> list[tuple[int, int]]:
        """(gpa, 4 KiB pages) of every table the ITS uses, ITTs excepted."""
        spans = [(self.prop, 16)] + [(self.pend(v), 16) for v in range(self.nr_vcpus)]
        if self.two_level:
            spans.append((self.dt, 16))
            spans += [(self.l2_page(i), 16) for i in self.l1_indices]
        else:
            spans.append((self.dt, 16 * self.dt_pages))
        spans += [(self.ct, 16 * self.ct_pages), (self.cmdq, self.cmdq_size // r.SZ_4K)]
        return spans


@dataclass
class _Builder:
    """One stream under construction."""

    name: str
    layout: Layout
    fill: list[MemFill] = field(default_factory=list)
    regs: list[RegWrite] = field(default_factory=list)
    cmds: list[str] = field(default_factory=list)

    def reg(self, name: str, value: int) -> None:
        self.regs.append(RegWrite(reg=name, value=value))

    def write(self, gpa: int, data: bytes) -> None:
        self.fill.append(MemFill(gpa=gpa, data=data.hex()))

    def cmd(self, *cmds: ITSCommand | bytes) -> None:
        self.cmds.extend(_hex(c) for c in cmds)

    def linux_setup(self, *, baser_attrs: int, cbaser_attrs: int, enable_lpis=None) -> None:
        """Register writes as Linux makes them: redistributors, then the ITS."""
        lay = self.layout
        for v in range(lay.nr_vcpus):
            self.reg(f"GICR{v}_PROPBASER", lay.prop | LINUX_RDIST_ATTRS | 15)
            self.reg(f"GICR{v}_PENDBASER", lay.pend(v) | LINUX_RDIST_ATTRS)
        for v in range(lay.nr_vcpus) if enable_lpis is None else enable_lpis:
            self.reg(f"GICR{v}_CTLR", 1)
        self.reg("GITS_BASER0", lay.baser0(baser_attrs))
        self.reg("GITS_BASER1", lay.baser1(baser_attrs))
        self.reg("GITS_CBASER", lay.cbaser(cbaser_attrs))
        self.reg("GITS_CWRITER", 0)
        self.reg("GITS_CTLR", 1)

    def stream(self, **kw) -> Stream:
        return Stream(
            name=self.name,
            nr_vcpus=self.layout.nr_vcpus,
            ram_base=self.layout.base,
            ram_size=RAM_SIZE,
            fill=tuple(self.layout.l1_fill()) + tuple(self.fill),
            regs=tuple(self.regs),
            commands=tuple(self.cmds),
            **kw,
        )


# ---- the real Linux boots -------------------------------------------------------------

REAL_GUESTS = ("linux-6.1.192-qemu-virt", "linux-7.3.4-qemu-virt")


def _real_guest(name: str) -> tuple[list[dict], dict]:
    pkg = resources.files("sim") / "data" / "real-guests"
    lines = (pkg / f"{name}.cmds.jsonl").read_text().splitlines()
    meta = json.loads((pkg / f"{name}.meta.json").read_text())
    return [json.loads(line) for line in lines if line.strip()], meta


def _remap_itts(cmds: list[dict], lay: Layout) -> dict[int, int]:
    """Captured ITT address -> L2 address: each captured 4 KiB page gets its own page
    in the ITT area, in order of first use; offsets within the page are kept."""
    pages: dict[int, int] = {}
    remap = {}
    for c in cmds:
        if c["cmd"] == "MAPD":
            addr = int(c["ITT_addr"], 16)
            page = pages.setdefault(addr >> 12, lay.itt_area + 0x1000 * len(pages))
            remap[addr] = page + (addr & 0xFFF)
    return remap


def real_guest_streams() -> list[Stream]:
    """Each captured boot, flat and two-level, as a 2-vCPU VM with 16 MiB of RAM."""
    out = []
    for name in REAL_GUESTS:
        cmds, meta = _real_guest(name)
        baser_attrs = int(meta["baser"]["0x100"], 16) & ~BASER_ADDR_SIZE_MASK
        cbaser_attrs = int(meta["cbaser"], 16) & ~CBASER_ADDR_SIZE_MASK
        for two_level in (False, True):
            lay = Layout(nr_vcpus=2, two_level=two_level)
            remap = _remap_itts(cmds, lay)
            b = _Builder(f"{name}-{'2level' if two_level else 'flat'}", lay)
            b.write(lay.prop, bytes([LPI_PROP_DEFAULT]) * (SZ_64K - LPI_BASE))
            b.linux_setup(baser_attrs=baser_attrs, cbaser_attrs=cbaser_attrs)
            for c in cmds:
                dw = [int(x, 16) for x in c["raw"]]
                if c["cmd"] == "MAPD":
                    itt = remap[int(c["ITT_addr"], 16)]
                    dw[2] = (dw[2] & ~r.genmask(51, 8)) | (itt & r.genmask(51, 8))
                b.cmd(b"".join(x.to_bytes(8, "little") for x in dw))
            out.append(b.stream(restores=(Restore(name="migrate"),)))
    return out


# ---- kvm-unit-tests ---------------------------------------------------------------------


def _kut_builder(name: str, *, enable_lpis=None) -> _Builder:
    """lib/arm64/gic-v3-its.c: its_init (BASERs = KVM's initial value | table | Valid,
    one 64 KiB page each; CBASER 64 KiB; CWRITER 0), then its_enable_defaults:
    gicv3_lpi_alloc_tables (PROPBASER = table | 13, PENDBASER = table), EnableLPIs on
    every online CPU, GITS_CTLR.Enabled. 4 vCPUs (the tests' its_prerequisites(4))."""
    lay = Layout(nr_vcpus=4, dt_pages=1)
    b = _Builder(name, lay)
    # readq() of a bare ITS's BASER<n> also returns Type [58:56] and Entry_Size [52:48]
    b.reg("GITS_BASER0", KVM_INITIAL_BASER | 1 << 56 | 7 << 48 | lay.baser0(0))
    b.reg("GITS_BASER1", KVM_INITIAL_BASER | 4 << 56 | 7 << 48 | lay.baser1(0))
    b.reg("GITS_CBASER", lay.cbaser(0))
    b.reg("GITS_CWRITER", 0)
    for v in range(lay.nr_vcpus):
        b.reg(f"GICR{v}_PROPBASER", lay.prop | 13)
        b.reg(f"GICR{v}_PENDBASER", lay.pend(v))
    for v in range(lay.nr_vcpus) if enable_lpis is None else enable_lpis:
        b.reg(f"GICR{v}_CTLR", 1)
    b.reg("GITS_CTLR", 1)
    return b


def _kut_mapd(b: _Builder, dev: int, k: int, valid: bool = True) -> MAPD:
    # its_build_mapd_cmd encodes Size = nr_ites - 1: 8 ITEs give 8 EventID bits.
    return MAPD(dev, 8 - 1, b.layout.itt(k), valid)


def _kut_setup1(b: _Builder) -> None:
    """arm/gic.c its_setup1: dev2 ev20 -> LPI 8195 on col3 (PE3); dev7 ev255 -> 8196 on
    col2 (PE2)."""
    b.write(b.layout.prop + 8195 - LPI_BASE, bytes([LPI_PROP_DEFAULT, LPI_PROP_DEFAULT]))
    b.cmd(_kut_mapd(b, 2, 0), _kut_mapd(b, 7, 1))
    b.cmd(MAPC(3, 3, True), MAPC(2, 2, True), INVALL(2), INVALL(3))
    b.cmd(MAPTI(2, 20, 8195, 3), MAPTI(7, 255, 8196, 2))


def kut_streams() -> list[Stream]:
    """The ITS tests of kvm-unit-tests arm/gic.c as streams."""
    out = []
    b = _kut_builder("kut-its-trigger")
    _kut_setup1(b)
    b.cmd(INT(2, 20), INT(7, 255))
    b.cmd(INV(2, 20), INT(2, 20))  # "inv/invall" (the property writes are not replayed)
    b.cmd(INT(2, 20), INVALL(3), INT(2, 20))
    b.cmd(_kut_mapd(b, 2, 0, valid=False), INT(2, 20))  # "mapd valid=false"
    out.append(b.stream())

    b = _kut_builder("kut-its-migration")
    _kut_setup1(b)
    after = (INT(2, 20), INT(7, 255))
    out.append(b.stream(restores=(Restore(name="migrate", commands=tuple(map(_hex, after))),)))

    b = _kut_builder("kut-its-migrate-unmapped-collection")
    _kut_setup1(b)
    b.write(b.layout.prop, bytes([LPI_PROP_DEFAULT]))
    b.cmd(MAPTI(2, 0, 8192, 0))  # MAPTI with collection 0 (PE0) unmapped
    after = (MAPC(0, 0, True), INVALL(0), INT(7, 255), INT(2, 0))
    out.append(b.stream(restores=(Restore(name="migrate", commands=tuple(map(_hex, after))),)))

    # its-pending-migration: pe0 = nr_cpus - 1, pe1 = nr_cpus - 2; LPIs disabled at
    # both redistributors; 256 events interleaved. The test sets each pending bit right
    # after its MAPTI and re-enables LPIs (PTZ clear) after; here the bits are set first
    # and the two redistributors stay disabled, so MAPTI consumes them.
    pe0, pe1 = 3, 2
    b = _kut_builder("kut-its-pending-migration", enable_lpis=(0, 1))
    b.write(b.layout.prop, bytes([LPI_PROP_DEFAULT]) * 256)
    pend = {pe0: bytearray(32), pe1: bytearray(32)}
    for i in range(256):
        vcpu = pe0 if i % 2 else pe1
        pend[vcpu][(LPI_BASE + i) // 8 - LPI_BASE // 8] |= 1 << (i % 8)
    for vcpu, bits in pend.items():
        b.write(b.layout.pend(vcpu) + LPI_BASE // 8, bytes(bits))
    b.cmd(_kut_mapd(b, 2, 0), MAPC(pe0, pe0, True), MAPC(pe1, pe1, True))
    for i in range(256):
        b.cmd(MAPTI(2, i, LPI_BASE + i, pe0 if i % 2 else pe1))
    b.cmd(INVALL(pe0), INVALL(pe1))
    out.append(b.stream(restores=(Restore(name="migrate"),)))
    return out


# ---- seeded random streams ---------------------------------------------------------------

UNKNOWN_OPCODES = (0x00, 0x02, 0x06, 0x07, 0x10, 0x20, 0x21, 0x2A, 0xFF)
MALFORMED = (
    "garbage-unused-dte",
    "garbage-unused-ite",
    "garbage-unused-cte",
    "dte-outside-ram",
    "cte-bad-target",
    "dte-next-past-table",
    "ite-bad-lpi",
    "ite-next-past-itt",
    "l1-cleared",
    "dte-size-32",
)


def _raw(opcode: int, dw0_hi: int, dw1: int, dw2: int, dw3: int) -> bytes:
    return b"".join(x.to_bytes(8, "little") for x in (dw0_hi << 32 | opcode, dw1, dw2, dw3))


class _Random:
    """One random stream: small pools of IDs so commands hit the same state."""

    def __init__(self, seed: int, index: int) -> None:
        rng = self.rng = random.Random(f"oracle-random:{seed}:{index}")
        nr_vcpus = rng.choice((1, 2, 2, 3, 4))
        two_level = rng.random() < 0.35
        l1 = (0,) + ((1,) if rng.random() < 0.6 else ()) + ((7,) if rng.random() < 0.3 else ())
        small_queue = rng.random() < 0.15
        self.lay = Layout(
            nr_vcpus=nr_vcpus,
            two_level=two_level,
            l1_indices=l1,
            dt_pages=rng.choice((1, 8, 8)),
            cmdq_size=r.SZ_4K if small_queue else SZ_64K,
        )
        self.b = _Builder(f"random-{seed}-{index:04d}", self.lay)
        devs = [0, 1, 2, 3, 7, 31, 8197, 65535, 65536, 1 << 20]
        self.devices = rng.sample(devs[:6], 2) + rng.sample(devs[6:], 1)
        self.events = [0, 1, 2, 3, 255, 1 << 16]
        self.lpis = [8192, 8193, 8194, 8195, 8200, 8191, 0, 1 << 16]
        self.icids = [0, 1, 2, 3, 8191, 8192, 0xFFFF]
        self.targets = [*range(nr_vcpus + 1), 0xFFFF]
        self.itt_of: dict[int, int] = {}
        self.size_of: dict[int, int] = {}
        self.long = small_queue and rng.random() < 0.7

    def pick(self, pool, hot=0.8):
        """Mostly one of the first few (to collide), sometimes any."""
        rng = self.rng
        return pool[rng.randrange(min(3, len(pool)))] if rng.random() < hot else rng.choice(pool)

    def itt_for(self, dev: int) -> int:
        rng, lay = self.rng, self.lay
        roll = rng.random()
        if roll < 0.06:
            return lay.pend(rng.randrange(lay.nr_vcpus)) + 0x400  # over a pending table
        if roll < 0.10:
            return lay.ct  # over the collection table
        if roll < 0.16 and self.itt_of:
            return rng.choice(list(self.itt_of.values()))  # over another ITT
        if roll < 0.18:
            return lay.dt + 0x100  # over the device table
        if roll < 0.20:
            return NO_MEMSLOT  # outside guest memory
        return lay.itt(self.devices.index(dev) if dev in self.devices else 3)

    def command(self) -> ITSCommand | bytes:
        rng = self.rng
        dev, ev = self.pick(self.devices), self.pick(self.events)
        icid, lpi = self.pick(self.icids), self.pick(self.lpis)
        kind = rng.choices(
            (
                "MAPD", "MAPD0", "MAPC", "MAPC0", "MAPTI", "MAPI", "MOVI", "DISCARD",
                "INT", "CLEAR", "INV", "INVALL", "SYNC", "MOVALL", "unknown",
            ),
            weights=(6, 2, 4, 2, 12, 2, 4, 4, 5, 2, 3, 2, 2, 3, 2),
        )[0]  # fmt: skip
        if kind == "MAPD":
            size = rng.choice((0, 1, 2, 3, 7)) if rng.random() < 0.9 else rng.choice((15, 16, 31))
            itt = self.itt_for(dev)
            self.itt_of[dev], self.size_of[dev] = itt, size
            return MAPD(dev, size, itt, True)
        if kind == "MAPD0":
            return MAPD(dev, self.size_of.get(dev, 0), self.itt_of.get(dev, 0), False)
        if kind == "MAPC":
            return MAPC(icid, self.pick(self.targets, 0.9), True)
        if kind == "MAPC0":
            return MAPC(icid, self.pick(self.targets, 0.7), False)
        if kind == "MAPTI":
            return MAPTI(dev, ev, lpi, icid)
        if kind == "MAPI":
            return MAPI(dev, self.pick([8192, 8193, 8194, 3]), icid)
        if kind == "MOVI":
            return MOVI(dev, ev, icid)
        if kind == "SYNC":
            return SYNC(self.pick(self.targets))
        if kind == "MOVALL":
            return MOVALL(self.pick(self.targets), self.pick(self.targets))
        if kind == "INVALL":
            return INVALL(icid)
        if kind == "unknown":
            op = rng.choice(UNKNOWN_OPCODES)
            return _raw(op, dev, rng.getrandbits(64), rng.getrandbits(64), 0)
        cls = {"DISCARD": DISCARD, "INT": INT, "CLEAR": CLEAR, "INV": INV}[kind]
        return cls(dev, ev)

    def build(self) -> Stream:
        rng, lay, b = self.rng, self.lay, self.b
        # LPI properties (mostly enabled) and a few pending bits the guest left set.
        props = bytes(
            rng.choice((LPI_PROP_DEFAULT, LPI_PROP_DEFAULT, 0xA2, 0x53)) for _ in range(16)
        )
        b.write(lay.prop, props)
        for v in range(lay.nr_vcpus):
            if rng.random() < 0.3:
                b.write(lay.pend(v) + LPI_BASE // 8, bytes([rng.getrandbits(8)]))
        disabled = {v for v in range(lay.nr_vcpus) if rng.random() < 0.1}
        b.linux_setup(
            baser_attrs=rng.choice((0, 7 << 59 | 1 << 10, KVM_INITIAL_BASER & ~0x300)),
            cbaser_attrs=rng.choice((0, 7 << 59 | 1 << 10)),
            enable_lpis=[v for v in range(lay.nr_vcpus) if v not in disabled],
        )
        # A set-up that creates state to collide with, then random commands.
        for icid in range(rng.randint(1, 3)):
            b.cmd(MAPC(icid, icid % lay.nr_vcpus, True))
        for dev in self.devices[: rng.randint(1, 3)]:
            size = rng.choice((0, 1, 2, 3))
            itt = self.itt_for(dev)
            self.itt_of[dev], self.size_of[dev] = itt, size
            b.cmd(MAPD(dev, size, itt, True))
        n = rng.randint(140, 200) if self.long else rng.randint(4, 40)
        for _ in range(n):
            b.cmd(self.command())
        restores = []
        if rng.random() < 0.6:
            restores.append(Restore(name="migrate", commands=self.restore_commands()))
        if rng.random() < 0.4:
            restores.append(self.malformed(rng.choice(MALFORMED)))
        return b.stream(
            save=rng.random() < 0.95,
            save_pending=rng.random() < 0.8,
            restores=tuple(restores),
        )

    def restore_commands(self) -> tuple[str, ...]:
        if self.rng.random() < 0.5:
            return ()
        return tuple(_hex(self.command()) for _ in range(self.rng.randint(1, 4)))

    def malformed(self, kind: str) -> Restore:
        """A restore of deliberately malformed tables: one patch over the saved image."""
        rng, lay = self.rng, self.lay
        dev = self.devices[0]
        itt = self.itt_of.get(dev, lay.itt(0))
        if not lay.base <= itt < lay.base + RAM_SIZE:
            itt = lay.itt(0)  # the ITT was placed outside RAM: patch a slot inside it
        bits = self.size_of.get(dev, 0) + 1
        dte = lay.dte_addr(dev) or lay.dt
        garbage = rng.getrandbits(64) | 1 << 63
        if kind == "garbage-unused-dte":
            patch = (lay.dte_addr(4) or lay.dt + 32, garbage)
        elif kind == "garbage-unused-ite":
            patch = (itt + ((1 << min(bits, 8)) - 1) * 8, garbage)  # the last slot
        elif kind == "garbage-unused-cte":
            patch = (lay.ct + 8 * rng.randint(0, 3), garbage)
        elif kind == "dte-outside-ram":
            patch = (dte, DTE(True, 0, 0x1_0000_0000, bits).encode())
        elif kind == "cte-bad-target":
            patch = (lay.ct, CTE(True, lay.nr_vcpus + 2, 0).encode())
        elif kind == "dte-next-past-table":
            patch = (dte, DTE(True, (1 << 14) - 1, itt, bits).encode())
        elif kind == "ite-bad-lpi":
            patch = (itt, ITE(0, 100, 0).encode())
        elif kind == "ite-next-past-itt":
            patch = (itt, ITE(min(1 << bits, 0xFFFF), 8192, 0).encode())
        elif kind == "dte-size-32":  # 32 EventID bits: KVM's int ITT size wraps
            patch = (dte, DTE(True, 0, itt, 32).encode())
        else:  # l1-cleared: the guest cleared a level-1 entry (flat: the DTE)
            patch = (lay.dt if lay.two_level else dte, 0)
        gpa, value = patch
        if not lay.base <= gpa < lay.base + RAM_SIZE - 8:
            raise AssertionError(f"{self.b.name}: {kind} patch at {gpa:#x} outside RAM")
        return Restore(name=kind, patches=(MemFill(gpa=gpa, data=_u64(value)),))


def random_streams(seed: int = 0, count: int = 1000) -> list[Stream]:
    """``count`` colliding random streams, the same for the same ``seed``."""
    return [_Random(seed, i).build() for i in range(count)]


# ---- pKVM: protected VMs ---------------------------------------------------------------------


def pkvm_streams() -> list[Stream]:
    """A protected 2-vCPU guest running a Linux-like workload (7.3-style ITT pool page:
    two ITTs in one 4 KiB page), sharing every ITS page, all but some, or none; the VMM
    then reads a shared and an unshared page."""
    lay = Layout(nr_vcpus=2, two_level=True)
    itt_page = lay.itt_area
    unshared = lay.base + 0xF0_0000  # a page the guest never shares
    tables = lay.its_pages()
    everything = [*tables, (itt_page, 1)]
    variants = {
        "all": everything,
        "no-itt": tables,
        "no-queue": [s for s in everything if s[0] != lay.cmdq],
        "no-pending": [s for s in everything if s[0] not in {lay.pend(0), lay.pend(1)}],
        "no-device-table": [s for s in everything if s[0] not in {lay.dt, lay.l2_page(0)}],
        "none": [],
    }
    out = []
    for name, share in variants.items():
        b = _Builder(f"pkvm-share-{name}", lay)
        b.write(lay.prop, bytes([LPI_PROP_DEFAULT]) * 64)
        b.write(lay.pend(1) + LPI_BASE // 8, b"\x02")  # LPI 8193 left pending
        b.linux_setup(baser_attrs=7 << 59 | 1 << 10, cbaser_attrs=7 << 59 | 1 << 10)
        for cpu in (0, 1):
            b.cmd(MAPC(cpu, cpu, True), SYNC(cpu), INVALL(cpu), SYNC(cpu))
        b.cmd(MAPD(8, 1, itt_page, True), MAPTI(8, 0, 8192, 0), MAPTI(8, 1, 8193, 1), SYNC(0))
        b.cmd(MAPD(16, 1, itt_page + 0x100, True), MAPTI(16, 0, 8194, 0), MAPTI(16, 1, 8195, 1))
        b.cmd(INV(8, 0), INT(16, 0), DISCARD(16, 1), SYNC(1))
        shared_gpa = share[0][0] if share else lay.cmdq
        out.append(
            b.stream(
                protected=True,
                share=tuple(share),
                host_reads=(shared_gpa, unshared),
                restores=(Restore(name="migrate"),),
            )
        )
    return out


# ---- the known 6.1 / 7.3 divergences, as minimal streams ------------------------------------


def known_divergence_streams() -> list[Stream]:
    """One minimal stream per difference between 6.1 and 7.3 the issue lists."""
    out = []

    def base(name: str, **lay) -> _Builder:
        b = _Builder(name, Layout(nr_vcpus=2, **lay))
        b.write(b.layout.prop, bytes([LPI_PROP_DEFAULT]) * 16)
        b.linux_setup(baser_attrs=0, cbaser_attrs=0)
        return b

    b = base("kd-mapti-lpi-twice")
    itt = b.layout.itt(0)
    b.cmd(MAPC(0, 0, True), MAPD(1, 1, itt, True), MAPTI(1, 0, 8192, 0), MAPTI(1, 1, 8192, 0))
    b.cmd(MAPTI(1, 2, 8193, 5))  # a new collection created by a MAPTI that succeeds
    b.cmd(MAPTI(1, 3, 8193, 6))  # ... and one created by a MAPTI 7.3 refuses
    out.append(b.stream())

    b = base("kd-save-unmapped-collection")
    itt = b.layout.itt(0)
    b.cmd(MAPC(0, 0, True), MAPC(1, 1, True), MAPD(1, 2, itt, True))
    b.cmd(MAPTI(1, 0, 8192, 0), MAPTI(1, 1, 8193, 1), MAPTI(1, 2, 8194, 0), MAPC(1, 0, False))
    out.append(b.stream())

    b = base("kd-save-l1-cleared", two_level=True, l1_indices=(0, 1, 2))
    lay = b.layout
    b.cmd(MAPC(0, 0, True), MAPD(1, 0, lay.itt(0), True), MAPTI(1, 0, 8192, 0))
    b.cmd(MAPD(8193, 0, lay.itt(1), True), MAPTI(8193, 0, 8193, 0))
    b.cmd(MAPD(16385, 0, lay.itt(2), True), MAPTI(16385, 0, 8194, 0))
    clear = MemFill(gpa=lay.dt + 8, data=_u64(0))  # the guest clears L1[1] after MAPD
    out.append(b.stream(fill_after=(clear,)))

    b = base("kd-mapc-v0-bad-target")
    b.cmd(MAPC(0, 0, True), MAPC(1, 1, True), MAPC(1, 9, False))
    out.append(b.stream())
    return out


STREAM_SOURCES = {
    "real-guests": real_guest_streams,
    "kvm-unit-tests": kut_streams,
    "pkvm": pkvm_streams,
    "known-divergences": known_divergence_streams,
}
