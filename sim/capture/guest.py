"""What the capture's guest runs (its /init payload) and what it sends back in /out.

After the device modules are loaded (``sim.oracle.boot``'s preamble insmods them in
dependency order), the payload waits for every NVMe controller to go ``live`` (NVMe
probes asynchronously: its MSI-X vectors are allocated in the reset work, after insmod
returns), then collects, as root, into one tar file sent back over the /out disk:

- ``kallsyms``: /proc/kallsyms with real addresses (kptr_restrict set to 0 first), to
  name what the pointers on an ITT's page point at;
- ``kcore.head``: the first 64 KiB of /proc/kcore, whose ELF program headers give the
  linear map (KCORE_RAM: virtual and physical address) and the vmemmap (struct pages);
- ``pci``: each PCI function's address, vendor:device, driver and MSI vectors;
- ``interrupts``, ``version``, ``release``: /proc/interrupts, /proc/version, uname -r.

Its last act is a read of GITS_IIDR through /dev/mem (busybox ``devmem``): QEMU traces it,
and the commands after it are the guest's power-off. It then powers off; the command
stream, the ITS registers and RAM are read from QEMU.
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass, field

NVME_LIVE_WAIT_S = 30

PAYLOAD = r"""
echo 0 > /proc/sys/kernel/kptr_restrict
mkdir -p /tmp/cap
want={nvme}
i=0
while [ $i -lt {wait_ticks} ]; do
  live=0
  for s in /sys/class/nvme/nvme*/state; do
    [ -e "$s" ] && [ "$(cat "$s")" = live ] && live=$((live + 1))
  done
  [ $live -ge $want ] && break
  sleep 0.1
  i=$((i + 1))
done
echo "pkvm-sim-capture: nvme live $live of $want"
# kallsyms (the slow part under TCG: ~240k lines on 7.3) on one vCPU, the rest on the other
dd if=/proc/kallsyms of=/tmp/cap/kallsyms bs=1048576 2>/dev/null &
kallsyms=$!
for d in /sys/bus/pci/devices/*; do
  drv=-
  [ -e "$d/driver" ] && drv=$(readlink "$d/driver") && drv=${{drv##*/}}
  msi=
  for m in "$d"/msi_irqs/*; do [ -e "$m" ] && msi="$msi${{m##*/}},"; done
  read -r ven < "$d/vendor"
  read -r dev < "$d/device"
  echo "${{d##*/}} $ven:$dev $drv ${{msi:--}}"
done > /tmp/cap/pci
cat /tmp/cap/pci
dd if=/proc/kcore of=/tmp/cap/kcore.head bs=65536 count=1 2>/dev/null
cat /proc/interrupts > /tmp/cap/interrupts
cat /proc/version > /tmp/cap/version
uname -r > /tmp/cap/release
wait $kallsyms
cd /tmp/cap && tar cf /out kallsyms kcore.head pci interrupts version release
cd /
v=$(devmem {marker} 32) && echo "pkvm-sim-capture: its marker $v"
"""


def payload(nvme: int, marker: int) -> str:
    """The /init payload: wait for ``nvme`` controllers, collect, read ``marker`` (GITS_IIDR)."""
    return PAYLOAD.format(nvme=nvme, wait_ticks=NVME_LIVE_WAIT_S * 10, marker=f"{marker:#x}")


@dataclass(frozen=True)
class PciFunction:
    address: str  # "0000:00:01.0"
    ids: str  # "1af4:1041"
    driver: str  # "virtio-pci", "nvme", "-" when none bound
    msi_irqs: tuple[int, ...]

    @property
    def device_id(self) -> int:
        """The ITS DeviceID: the requester ID (bus << 8 | devfn); QEMU virt's msi-map is 1:1."""
        m = re.fullmatch(r"[0-9a-f]{4}:([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])", self.address)
        if m is None:
            raise ValueError(f"not a PCI address: {self.address!r}")
        bus, dev, fn = int(m.group(1), 16), int(m.group(2), 16), int(m.group(3))
        return bus << 8 | dev << 3 | fn


@dataclass
class GuestReport:
    kallsyms: str
    kcore_head: bytes
    pci: list[PciFunction] = field(default_factory=list)
    interrupts: str = ""
    version: str = ""
    release: str = ""


class GuestReportError(ValueError):
    """/out is not the tar file the payload writes, or lacks a member."""


def parse_pci(text: str) -> list[PciFunction]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        irqs = tuple(int(x) for x in parts[3].split(",") if x.isdigit())
        ids = parts[1].replace("0x", "")
        out.append(PciFunction(parts[0], ids, parts[2], irqs))
    return out


def parse_out(out: bytes | None) -> GuestReport:
    if not out:
        raise GuestReportError("the guest sent no /out (no /proc/kallsyms or /proc/kcore)")
    try:
        with tarfile.open(fileobj=io.BytesIO(out)) as tar:
            files = {m.name.removeprefix("./"): tar.extractfile(m) for m in tar.getmembers()}
            data = {k: f.read() for k, f in files.items() if f is not None}
    except tarfile.TarError as exc:
        raise GuestReportError(f"/out is not a tar file: {exc}") from None
    missing = [k for k in ("kallsyms", "kcore.head", "pci") if k not in data]
    if missing:
        raise GuestReportError(f"/out lacks {', '.join(missing)}")
    if not data["kcore.head"].startswith(b"\x7fELF"):
        raise GuestReportError("/proc/kcore could not be read in the guest (no ELF header)")
    text = {k: v.decode(errors="replace") for k, v in data.items() if k != "kcore.head"}
    return GuestReport(
        kallsyms=text["kallsyms"],
        kcore_head=data["kcore.head"],
        pci=parse_pci(text["pci"]),
        interrupts=text.get("interrupts", ""),
        version=text.get("version", "").strip(),
        release=text.get("release", "").strip(),
    )
