"""Compare two Observations of one Stream entry by entry, and shrink a diverging stream.

Guest RAM is compared word by word, each word decoded as what lives there, which the
Stream says: the command queue (GITS_CBASER), the device table (GITS_BASER0; flat, or
level-1 entries and the level-2 pages they point to), the collection table
(GITS_BASER1), the property and pending tables (GICR_PROPBASER/PENDBASER) and every ITT
a MAPD named. A word where tables overlap (an ITT placed over a pending table) is
decoded as each of them. Registers are compared by name, CREADR after each command,
ioctl return values, and each restore's result.

Each mismatch falls in a divergence class: a short stable key, ``<phase>:<what>``
(``save:ite``, ``regs:GITS_BASER0``, ``restore:ret``). A class matched by an entry of
:data:`KNOWN` (with the reason and the kernel source line) is explained; every other one
is unexplained.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sim.its import regs as r
from sim.its.commands import CommandDecodeError, decode
from sim.its.tables import CTE, DTE, ITE, L1E_ADDR_MASK, L1E_VALID
from sim.memory.physmem import PAGE_SIZE
from sim.oracle.stream import Observation, Phase, Stream, Words

KIND_DESCRIPTIONS = {
    "queue": "command-queue slot",
    "dte": "device-table entry (DTE)",
    "l1": "level-1 device-table entry",
    "cte": "collection-table entry (CTE)",
    "ite": "interrupt-translation entry (ITE)",
    "prop": "LPI property bytes",
    "pend": "LPI pending bits",
    "other": "guest RAM outside every ITS table",
    "ret": "ioctl return value",
    "creadr": "GITS_CREADR after a command",
    "missing": "a result present on one side only",
    "host": "host access to a guest page",
}
PHASES = ("commands", "save", "save_pending")


# ---- what lives where ------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    start: int
    end: int
    kind: str
    first_id: int = 0  # DeviceID of the first DTE, DeviceID of an ITT's owner, vCPU
    label: str = ""


def _last_regs(stream: Stream) -> dict[str, int]:
    regs: dict[str, int] = {}
    for w in stream.regs:
        regs[w.reg] = w.value
    return regs


def regions(stream: Stream, regs: dict[str, int], memory: Sequence[Words] = ()) -> list[Region]:
    """The ITS tables of ``stream``; ``regs`` are the registers KVM read back (they win
    over the stream's writes); level-2 pages come from level-1 entries in ``memory``."""
    wrote = _last_regs(stream)
    get = {**wrote, **{k: v for k, v in regs.items() if k.startswith(("GITS_", "GICR"))}}
    out: list[Region] = []
    cbaser = get.get("GITS_CBASER", 0)
    if cbaser & r.GITS_CBASER_VALID:
        out.append(
            Region(r.cbaser_addr(cbaser), r.cbaser_addr(cbaser) + r.cbaser_size(cbaser), "queue")
        )
    baser0 = get.get("GITS_BASER0", 0)
    if baser0 & r.GITS_BASER_VALID:
        base, size = r.baser_addr(baser0), r.baser_nr_pages(baser0) * r.SZ_64K
        if baser0 & r.GITS_BASER_INDIRECT:
            out.append(Region(base, base + size, "l1"))
            l2 = set()
            for words in memory:
                for i in range(size // 8):
                    entry = words.get(base + 8 * i, 0)
                    if entry & L1E_VALID:
                        l2.add((i, entry & L1E_ADDR_MASK))
            for i, addr in sorted(l2):
                out.append(Region(addr, addr + r.SZ_64K, "dte", i * (r.SZ_64K // 8)))
        else:
            out.append(Region(base, base + size, "dte"))
    baser1 = get.get("GITS_BASER1", 0)
    if baser1 & r.GITS_BASER_VALID:
        base = r.baser_addr(baser1)
        out.append(Region(base, base + r.baser_nr_pages(baser1) * r.SZ_64K, "cte"))
    for v in range(stream.nr_vcpus):
        prop = get.get(f"GICR{v}_PROPBASER")
        if prop is not None and v == 0:
            end = r.max_lpis_propbaser(prop) - r.GIC_LPI_OFFSET
            out.append(Region(r.propbaser_addr(prop), r.propbaser_addr(prop) + end, "prop"))
        pend = get.get(f"GICR{v}_PENDBASER")
        if pend is not None:
            addr = r.pendbaser_addr(pend)
            out.append(Region(addr, addr + (1 << 16) // 8, "pend", v, f"vcpu{v}"))
    seen = set()
    cmds = list(stream.commands) + [c for rs in stream.restores for c in rs.commands]
    for hexcmd in cmds:
        raw = bytes.fromhex(hexcmd)
        if raw[0] != 0x08 or not raw[23] >> 7:  # MAPD with V=1
            continue
        dw0, dw1, dw2 = (int.from_bytes(raw[i : i + 8], "little") for i in (0, 8, 16))
        dev, size, itt = dw0 >> 32, (dw1 & 0x1F) + 1, dw2 & r.genmask(51, 8)
        if (dev, itt, size) in seen or size > 16:
            continue
        seen.add((dev, itt, size))
        out.append(Region(itt, itt + (1 << size) * 8, "ite", dev, f"dev{dev:#x}"))
    return out


def _where(regs_: list[Region], gpa: int) -> list[Region]:
    return [g for g in regs_ if g.start <= gpa < g.end]


def decode_word(region: Region | None, gpa: int, word: int | None) -> str:
    """A word as the table it lies in reads it."""
    if word is None:
        return "absent"
    if region is None:
        return f"{word:#018x}"
    kind = region.kind
    if kind == "dte":
        dte = DTE.decode(word)
        dev = region.first_id + (gpa - region.start) // 8
        return (
            f"DTE[{dev:#x}] V={int(dte.valid)} next={dte.next} ITT={dte.itt_addr:#x}"
            f" bits={dte.num_eventid_bits}"
        )
    if kind == "ite":
        nxt, intid, icid = ITE.unpack(word)
        ev = (gpa - region.start) // 8
        return f"ITE[{region.label} ev {ev}] next={nxt} pINTID={intid} ICID={icid}"
    if kind == "cte":
        cte = CTE.decode(word)
        slot = (gpa - region.start) // 8
        return f"CTE[{slot}] V={int(cte.valid)} RDbase={cte.target:#x} ICID={cte.icid}"
    if kind == "l1":
        return f"L1[{(gpa - region.start) // 8}] V={word >> 63} L2={word & L1E_ADDR_MASK:#x}"
    if kind == "pend":
        first = (gpa - region.start) * 8
        bits = [first + b for b in range(64) if word >> b & 1]
        return f"pending {region.label} INTIDs {bits}"
    if kind == "prop":
        first = r.GIC_LPI_OFFSET + gpa - region.start
        return f"prop bytes INTID {first}..{first + 7} = {word.to_bytes(8, 'little').hex()}"
    if kind == "queue":
        slot, dw = divmod(gpa - region.start, 32)
        return f"queue slot {slot} DW{dw // 8} = {word:#018x}"
    return f"{word:#018x}"


# ---- mismatches and classes ----------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """A documented difference: mismatches of class ``key`` (a glob) on streams for which
    ``applies`` holds, under ``kernels`` (model generations), are explained."""

    key: str
    title: str
    reason: str
    source: str  # kernel file:function (and line) that explains it
    applies: Callable[[Stream], bool] = lambda stream: True
    kernels: tuple[str, ...] = ("6.1", "7.3")
    resolution: str = "documented difference"


# No documented difference remains between the model and 6.1.192 / 7.3.4: MOVALL, the
# one the issue names, is not one for these kernels (both filter on the source vCPU:
# 6.1 vgic-its.c vgic_its_cmd_handle_movall -> vgic_copy_lpi_list(kvm, vcpu1, ...);
# 7.3 update_affinity(irq, vcpu1, vcpu2) returns early unless irq->target_vcpu ==
# from_vcpu), and the model filters the same way.
KNOWN: tuple[Known, ...] = ()


@dataclass(frozen=True)
class Mismatch:
    phase: str  # commands, save, save_pending, regs, creadr, restore, resave, ...
    what: str  # kind: dte, ite, cte, ret, register name, ...
    where: str  # gpa, register, command index, restore name
    a: str  # decoded, first observation (kvm)
    b: str  # decoded, second observation (model)

    @property
    def key(self) -> str:
        return f"{self.phase}:{self.what}"


@dataclass
class Comparison:
    name: str
    labels: tuple[str, str]
    mismatches: list[Mismatch] = field(default_factory=list)
    explained: dict[str, Known] = field(default_factory=dict)  # class key -> reason
    bytes_compared: int = 0
    words_compared: int = 0  # non-zero words on either side

    @property
    def classes(self) -> dict[str, list[Mismatch]]:
        out: dict[str, list[Mismatch]] = {}
        for m in self.mismatches:
            out.setdefault(m.key, []).append(m)
        return out

    @property
    def unexplained(self) -> list[Mismatch]:
        return [m for m in self.mismatches if m.key not in self.explained]

    @property
    def ok(self) -> bool:
        return not self.unexplained


def observed_bytes(stream: Stream) -> int:
    """Bytes of RAM each phase of the source VM covers: all of RAM, or the pages a
    protected VM shared."""
    if not stream.protected:
        return stream.ram_size
    pages = set()
    for gpa, count in stream.share:
        pages.update(range(gpa // PAGE_SIZE, gpa // PAGE_SIZE + count))
    return len(pages) * PAGE_SIZE


class _Comparer:
    def __init__(self, stream: Stream, a: Observation, b: Observation) -> None:
        self.stream = stream
        self.out = Comparison(stream.name, (_label(a), _label(b)))
        self.ram = observed_bytes(stream)

    def add(self, phase: str, what: str, where: str, a: str, b: str) -> None:
        self.out.mismatches.append(Mismatch(phase, what, where, a, b))

    def value(self, phase: str, what: str, where: str, a, b) -> None:
        self.out.bytes_compared += 8
        if a != b:
            self.add(phase, what, where, str(a), str(b))

    def memory(
        self, phase: str, a: Words, b: Words, regions_: list[Region], ram: int | None = None
    ) -> None:
        self.out.bytes_compared += self.ram if ram is None else ram
        keys = a.keys() | b.keys()
        self.out.words_compared += len(keys)
        for gpa in sorted(keys):
            wa, wb = a.get(gpa, 0), b.get(gpa, 0)
            if wa == wb:
                continue
            where = _where(regions_, gpa)
            kind = "+".join(sorted({g.kind for g in where})) or "other"
            first = where[0] if where else None
            self.add(
                phase, kind, f"{gpa:#x}", decode_word(first, gpa, wa), decode_word(first, gpa, wb)
            )

    def phase(self, name: str, a: Phase | None, b: Phase | None, regions_) -> None:
        if (a is None) != (b is None):
            self.add(name, "missing", name, str(a is not None), str(b is not None))
            return
        if a is None or b is None:
            return
        self.value(name, "ret", name, a.ret, b.ret)
        self.memory(name, a.memory, b.memory, regions_)

    def regs(self, phase: str, a: dict[str, int], b: dict[str, int]) -> None:
        for name in sorted(a.keys() | b.keys()):
            va, vb = a.get(name), b.get(name)
            self.value(phase, name, name, _hexint(va), _hexint(vb))


def _hexint(v: int | None) -> str:
    return "absent" if v is None else f"{v:#x}"


def _label(obs: Observation) -> str:
    return f"{obs.source} {obs.kernel}".strip()


def compare(
    a: Observation, b: Observation, stream: Stream, known: Sequence[Known] = KNOWN
) -> Comparison:
    """``a`` (the kernel) against ``b`` (the model) for ``stream``, entry by entry."""
    c = _Comparer(stream, a, b)
    n = max(len(a.creadr), len(b.creadr))
    for i in range(n):
        va = a.creadr[i] if i < len(a.creadr) else None
        vb = b.creadr[i] if i < len(b.creadr) else None
        c.value("creadr", "creadr", f"command {i}", _hexint(va), _hexint(vb))
    c.regs("regs", a.regs, b.regs)
    mems = [p.memory for p in (a.commands, a.save, a.save_pending) if p is not None]
    regions_ = regions(stream, a.regs or b.regs, mems)
    c.phase("commands", a.commands, b.commands, regions_)
    c.phase("save", a.save, b.save, regions_)
    c.phase("save_pending", a.save_pending, b.save_pending, regions_)
    rb = {x.name: x for x in b.restores}
    ra = {x.name: x for x in a.restores}
    for name in sorted(ra.keys() | rb.keys()):
        xa, xb = ra.get(name), rb.get(name)
        if xa is None or xb is None:
            c.add("restore", "missing", name, str(xa is not None), str(xb is not None))
            continue
        c.value("restore", "ret", name, xa.ret, xb.ret)
        c.value("resave", "ret", name, xa.resave_ret, xb.resave_ret)
        for i in range(max(len(xa.creadr), len(xb.creadr))):
            va = xa.creadr[i] if i < len(xa.creadr) else None
            vb = xb.creadr[i] if i < len(xb.creadr) else None
            c.value("restore", "creadr", f"{name} command {i}", _hexint(va), _hexint(vb))
        c.regs("restore-regs", xa.regs, xb.regs)
        rregions = regions(stream, xa.regs or xb.regs, [xa.memory])
        # a restore destination has not run: all of its RAM is the host's to read
        c.memory("resave", xa.memory, xb.memory, rregions, stream.ram_size)
    for gpa in sorted(a.host_reads.keys() | b.host_reads.keys()):
        c.value("host_reads", "host", f"{gpa:#x}", a.host_reads.get(gpa), b.host_reads.get(gpa))
    kernel = b.kernel if b.source == "model" else a.kernel
    for key in c.out.classes:
        for k in known:
            if fnmatch.fnmatchcase(key, k.key) and k.applies(stream) and _gen(kernel) in k.kernels:
                c.out.explained[key] = k
                break
    return c.out


def _gen(kernel: str) -> str:
    m = re.match(r"(\d+)\.(\d+)", kernel)
    if m is None:
        return kernel
    return "6.1" if (int(m[1]), int(m[2])) < (6, 13) else "7.3"


# ---- shrinking a diverging stream ------------------------------------------------------------


BatchTest = Callable[[list[Stream]], list[bool]]


def minimise(stream: Stream, still_diverges: Callable[[Stream], bool]) -> Stream:
    """A smaller stream that still diverges: delta debugging (ddmin) over the commands,
    then the restores and their commands, then the guest's fills. 1-minimal in each."""
    return minimise_batch(stream, lambda streams: [still_diverges(s) for s in streams])


def minimise_batch(stream: Stream, diverges: BatchTest) -> Stream:
    """:func:`minimise` with the candidates of each ddmin round judged in one call, so a
    real kernel can run a whole round in one boot (a fresh VM per candidate)."""
    if not diverges([stream])[0]:
        raise ValueError(f"stream {stream.name} does not diverge: nothing to minimise")

    def shrink(items: tuple, rebuild: Callable[[tuple], Stream]) -> tuple:
        return _ddmin(items, lambda subs: diverges([rebuild(sub) for sub in subs]))

    s = stream
    cmds = shrink(s.commands, lambda sub: s.model_copy(update={"commands": sub}))
    s = s.model_copy(update={"commands": cmds})
    rest = shrink(s.restores, lambda sub: s.model_copy(update={"restores": sub}))
    s = s.model_copy(update={"restores": rest})
    for i in range(len(s.restores)):
        s = _shrink_restore_commands(s, i, shrink)
    fill = shrink(s.fill, lambda sub: s.model_copy(update={"fill": sub}))
    s = s.model_copy(update={"fill": fill})
    return s.model_copy(update={"name": f"{stream.name}-min"})


def _shrink_restore_commands(s: Stream, i: int, shrink) -> Stream:
    def with_cmds(sub: tuple) -> Stream:
        restores = list(s.restores)
        restores[i] = restores[i].model_copy(update={"commands": sub})
        return s.model_copy(update={"restores": tuple(restores)})

    return with_cmds(shrink(s.restores[i].commands, with_cmds))


def _ddmin(items: tuple, test_many: Callable[[list[tuple]], list[bool]]) -> tuple:
    """Zeller's ddmin: a 1-minimal sub-sequence of ``items`` that passes the test
    (``items`` is assumed to). Each round tests every subset, then every complement."""
    if not items:
        return items
    if test_many([()])[0]:
        return ()
    n = 2
    while len(items) >= 2:
        chunk = math.ceil(len(items) / n)
        parts = [items[i : i + chunk] for i in range(0, len(items), chunk)]
        comps = []
        if len(parts) > 2:  # with two parts each complement is the other part
            comps = [
                tuple(x for j, p in enumerate(parts) if j != i for x in p)
                for i in range(len(parts))
            ]
        results = test_many(parts + comps)
        hit_part, hit_comp = results[: len(parts)], results[len(parts) :]
        if any(hit_part):
            items, n = parts[hit_part.index(True)], 2
        elif any(hit_comp):
            items, n = comps[hit_comp.index(True)], max(n - 1, 2)
        elif n >= len(items):
            break
        else:
            n = min(2 * n, len(items))
    return items


def describe_command(hexcmd: str) -> str:
    """A command as a kernel engineer reads it."""
    raw = bytes.fromhex(hexcmd)
    try:
        cmd = decode(raw)
    except CommandDecodeError:
        return f"unknown command {raw[0]:#04x} ({hexcmd})"
    fields = ", ".join(
        f"{k}={v:#x}" if isinstance(v, int) and not isinstance(v, bool) else f"{k}={v}"
        for k, v in vars(cmd).items()
    )
    return f"{type(cmd).__name__}({fields})"


# ---- where 6.1 and 7.3 differ (the kernel-generation parameter of VirtualITS) -------------


def _commands(stream: Stream):
    for h in stream.commands + tuple(c for rs in stream.restores for c in rs.commands):
        try:
            yield decode(bytes.fromhex(h))
        except CommandDecodeError:
            continue


def _lpi_mapped_twice(stream: Stream) -> bool:
    seen: set[int] = set()
    for c in _commands(stream):
        name = type(c).__name__
        if name in ("MAPTI", "MAPI"):
            lpi = c.intid if name == "MAPTI" else c.event_id
            if lpi in seen:
                return True
            seen.add(lpi)
    return False


def _mapc_unmap(stream: Stream) -> bool:
    return any(type(c).__name__ == "MAPC" and not c.valid for c in _commands(stream))


def _mapc_unmap_bad_target(stream: Stream) -> bool:
    return any(
        type(c).__name__ == "MAPC" and not c.valid and c.target >= stream.nr_vcpus
        for c in _commands(stream)
    )


def _level1_changed(stream: Stream) -> bool:
    """A two-level device table whose level-1 entries change after the MAPDs (the guest
    clears one, or a restore patches the level-1 table)."""
    baser0 = _last_regs(stream).get("GITS_BASER0", 0)
    if not baser0 & r.GITS_BASER_INDIRECT:
        return False
    base = r.baser_addr(baser0)
    end = base + r.baser_nr_pages(baser0) * r.SZ_64K
    return any(base <= f.gpa < end for f in stream.fill_after)


KERNEL_DIFFERENCES: tuple[Known, ...] = (
    Known(
        key="*",
        title="a second MAPTI/MAPI onto a mapped LPI",
        reason="7.3 keeps the first ITE and fails the second with -EEXIST, freeing the new"
        " ITE and a collection the MAPTI created; 6.1 shares the LPI between both ITEs",
        source="7.3 vgic-its.c:vgic_its_cmd_handle_mapi -> vgic_its_map_lpi (-EEXIST);"
        " 6.1 vgic-its.c:vgic_add_lpi returns the existing irq",
        applies=_lpi_mapped_twice,
        resolution="model fixed: VirtualITS(kernel=...) one_ite_per_lpi",
    ),
    Known(
        key="*save*:*ite*",  # save, save_pending (RAM holds the save's bytes), resave
        title="SAVE_TABLES with an ITE whose collection was unmapped (MAPC V=0)",
        reason="both save a zero ITE for it (vgic_its_save_ite); 7.3's next-EventID offset"
        " skips zeroed ITEs, 6.1's points at the next ITE",
        source="7.3 vgic-its.c:compute_next_eventid_offset; vgic-its.c:vgic_its_save_ite",
        applies=_mapc_unmap,
        resolution="model fixed: VirtualITS(kernel=...) next_ite_skips_zeroed",
    ),
    Known(
        key="*",
        title="SAVE_TABLES with a device vgic_its_check_id() now rejects",
        reason="7.3 skips the device ('Don't fail a save...') and its next chain skips it;"
        " 6.1 returns -EINVAL before writing the collection table",
        source="7.3 vgic-its.c:vgic_its_save_device_tables, compute_next_devid_offset",
        applies=_level1_changed,
        resolution="model fixed: VirtualITS(kernel=...) save_skips_rejected_devices",
    ),
    Known(
        key="*",  # the kept collection shows in CTEs, and in ITEs that still use it
        title="MAPC V=0 with an out-of-range target",
        reason="6.1 checks the target against online vCPUs before V (keeps the collection);"
        " 7.3 frees the collection whatever the target",
        source="vgic-its.c:vgic_its_cmd_handle_mapc (6.1 vs 7.3)",
        applies=_mapc_unmap_bad_target,
        resolution="model fixed: VirtualITS(kernel=...) mapc_unmap_ignores_target",
    ),
)
