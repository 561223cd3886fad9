"""Boot an arm64 kernel under QEMU (TCG) with a busybox initramfs and a payload script.

The L1 guest runs at emulated EL2 (``virtualization=on``), so its KVM is real KVM, and with
``kvm-arm.mode=protected`` real pKVM. ``/init`` prints :data:`INIT_MARKER` first thing,
mounts /proc, /sys and /dev, loads the modules it was given, runs the payload, then
returns the payload's ``/out`` file and powers off (``poweroff -f``).

How ``/out`` comes back: a raw virtio-blk disk on virtio-mmio (the ``/dev/vd*`` whose sysfs
path is under a ``*.virtio_mmio`` platform device, so that the PCI virtio-blk disks of a
capture's device mix do not take its place; a header line in sector 0, the bytes from
offset 1 MiB). Measured under TCG on this kind of machine
(7.3.4 nested, 2 vCPUs): the console carries ~0.43 MB/s of hex (1 MiB of data took 4.9 s,
and kernel messages can interleave with it); the disk took 0.19 s for 8 MiB. Debian's
kernels have virtio_mmio and virtio_blk as modules (no dependencies on 6.1.x or 7.3.x), so
they go into the initramfs, decompressed on the host (7.3 ships ``.ko.xz``). A kernel
without them (a user's build with neither the modules nor the drivers built in) falls back
to hex lines on the console, with console messages turned down while they are written.
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sim.oracle.errors import OracleSetupError, Progress
from sim.oracle.initramfs import Entry, cpio_newc
from sim.oracle.setup import Kernel, Tools, cache_dir

INIT_MARKER = "pkvm-sim-oracle: init started"
EXIT_MARKER = "pkvm-sim-oracle: payload exit"
OUT_DISK_MARKER = "pkvm-sim-oracle: out on disk"
OUT_HEX_MARKER = "pkvm-sim-oracle: out hex"
OUT_END_MARKER = "pkvm-sim-oracle: out end"
OUT_ERROR_MARKER = "pkvm-sim-oracle: out error"
OUT_NONE_MARKER = "pkvm-sim-oracle: out none"
# The kernel's last words before PSCI SYSTEM_OFF (kernel/reboot.c: kernel_power_off).
POWER_OFF_MARKER = "reboot: Power down"
OUT_MAGIC = b"PKVMSIMOUT "
OUT_OFFSET = 1 << 20
HEX_PREFIX = "@@"

# Boot to /init took 5-18 s here (nested, 2 vCPUs, depending on load); a payload replaying
# many streams takes minutes. A kernel that has not reached /init in INIT_TIMEOUT_S is
# stuck (or printing a panic slowly); the whole run is killed at the caller's timeout.
DEFAULT_TIMEOUT_S = 600.0
INIT_TIMEOUT_S = 240.0
CONSOLE_TAIL = 20
OUTPUT_MODULES = ("virtio_mmio", "virtio_blk")
INITRAMFS_KEEP = 32  # built initramfs files kept in the cache (one per distinct payload)

_EXIT = re.compile(re.escape(EXIT_MARKER) + r" (\d+)")
_KVM_MODE = re.compile(r"kvm \[\d+\]: (.+?) mode initialized successfully")


class BootError(OracleSetupError):
    """The kernel did not reach /init, or stopped before the payload finished.

    ``console`` is the whole console, for a caller that wants more than the message's tail
    (an L1 oops in KVM is a finding, not only a failure).
    """

    def __init__(self, message: str, console: str = ""):
        super().__init__(message)
        self.console = console


class BootTimeout(BootError):
    """QEMU was killed at the timeout (with its process group)."""


@dataclass(frozen=True)
class BootResult:
    console: str
    kvm_mode: str | None  # the kernel's words: "VHE", "Protected hVHE", "Protected nVHE", ...
    output: bytes | None  # the payload's /out, None if it wrote none
    payload_status: int  # the payload script's exit status
    init_s: float  # QEMU start to the init marker
    elapsed_s: float  # QEMU start to power-off

    @property
    def protected(self) -> bool:
        return bool(self.kvm_mode and self.kvm_mode.startswith("Protected"))


def kvm_mode(console: str) -> str | None:
    """What KVM said it initialised: ``"VHE"``, ``"Protected hVHE"``, ``"Hyp"``, ... or None."""
    m = _KVM_MODE.search(console)
    return m.group(1) if m else None


# --- modules ------------------------------------------------------------------------------


def _modinfo_depends(ko: bytes) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", ko)
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        import gzip

        return gzip.decompress(data)
    if path.suffix == ".zst":
        zstd = shutil.which("zstd")
        if zstd is None:
            raise OracleSetupError(f"{path}: a zstd-compressed module and no zstd to read it")
        return subprocess.run([zstd, "-dc", str(path)], capture_output=True, check=True).stdout
    return data


def _module_index(modules: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in modules.rglob("*.ko*"):
        name = path.name.split(".ko", 1)[0].replace("-", "_")
        index.setdefault(name, path)
    return index


def _builtin(modules: Path) -> set[str] | None:
    listing = modules / "modules.builtin"
    if not listing.is_file():
        return None
    return {
        Path(line.strip()).name.split(".ko", 1)[0].replace("-", "_")
        for line in listing.read_text().splitlines()
        if line.strip()
    }


def kernel_modules(kernel: Kernel, names: Iterable[str]) -> list[tuple[str, bytes]]:
    """``names`` and their dependencies, decompressed, in load order (dependencies first).

    There is no modules.dep in the initramfs: each module's ``depends=`` modinfo is followed
    here. A module that is not in ``kernel.modules`` is taken as built in when
    modules.builtin lists it, or when there is no modules.builtin (7.3's package has none);
    if it is neither, the guest finds out (no /dev/vda) and /out falls back to the console.
    """
    if kernel.modules is None:
        return []
    index = _module_index(kernel.modules)
    builtin = _builtin(kernel.modules)
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        path = index.get(name)
        if path is None:
            if builtin is not None and name not in builtin and chain:
                raise OracleSetupError(
                    f"module {name} (needed by {chain[-1]}) is neither in {kernel.modules}"
                    " nor in its modules.builtin"
                )
            return
        data = _read_module(path)
        for dep in _modinfo_depends(data):
            visit(dep, (*chain, name))
        order.append((f"{name}.ko", data))

    for n in names:
        visit(n, ())
    return order


# --- the initramfs ------------------------------------------------------------------------

_PREAMBLE = """#!/bin/busybox sh
/bin/busybox echo "{marker}"
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /proc /sys /tmp
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
if [ -f /lib/oracle-modules/order ]; then
  for m in $(cat /lib/oracle-modules/order); do
    insmod /lib/oracle-modules/$m || echo "pkvm-sim-oracle: insmod $m failed"
  done
fi
cd /
(
:
"""

_EPILOGUE = """
)
rc=$?
echo "{exit_marker} $rc"
if [ -e /out ]; then
  n=$(stat -c %s /out)
  i=0
  disk=
  while [ -z "$disk" ] && [ $i -lt 20 ]; do
    for b in /sys/block/vd*; do
      case "$(readlink -f "$b")" in *.virtio_mmio/*) disk=/dev/${{b##*/}};; esac
    done
    [ -n "$disk" ] && [ -b "$disk" ] || {{ disk=; sleep 0.1; }}
    i=$((i + 1))
  done
  if [ -n "$disk" ]; then
    printf '{magic}%d\\n' "$n" | dd of=$disk conv=notrunc,fsync 2>/dev/null &&
      dd if=/out of=$disk bs=1048576 seek=1 conv=notrunc,fsync 2>/dev/null &&
      echo "{disk_marker} $n" || echo "{error_marker} writing $n bytes to $disk"
  else
    echo 1 > /proc/sys/kernel/printk
    echo "{hex_marker} $n"
    hexdump -v -e '32/1 "%02x" "\\n"' /out | sed 's/^/{hex_prefix}/'
    echo "{end_marker}"
  fi
else
  echo "{none_marker}"
fi
sync
poweroff -f
"""


def init_script(payload: str) -> str:
    """/init: the marker, mounts, modules, ``payload`` in a subshell, /out, power-off."""
    pre = _PREAMBLE.format(marker=INIT_MARKER)
    post = _EPILOGUE.format(
        exit_marker=EXIT_MARKER,
        magic=OUT_MAGIC.decode(),
        disk_marker=OUT_DISK_MARKER,
        error_marker=OUT_ERROR_MARKER,
        hex_marker=OUT_HEX_MARKER,
        hex_prefix=HEX_PREFIX,
        end_marker=OUT_END_MARKER,
        none_marker=OUT_NONE_MARKER,
    )
    return pre + payload.rstrip("\n") + "\n" + post


def _file_mode(data: bytes) -> int:
    executable = data[:4] == b"\x7fELF" or data[:2] == b"#!"
    return stat.S_IFREG | (0o755 if executable else 0o644)


def initramfs_entries(
    tools: Tools,
    files: dict[str, bytes | Path],
    init: str,
    modules: Sequence[tuple[str, bytes]] = (),
) -> list[Entry]:
    """The archive's members: /bin/busybox, /dev/console, /init, modules, then ``files``.

    ``files`` maps in-initramfs paths to contents (bytes, or a host file to copy); ELF
    files and scripts are made executable, the rest 0644.
    """
    contents: dict[str, tuple[int, bytes]] = {
        "bin/busybox": (stat.S_IFREG | 0o755, Path(tools.busybox).read_bytes()),
        "init": (stat.S_IFREG | 0o755, init_script(init).encode()),
    }
    if modules:
        contents["lib/oracle-modules/order"] = (
            stat.S_IFREG | 0o644,
            "".join(f"{name}\n" for name, _ in modules).encode(),
        )
        for name, data in modules:
            contents[f"lib/oracle-modules/{name}"] = (stat.S_IFREG | 0o644, data)
    for path, value in files.items():
        rel = path.strip("/")
        if not rel or rel in contents or rel.startswith("dev/"):
            raise OracleSetupError(f"initramfs file {path!r}: empty or reserved path")
        data = Path(value).read_bytes() if isinstance(value, Path) else bytes(value)
        contents[rel] = (_file_mode(data), data)
    dirs = {"bin", "dev", "sbin", "proc", "sys", "tmp"}
    for rel in contents:
        parts = rel.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    entries = [Entry(d, stat.S_IFDIR | 0o755) for d in sorted(dirs)]
    entries.append(Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries += [Entry(rel, mode, data) for rel, (mode, data) in sorted(contents.items())]
    return entries


def build_initramfs(
    tools: Tools,
    files: dict[str, bytes | Path],
    init: str,
    modules: Sequence[tuple[str, bytes]] = (),
) -> Path:
    """A gzip'd newc initramfs running ``init`` (a shell script body), cached by content."""
    import gzip

    archive = cpio_newc(initramfs_entries(tools, files, init, modules))
    digest = hashlib.sha256(archive).hexdigest()[:24]
    out = cache_dir() / "initramfs" / f"{digest}.cpio.gz"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(gzip.compress(archive, compresslevel=6, mtime=0))
        tmp.rename(out)
    now = time.time_ns()  # marks it used (the file system's own clock is coarser)
    os.utime(out, ns=(now, now))
    _prune(out.parent, keep=INITRAMFS_KEEP)
    return out


def _prune(directory: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recently used initramfs files."""
    built = sorted(directory.glob("*.cpio.gz"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in built[keep:]:
        old.unlink(missing_ok=True)


def payload_initramfs(
    kernel: Kernel, tools: Tools, script: str, files: dict[str, bytes | Path] | None = None
) -> Path:
    """``build_initramfs`` with the modules that carry /out back (virtio_mmio, virtio_blk)."""
    return build_initramfs(tools, files or {}, script, kernel_modules(kernel, OUTPUT_MODULES))


# --- running QEMU -------------------------------------------------------------------------


def qemu_argv(
    kernel: Kernel,
    tools: Tools,
    initramfs: Path,
    out_disk: Path,
    *,
    nested: bool,
    protected: bool,
    cmdline_extra: str,
    memory_mib: int,
    cpus: int,
    qemu_extra: Sequence[str] = (),
) -> list[str]:
    machine = "virt,gic-version=3,its=on" + (",virtualization=on" if nested else "")
    append = "console=ttyAMA0 panic=-1 rdinit=/init"
    if protected:
        append += " kvm-arm.mode=protected"
    if cmdline_extra:
        append += " " + cmdline_extra
    return [
        str(tools.qemu),
        "-M", machine,
        "-cpu", "max",
        "-accel", "tcg",
        "-smp", str(cpus),
        "-m", str(memory_mib),
        "-nographic",
        "-no-reboot",
        "-nic", "none",  # no default virtio-net: no option ROM needed, no L1 MSI traffic
        "-kernel", str(kernel.image),
        "-initrd", str(initramfs),
        "-append", append,
        "-drive", f"file={out_disk},format=raw,if=none,id=out",
        "-device", "virtio-blk-device,drive=out",
        *qemu_extra,
    ]  # fmt: skip


def _tail(lines: Sequence[str], n: int = CONSOLE_TAIL, log: Path | None = None) -> str:
    tail = "\n".join(f"  | {line}" for line in list(lines)[-n:]) or "  | (no console output)"
    return tail + (f"\nwhole console: {log}" if log is not None else "")


def _read_output(console_lines: list[str], disk: Path) -> bytes | None:
    """/out from the disk (header + bytes at 1 MiB) or from the console's hex lines."""
    for line in console_lines:
        if line.startswith(OUT_ERROR_MARKER):
            size = disk.stat().st_size - OUT_OFFSET
            raise BootError(
                f"the guest could not write /out: {line} (the disk holds {size >> 20} MiB:"
                f" a larger output_mib?)\n{_tail(console_lines)}",
                "\n".join(console_lines),
            )
        if line.startswith(OUT_DISK_MARKER):
            with open(disk, "rb") as f:
                header = f.read(64).split(b"\n", 1)[0]
                if not header.startswith(OUT_MAGIC):
                    raise BootError(f"output disk {disk}: no header ({header[:16]!r})")
                n = int(header[len(OUT_MAGIC) :])
                f.seek(OUT_OFFSET)
                data = f.read(n)
            if len(data) != n:
                raise BootError(f"output disk {disk}: {len(data)} of {n} bytes")
            return data
        if line.startswith(OUT_HEX_MARKER):
            n = int(line.split()[-1])
            start = console_lines.index(line) + 1
            chunks = []
            for hex_line in console_lines[start:]:
                if hex_line.startswith(OUT_END_MARKER):
                    break
                if hex_line.startswith(HEX_PREFIX):
                    chunks.append(hex_line[len(HEX_PREFIX) :].replace(" ", ""))
            data = bytes.fromhex("".join(chunks))[:n]
            if len(data) != n:
                raise BootError(f"/out on the console: {len(data)} of {n} bytes")
            return data
        if line.startswith(OUT_NONE_MARKER):
            return None
    raise BootError(
        f"the guest stopped while returning /out; last console lines:\n{_tail(console_lines)}",
        "\n".join(console_lines),
    )


def run_l1(
    kernel: Kernel,
    tools: Tools,
    initramfs: Path,
    *,
    nested: bool = True,
    protected: bool = False,
    cmdline_extra: str = "",
    memory_mib: int = 2048,
    cpus: int = 2,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    init_timeout_s: float = INIT_TIMEOUT_S,
    output_mib: int = 64,
    qemu_extra: Sequence[str] = (),
    progress: Progress = lambda line: None,
    after_power_off: Callable[[bytes | None], None] | None = None,
) -> BootResult:
    """Boot ``kernel`` with ``initramfs`` (from ``build_initramfs``) until it powers off.

    Raises :class:`BootTimeout` (QEMU killed, with its process group) when the guest has
    not reached /init within ``init_timeout_s`` or not powered off within ``timeout_s``,
    and :class:`BootError` when it stopped without reaching /init or before the payload
    finished; both carry the last console lines. ``output_mib`` bounds /out (the disk's
    size); ``qemu_extra`` is appended to QEMU's arguments (e.g. ``-trace``).

    ``after_power_off(out)``: QEMU runs with ``-no-shutdown``, and once the guest has said
    it powers off (:data:`POWER_OFF_MARKER`) the hook is called with its /out while QEMU is
    still alive (the VM stopped, its RAM and registers readable through a monitor the
    caller put in ``qemu_extra``); QEMU is killed when the hook returns or raises, if it
    has not quit. The hook bounds its own waits.
    """
    runs = cache_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    disk = runs / f"out-{os.getpid()}-{threading.get_ident()}.img"
    with open(disk, "wb") as f:
        f.truncate(OUT_OFFSET + (output_mib << 20))
    argv = qemu_argv(
        kernel,
        tools,
        initramfs,
        disk,
        nested=nested,
        protected=protected,
        cmdline_extra=cmdline_extra,
        memory_mib=memory_mib,
        cpus=cpus,
        qemu_extra=[*qemu_extra, *(["-no-shutdown"] if after_power_off else [])],
    )
    mode = "protected" if protected else ("nested" if nested else "no EL2")
    progress(f"boot {kernel.name} ({kernel.release or kernel.version}, {mode})")
    try:
        log = runs / f"{kernel.name}-{mode.replace(' ', '-')}.console"
        init_s = min(init_timeout_s, timeout_s)
        return _run(argv, disk, log, timeout_s, init_s, kernel, progress, after_power_off)
    finally:
        disk.unlink(missing_ok=True)


def _run(
    argv: list[str],
    disk: Path,
    log: Path,
    timeout_s: float,
    init_timeout_s: float,
    kernel: Kernel,
    progress: Progress,
    after_power_off: Callable[[bytes | None], None] | None = None,
) -> BootResult:
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise OracleSetupError(f"cannot run {argv[0]}: {exc}") from None
    lines: list[str] = []
    recent: deque[str] = deque(maxlen=CONSOLE_TAIL)
    init_seen = threading.Event()
    init_at: list[float] = []
    powered_off = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
            lines.append(line)
            recent.append(line)
            if not init_seen.is_set() and INIT_MARKER in line:
                init_at.append(time.monotonic() - start)
                init_seen.set()
            if init_seen.is_set() and POWER_OFF_MARKER in line:
                powered_off.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    timed_out = None
    try:
        while proc.poll() is None:
            now = time.monotonic() - start
            if not init_seen.is_set() and now > init_timeout_s:
                timed_out = f"no /init after {init_timeout_s:.0f} s"
                break
            if now > timeout_s:
                timed_out = f"not powered off after {timeout_s:.0f} s"
                break
            if after_power_off is not None and powered_off.is_set():
                after_power_off(_read_output(list(lines), disk))
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.2)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        thread.join(timeout=5)
    elapsed = time.monotonic() - start
    what = f"{kernel.name} kernel ({kernel.image})"
    console = "\n".join(lines)
    log.write_text(console + "\n")  # the latest boot's whole console, for a post-mortem
    if timed_out:
        raise BootTimeout(
            f"QEMU killed: {what} {timed_out} (timeout {timeout_s:.0f} s, /init within"
            f" {init_timeout_s:.0f} s); last console lines:\n{_tail(recent, log=log)}",
            console,
        )
    if not init_seen.is_set():
        raise BootError(
            f"{what} did not reach /init (QEMU exit {proc.returncode} after {elapsed:.1f} s);"
            f" last console lines:\n{_tail(recent, log=log)}",
            console,
        )
    status = next((m for ln in lines if (m := _EXIT.search(ln))), None)
    if status is None:
        raise BootError(
            f"{what} stopped before the payload finished (QEMU exit {proc.returncode} after"
            f" {elapsed:.1f} s); last console lines:\n{_tail(recent, log=log)}",
            console,
        )
    result = BootResult(
        console=console,
        kvm_mode=kvm_mode(console),
        output=_read_output(lines, disk),
        payload_status=int(status.group(1)),
        init_s=init_at[0],
        elapsed_s=elapsed,
    )
    progress(
        f"boot {kernel.name}: /init after {result.init_s:.1f} s, off after {elapsed:.1f} s,"
        f" KVM: {result.kvm_mode or 'none'}"
    )
    return result
