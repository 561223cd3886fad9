"""Convert the raw recordings in ``sim/data/real-guests/`` into capture files.

The two bundled real guests (Debian 6.1.192 and 7.3.4 under QEMU 7.2's emulator, 2 vCPUs,
1 GiB, four MSI-X devices; ``/work/shared/reference/real-software.md``) were recorded
before the capture format existed: ``<name>.cmds.jsonl`` (one command per line: index, the
four raw doublewords, decoded fields), ``<name>.meta.json`` (GITS_CBASER/BASER values,
each device's ITTs as ``[MAPD Size, address]``, the ``struct page`` of each ITT's page)
and, for 6.1 only, ``<name>.colocation.txt`` (every object of each ITT's slab, from a
whole-RAM dump). ``python -m sim.capture.convert`` rebuilds
``sim/data/captures/*.capture.json`` from them; ``tests/capture/test_bundled.py`` checks
the shipped files are what this produces.

What the recordings do not hold, and what the conversion assumes instead:

- the QEMU command line was not kept (``qemu.command_line`` is null); RAM base and size
  are QEMU virt's 0x40000000 and the 1 GiB of the recipe; vCPUs are the MAPC count.
- device names: the DeviceID is the PCI requester ID (00:01.0 = 0x8, ...). Which device
  sat in which slot is read from the dump: the objects next to 0x8's ITT point into
  ``virtio_net``, 0x10's into ``virtio_blk``, 0x18's into ``virtio_rng``, and 0x20 is the
  one that re-probes with an admin vector first (nvme_pci_enable, then
  nvme_setup_io_queues), as only nvme does.
- the shutdown phase: the guest powered off at the end; the trailing run of per-vector
  ``INV; SYNC; DISCARD; SYNC`` groups (free_irq masks, then the vector is deactivated)
  and a final ``MAPD V=0`` is marked ``shutdown``.
- 7.3 has no colocation dump: its one ITT page is described from real-software.md (all
  four ITTs in one zeroed ``itt_pool`` page at +0x000, +0x100, +0x200, +0x300, the rest
  zero) and the ``struct page`` in the metadata (no slab cache: a plain page). The nvme
  ITT there has 128 events (MAPD Size 6), 1 KiB: +0x300..+0x700.
- 6.1 object liveness: the slab's ``struct slab`` counters word (inuse in bits [15:0],
  objects in [30:16]) says whether every object is allocated. In a slab with free
  objects, an object holding exactly one non-zero doubleword and no resolved symbol is a
  free one (SLUB keeps only its hardened freelist pointer in it); so is an ITT the stream
  has already unmapped (nvme's first one).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from sim.capture.format import (
    FORMAT,
    PAGE_SIZE,
    Allocator,
    Capture,
    CapturedCommand,
    CapturedDevice,
    GuestInfo,
    ITTInfo,
    ITTPage,
    KernelInfo,
    PageObject,
    QemuInfo,
    Registers,
    write_capture,
)
from sim.its.commands import DISCARD, INV, MAPC, MAPD, SYNC, decode

DATA = Path(__file__).resolve().parent.parent / "data"
RAW_DIR = DATA / "real-guests"
OUT_DIR = DATA / "captures"
RECORDINGS = {
    "linux-6.1.192": ("linux-6.1.192-qemu-virt", "6.1"),
    "linux-7.3.4": ("linux-7.3.4-qemu-virt", "7.3"),
}
RAM_BASE = 0x4000_0000
RAM_SIZE = 1 << 30
DEVICE_NAMES = {0x8: "virtio-net", 0x10: "virtio-blk", 0x18: "virtio-rng", 0x20: "nvme"}

# What a neighbour is, from the symbols its pointers resolve to (first match wins).
NEIGHBOUR_KINDS = (
    (
        ("its_msi_irq_chip", "handle_fasteoi_irq", "no_irq_chip", "gic_chip", "handle_bad_irq"),
        "irq descriptor (alloc_desc)",
    ),
    (("workqueues",), "workqueue"),
    (("param_attr_show", "param_attr_store"), "sysfs module parameters"),
    (("virtio_net_driver_exit",), "virtio-net driver data"),
    (("virtio_blk_fini",), "virtio-blk driver data"),
    (("virtio_cleanup", "virtio_read", "rng_list"), "virtio-rng hwrng"),
    (("blkcg_root",), "block layer (blkcg) data"),
    (("scomp_acomp_compress", "scomp"), "crypto scomp transform"),
    (("noop_dequeue", "noqueue_qdisc_ops"), "network qdisc"),
    (("flush_to_ldisc",), "tty port"),
    (("init_net", "proc_dointvec_ms_jiffies", "proc_dou8vec_minmax"), "net sysctl table"),
    (("jhash", "ioam6_ns_cmpfn"), "rhashtable params (net)"),
)

_HEAD = re.compile(
    r"=== ITT @(0x[0-9a-f]+) DeviceID (0x[0-9a-f]+)\s+cache=(\S+) size=(\d+) objsize=(\d+)"
    r" slab order=(\d+) objs=(\d+) slab@(0x[0-9a-f]+)-(0x[0-9a-f]+)\s+struct slab"
    r" counters=(0x[0-9a-f]+)"
)
_OBJ = re.compile(
    r"\s*obj\s*(\d+) @(0x[0-9a-f]+) (SAME-4K )?\s*(?:(\d+) nonzero qwords|(all-zero))(.*)$"
)
_SYM = re.compile(r"\+0x[0-9a-f]+:([A-Za-z_][A-Za-z0-9_.]*)(?:\[[a-z_0-9]+\])?\+0x[0-9a-f]+")


def _what(symbols: list[str], nonzero: int) -> str:
    for names, what in NEIGHBOUR_KINDS:
        if any(s in names for s in symbols):
            return what
    if nonzero == 0:
        return "zeroed allocation"
    return "kernel object (pointers into the heap only)"


def _commands(path: Path) -> list[CapturedCommand]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cmds = [
        decode(b"".join(int(dw, 16).to_bytes(8, "little") for dw in row["raw"])) for row in rows
    ]
    # The trailing shutdown: MAPD V=0 last, before it per vector INV;SYNC;DISCARD;SYNC.
    start = len(cmds)
    if isinstance(cmds[start - 1], MAPD) and not cmds[start - 1].valid:
        start -= 1
    while start >= 4:
        inv, s1, dis, s2 = cmds[start - 4 : start]
        if not (isinstance(inv, INV) and isinstance(s1, SYNC) and isinstance(s2, SYNC)):
            break
        if not (
            isinstance(dis, DISCARD)
            and (dis.device_id, dis.event_id) == (inv.device_id, inv.event_id)
        ):
            break
        start -= 4
    out = []
    for i, row in enumerate(rows):
        decoded = {k: v for k, v in row.items() if k not in ("idx", "raw")}
        out.append(
            CapturedCommand(
                index=row["idx"],
                raw=row["raw"],
                phase="shutdown" if i >= start else "boot",
                decoded=decoded,
            )
        )
    return out


def _pages_61(path: Path, meta: dict, unmapped: set[int]) -> list[ITTPage]:
    pages: list[ITTPage] = []
    block: list[str] = []
    blocks: list[list[str]] = []
    for line in path.read_text().splitlines():
        if line.startswith("==="):
            block = [line]
            blocks.append(block)
        elif line.strip() and block:
            block.append(line)
    for block in blocks:
        head = _HEAD.match(block[0])
        if head is None:
            raise ValueError(f"{path}: unexpected header {block[0]!r}")
        itt = int(head[1], 16)
        size, order, nobjs = int(head[5]), int(head[6]), int(head[7])
        counters = int(head[10], 16)
        inuse, objects = counters & 0xFFFF, (counters >> 16) & 0x7FFF
        full = inuse == objects
        objs = []
        for line in block[1:]:
            m = _OBJ.match(line)
            if m is None:
                raise ValueError(f"{path}: unexpected object line {line!r}")
            if not m[3]:
                continue  # the slab's other page
            addr = int(m[2], 16)
            nonzero = 0 if m[5] else int(m[4])
            symbols = sorted(set(_SYM.findall(m[6])))
            if "<== ITT" in m[6]:
                live = addr not in unmapped
                objs.append(
                    PageObject(
                        addr=addr,
                        size=size,
                        kind="itt",
                        what=f"ITT of DeviceID {head[2]}" + ("" if live else " (unmapped, freed)"),
                        live=live,
                        zero=nonzero == 0,
                        nonzero_qwords=nonzero,
                    )
                )
                continue
            free = not full and nonzero == 1 and not symbols
            objs.append(
                PageObject(
                    addr=addr,
                    size=size,
                    kind="free" if free else "kernel",
                    what="free slab object (freelist pointer only)"
                    if free
                    else _what(symbols, nonzero),
                    live=not free,
                    zero=nonzero == 0,
                    nonzero_qwords=nonzero,
                    symbols=symbols,
                )
            )
        page = itt & ~(PAGE_SIZE - 1)
        pages.append(
            ITTPage(
                page=page,
                itts=[itt],
                allocator=Allocator(
                    kind="slab",
                    cache=head[3],
                    object_size=size,
                    slab_addr=int(head[8], 16),
                    slab_order=order,
                    objects_per_slab=nobjs,
                    objects_per_page=PAGE_SIZE // size,
                    align=size,
                ),
                objects=objs,
            )
        )
    return pages


def _pages_73(meta: dict, devices: list[CapturedDevice]) -> list[ITTPage]:
    by_page: dict[int, list[tuple[int, ITTInfo]]] = {}
    for dev in devices:
        for itt in dev.itts:
            by_page.setdefault(itt.addr & ~(PAGE_SIZE - 1), []).append((dev.device_id, itt))
    pages = []
    for page, itts in sorted(by_page.items()):
        words = meta["pages"][f"{itts[0][1].addr:#x}"]["words"]
        if words[3] != "0x0":  # struct page: no slab_cache pointer, a plain page
            raise ValueError(f"7.3 ITT page {page:#x} is a slab page")
        objs, cursor = [], page
        for dev_id, itt in sorted(itts, key=lambda t: t[1].addr):
            if itt.addr > cursor:
                objs.append(
                    PageObject(
                        addr=cursor,
                        size=itt.addr - cursor,
                        kind="free",
                        live=False,
                        zero=True,
                        what="unused pool space",
                    )
                )
            objs.append(
                PageObject(
                    addr=itt.addr, size=itt.nbytes, kind="itt", what=f"ITT of DeviceID {dev_id:#x}"
                )
            )
            cursor = itt.addr + itt.nbytes
        if cursor < page + PAGE_SIZE:
            objs.append(
                PageObject(
                    addr=cursor,
                    size=page + PAGE_SIZE - cursor,
                    kind="free",
                    live=False,
                    zero=True,
                    what="unused pool space",
                )
            )
        pages.append(
            ITTPage(
                page=page,
                itts=[i.addr for _, i in itts],
                allocator=Allocator(kind="pool", cache="itt_pool", align=256),
                objects=objs,
            )
        )
    return pages


def convert(name: str) -> Capture:
    """The capture for one bundled recording (``linux-6.1.192`` or ``linux-7.3.4``)."""
    stem, gen = RECORDINGS[name]
    meta = json.loads((RAW_DIR / f"{stem}.meta.json").read_text())
    commands = _commands(RAW_DIR / f"{stem}.cmds.jsonl")
    raw = [decode(c.encode()) for c in commands]
    vcpus = sum(1 for c in raw if isinstance(c, MAPC) and c.valid)
    devices = [
        CapturedDevice(
            device_id=int(dev, 16),
            name=DEVICE_NAMES.get(int(dev, 16)),
            itts=[ITTInfo(addr=int(addr, 16), size=size) for size, addr in itts],
        )
        for dev, itts in sorted(meta["itts"].items(), key=lambda kv: int(kv[0], 16))
    ]
    # An ITT unmapped by a MAPD V=0 the driver followed with a new MAPD: freed before the dump.
    unmapped = {
        c.itt_addr
        for i, c in enumerate(raw)
        if isinstance(c, MAPD) and not c.valid and i + 1 < len(raw) and isinstance(raw[i + 1], MAPD)
    }
    coloc = RAW_DIR / f"{stem}.colocation.txt"
    pages = _pages_61(coloc, meta, unmapped) if coloc.exists() else _pages_73(meta, devices)
    return Capture(
        format=FORMAT,
        kernel=KernelInfo(release=name.removeprefix("linux-"), generation=gen),
        qemu=QemuInfo(command_line=None, version="7.2"),
        guest=GuestInfo(ram_base=RAM_BASE, ram_size=RAM_SIZE, vcpus=vcpus),
        registers=Registers(
            gits_cbaser=int(meta["cbaser"], 16),
            gits_baser=[int(meta["baser"][f"{0x100 + 8 * n:#x}"], 16) for n in range(8)],
        ),
        devices=devices,
        commands=commands,
        colocation=pages,
        notes=[
            f"converted by sim/capture/convert.py from sim/data/real-guests/{stem}.*",
            "Debian arm64 kernel under qemu-system-aarch64 7.2 (TCG, virt, GICv3 ITS),"
            " 2 vCPUs, 1 GiB; raw queue read back with pmemsave after poweroff",
            "the QEMU command line was not recorded",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    OUT_DIR.mkdir(exist_ok=True)
    for name in RECORDINGS:
        path = OUT_DIR / f"{name}.capture.json"
        write_capture(convert(name), path)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
