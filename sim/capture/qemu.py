"""The device mix of a capture: what the user names, and the QEMU arguments that make it.

Spelling (one flag per device kind, repeatable; ``COUNTxSIZE`` is COUNT such devices)::

    --virtio-net V     one virtio-net-pci with an MSI-X table of V vectors (``vectors=V``)
    --virtio-blk Q     one virtio-blk-pci with Q request queues (``num-queues=Q``;
                       QEMU gives it Q + 1 MSI-X vectors: one per queue and config)
    --virtio-rng V     one virtio-rng-pci with an MSI-X table of V vectors (default 2)
    --nvme Q           one NVMe controller with Q I/O queue pairs (``max_ioqpairs=Q``,
                       ``msix_qsize=Q+1``: a vector for the admin queue and each I/O queue)
    --nvme 2x4         two NVMe controllers with 4 I/O queue pairs each

So ``--virtio-net 6 --nvme 1`` is one virtio-net with 6 vectors and one NVMe with one I/O
queue. The numbers are what QEMU offers; how many vectors the guest's driver allocates
(and so the MAPD Size and the MAPTI count) is the guest's business and is what the capture
records. virtio-net uses user networking with ``restrict=on`` (no traffic leaves the
machine; slirp has one queue pair) and ``romfile=`` (Debian's QEMU ships no option ROM
for it). Each device sits on the root bus (``pcie.0``) in the order given, so its
DeviceID (requester ID) is its slot number << 3; QEMU refuses a mix that needs more slots.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# kind -> (QEMU device, what SIZE means, default SIZE, bounds of SIZE)
KINDS: dict[str, tuple[str, str, int, tuple[int, int]]] = {
    "virtio-net": ("virtio-net-pci", "MSI-X vectors", 4, (1, 2048)),
    "virtio-blk": ("virtio-blk-pci", "request queues", 1, (1, 1024)),
    "virtio-rng": ("virtio-rng-pci", "MSI-X vectors", 2, (1, 2048)),
    "nvme": ("nvme", "I/O queue pairs", 1, (1, 2047)),
}
# The guest modules each kind needs (their dependencies follow from modinfo depends=).
# virtio_pci is built into 7.3's Debian kernel and a module on 6.1's; kernel_modules()
# takes a module it cannot find as built in.
MODULES: dict[str, tuple[str, ...]] = {
    "virtio-net": ("virtio_pci", "virtio_net"),
    "virtio-blk": ("virtio_pci", "virtio_blk"),
    "virtio-rng": ("virtio_pci", "virtio_rng"),
    "nvme": ("nvme",),
}
MAX_COUNT = 64
BACKING_MIB = 1  # each virtio-blk and NVMe gets a sparse raw image of this size

_SPEC = re.compile(r"(?:(\d+)x)?(\d+)")


class DeviceSpecError(ValueError):
    """A device flag's value that does not parse: the message names the flag."""


@dataclass(frozen=True)
class Device:
    kind: str  # a key of KINDS
    size: int  # vectors or queues, per KINDS
    index: int  # position among the devices of this kind (0, 1, ...)

    @property
    def qemu_id(self) -> str:
        return f"{self.kind.replace('-', '')}{self.index}"

    def describe(self) -> str:
        return f"{self.kind} ({self.size} {KINDS[self.kind][1]})"

    def qemu_args(self, backing: Path | None) -> list[str]:
        """``-device`` (and ``-netdev``/``-drive``) arguments for this device."""
        model = KINDS[self.kind][0]
        did = self.qemu_id
        if self.kind == "virtio-net":
            return [
                "-netdev", f"user,id={did}n,restrict=on",
                "-device", f"{model},id={did},netdev={did}n,romfile=,vectors={self.size}",
            ]  # fmt: skip
        if self.kind == "virtio-rng":
            return ["-device", f"{model},id={did},vectors={self.size}"]
        assert backing is not None
        drive = ["-drive", f"file={backing},format=raw,if=none,id={did}d"]
        if self.kind == "virtio-blk":
            return [*drive, "-device", f"{model},id={did},drive={did}d,num-queues={self.size}"]
        return [
            *drive,
            "-device",
            f"{model},id={did},drive={did}d,serial=pkvmsim{self.index},"
            f"max_ioqpairs={self.size},msix_qsize={self.size + 1}",
        ]

    @property
    def needs_backing(self) -> bool:
        return self.kind in ("virtio-blk", "nvme")


def parse_spec(kind: str, value: str) -> list[tuple[str, int]]:
    """``"6"`` -> one device of size 6; ``"2x4"`` -> two of size 4. Raises DeviceSpecError."""
    flag = f"--{kind}"
    lo, hi = KINDS[kind][3]
    m = _SPEC.fullmatch(value.strip())
    if m is None:
        raise DeviceSpecError(
            f"{flag}: expected SIZE or COUNTxSIZE ({KINDS[kind][1]}, e.g. 4 or 2x4), got {value!r}"
        )
    count = int(m.group(1)) if m.group(1) else 1
    size = int(m.group(2))
    if not 1 <= count <= MAX_COUNT:
        raise DeviceSpecError(f"{flag} {value}: COUNT must be 1..{MAX_COUNT}, got {count}")
    if not lo <= size <= hi:
        raise DeviceSpecError(f"{flag} {value}: {KINDS[kind][1]} must be {lo}..{hi}, got {size}")
    return [(kind, size)] * count


def device_mix(specs: list[tuple[str, int]]) -> tuple[Device, ...]:
    """Devices in the order named, numbered within each kind."""
    seen: dict[str, int] = {}
    out = []
    for kind, size in specs:
        out.append(Device(kind, size, seen.get(kind, 0)))
        seen[kind] = seen.get(kind, 0) + 1
    return tuple(out)


def guest_modules(devices: tuple[Device, ...]) -> list[str]:
    """The modules the mix needs, each once, in the order first needed."""
    names: list[str] = []
    for d in devices:
        names += [m for m in MODULES[d.kind] if m not in names]
    return names


def device_args(devices: tuple[Device, ...], workdir: Path) -> list[str]:
    """QEMU arguments for the whole mix; block devices get sparse images in ``workdir``."""
    args: list[str] = []
    for d in devices:
        backing = None
        if d.needs_backing:
            backing = workdir / f"{d.qemu_id}.img"
            with open(backing, "wb") as f:
                f.truncate(BACKING_MIB << 20)
        args += d.qemu_args(backing)
    return args
