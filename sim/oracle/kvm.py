"""Streams through real KVM: the job file for ``sim/oracle/vmm/vmm.c`` and its output.

``encode_job`` turns :class:`~sim.oracle.stream.Stream` objects into the VMM's line
format (documented in the header of ``vmm.c``), resolving register names to MMIO
addresses and each command to the queue slot the L2 program writes it to.
``decode_output`` turns what the VMM printed back into
:class:`~sim.oracle.stream.Observation` objects (``source="kvm"``). ``build_vmm``
cross-compiles the VMM (cached by source hash); ``run_streams`` boots an L1 kernel
once and replays every stream in it, a fresh VM per stream.

The L2 program writes command *k* of a stream at ``CBASER.addr + (CWRITER0 + 32 k)
mod size``, where CBASER and CWRITER0 are the last values the stream's ``regs``
wrote (0 if none) and size is ``(CBASER[7:0] + 1) * 4 KiB``: what a guest that keeps
its own copy of CWRITER does.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sim.oracle.boot import payload_initramfs, run_l1
from sim.oracle.errors import OracleSetupError, Progress
from sim.oracle.setup import Kernel, Tools, cache_dir
from sim.oracle.stream import (
    GICR_BASE,
    ITS_BASE,
    Observation,
    Phase,
    RestoreResult,
    Stream,
)

VMM_DIR = Path(__file__).parent / "vmm"
VMM_SOURCES = ("vmm.c", "kvm.c", "job.c", "l2.S")  # and vmm.h
VMM_HEADERS = ("vmm.h",)
CROSS_CC = "aarch64-linux-gnu-gcc"
GICR_STRIDE = 0x2_0000  # RD_base + SGI_base frames per vCPU
FILL_CHUNK = 32 << 10  # bytes of fill per job line (the VMM's line buffer is 1 MiB)

# (offset, width in bits) of the registers a stream may write.
GITS_REGS = {
    "CTLR": (0x0, 32),
    "IIDR": (0x4, 32),
    "TYPER": (0x8, 64),
    "CBASER": (0x80, 64),
    "CWRITER": (0x88, 64),
    "CREADR": (0x90, 64),
    **{f"BASER{n}": (0x100 + 8 * n, 64) for n in range(8)},
}
GICR_REGS = {
    "CTLR": (0x0, 32),
    "IIDR": (0x4, 32),
    "TYPER": (0x8, 64),
    "STATUSR": (0x10, 32),
    "WAKER": (0x14, 32),
    "PROPBASER": (0x70, 64),
    "PENDBASER": (0x78, 64),
}
_REG = re.compile(r"^(?:GITS_(?P<its>\w+)|GICR(?P<cpu>\d+)_(?P<rd>\w+))$")
_NAME = re.compile(r"^[^\s]{1,120}$")


class KvmOracleError(OracleSetupError):
    """A job that cannot be encoded, output that cannot be decoded, or a failed run."""


def reg_address(reg: str, nr_vcpus: int) -> tuple[int, int]:
    """The guest physical address and access width of ``GITS_<reg>`` / ``GICR<n>_<reg>``."""
    m = _REG.match(reg)
    if m and m["its"] in GITS_REGS:
        off, width = GITS_REGS[m["its"]]
        return ITS_BASE + off, width
    if m and m["rd"] in GICR_REGS and int(m["cpu"]) < nr_vcpus:
        off, width = GICR_REGS[m["rd"]]
        return GICR_BASE + int(m["cpu"]) * GICR_STRIDE + off, width
    raise KvmOracleError(
        f"register {reg!r}: expected GITS_<{'|'.join(GITS_REGS)}> or "
        f"GICR<0..{nr_vcpus - 1}>_<{'|'.join(GICR_REGS)}>"
    )


def _hex_bytes(data: str, what: str) -> str:
    if len(data) % 2 or not re.fullmatch(r"[0-9a-fA-F]*", data):
        raise KvmOracleError(f"{what}: expected an even number of hex digits")
    return data.lower()


def _fill_lines(tag: str, gpa: int, data: str, what: str) -> Iterable[str]:
    data = _hex_bytes(data, what)
    step = 2 * FILL_CHUNK
    for i in range(0, len(data), step):
        yield f"{tag} {gpa + i // 2:x} {data[i : i + step]}"


def _guest_stores(gpa: int, data: str) -> list[str]:
    """Guest writes as the vCPU's stores: 64-bit where aligned, bytes elsewhere."""
    raw = bytes.fromhex(data)
    out, i = [], 0
    while i < len(raw):
        if (gpa + i) % 8 == 0 and i + 8 <= len(raw):
            out.append(f"W 64 {gpa + i:x} {int.from_bytes(raw[i : i + 8], 'little'):x}")
            i += 8
        else:
            out.append(f"W 8 {gpa + i:x} {raw[i]:x}")
            i += 1
    return out


def _encode_stream(s: Stream) -> list[str]:
    if not _NAME.match(s.name):
        raise KvmOracleError(f"stream name {s.name!r}: expected 1-120 non-blank characters")
    if s.ram_size % 4096 or s.ram_base % 4096:
        raise KvmOracleError(f"stream {s.name}: ram_base/ram_size must be 4 KiB aligned")
    out = [
        f"S {s.name}",
        f"V {s.nr_vcpus} {int(s.protected)} {s.ram_base:x} {s.ram_size:x} "
        f"{int(s.save)} {int(s.save_pending)}",
    ]
    for f in s.fill:
        out += _fill_lines("F", f.gpa, f.data, f"stream {s.name}: fill at {f.gpa:#x}")
    for gpa, npages in s.share:
        out += [f"M {gpa + 4096 * i:x}" for i in range(npages)]
    cbaser = cwriter = 0
    for w in s.regs:
        addr, width = reg_address(w.reg, s.nr_vcpus)
        if not 0 <= w.value < 1 << width:
            raise KvmOracleError(f"stream {s.name}: {w.reg} = {w.value:#x} exceeds {width} bits")
        out.append(f"W {width} {addr:x} {w.value:x}")
        if w.reg == "GITS_CBASER":
            cbaser = w.value
        elif w.reg == "GITS_CWRITER":
            cwriter = w.value
    qbase = cbaser & ((1 << 52) - 1) & ~0xFFF  # GITS_CBASER Physical_Address [51:12]
    qsize = ((cbaser & 0xFF) + 1) * 4096
    offset = (cwriter & 0xFFFE0) % qsize
    for i, cmd in enumerate(s.commands):
        if len(cmd) != 64 or not re.fullmatch(r"[0-9a-fA-F]{64}", cmd):
            raise KvmOracleError(f"stream {s.name}: command {i}: expected 64 hex digits")
        nxt = (offset + 32) % qsize
        out.append(f"C {qbase + offset:x} {nxt:x} {cmd.lower()}")
        offset = nxt
    for f in s.fill_after:
        out += _guest_stores(
            f.gpa, _hex_bytes(f.data, f"stream {s.name}: fill_after at {f.gpa:#x}")
        )
    out += [f"R {gpa:x}" for gpa in s.host_reads]
    for r in s.restores:
        if not _NAME.match(r.name):
            raise KvmOracleError(
                f"stream {s.name}: restore name {r.name!r}: expected 1-120 non-blank characters"
            )
        out.append(f"X {r.name}")
        for p in r.patches:
            out += _fill_lines("P", p.gpa, p.data, f"stream {s.name}: patch at {p.gpa:#x}")
        for i, cmd in enumerate(r.commands):
            if not re.fullmatch(r"[0-9a-fA-F]{64}", cmd):
                raise KvmOracleError(
                    f"stream {s.name}: restore {r.name}: command {i}: expected 64 hex digits"
                )
            out.append(f"Q {cmd.lower()}")
    out.append("E")
    return out


def encode_job(streams: Iterable[Stream]) -> bytes:
    """The job file for the VMM: every stream, in order."""
    lines: list[str] = []
    for s in streams:
        lines += _encode_stream(s)
    return ("\n".join(lines) + "\n").encode()


def _int(tok: str, lineno: int, line: str, base: int = 16) -> int:
    try:
        return int(tok, base)
    except ValueError:
        raise KvmOracleError(f"VMM output line {lineno}: bad number {tok!r} in {line!r}") from None


def decode_output(output: str | bytes) -> list[Observation]:
    """Observations from the VMM's output (console noise around it is ignored).

    Records start at the ``K`` line and end at ``Z``; a stream the VMM abandoned
    carries its ``e`` message in ``Observation.error``.
    """
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    try:
        start = next(i for i, ln in enumerate(lines) if ln.startswith("K "))
    except StopIteration:
        raise KvmOracleError("VMM output: no 'K <kernel>' line (the VMM did not start)") from None
    kernel = lines[start][2:].strip()
    obs: list[Observation] = []
    cur: dict | None = None
    phase: dict | None = None  # the dict the next 'm' and 'r' lines go to
    done = False
    for lineno, line in enumerate(lines[start + 1 :], start + 2):
        if not line or line.startswith("#"):
            continue
        tag, _, rest = line.partition(" ")
        args = rest.split()
        if tag == "Z":
            done = True
            break
        if tag == "S":
            if cur is not None:
                raise KvmOracleError(
                    f"VMM output line {lineno}: stream {rest!r} starts inside {cur['name']!r}"
                )
            cur = {
                "name": rest,
                "source": "kvm",
                "kernel": kernel,
                "regs": {},
                "restores": [],
                "host_reads": {},
            }
            phase = cur
            continue
        if cur is None:
            raise KvmOracleError(f"VMM output line {lineno}: {line!r} outside a stream")
        if tag == "c":
            # the first VM's, or (after an 'x' record) the restore's commands
            target = phase if "resave_ret" in phase else cur
            target["creadr"] = tuple(_int(a, lineno, line) for a in args)
        elif tag == "r" and len(args) == 2:
            phase["regs"][args[0]] = _int(args[1], lineno, line)
        elif tag == "h" and len(args) == 2 and args[1] in ("ok", "fault"):
            cur["host_reads"][_int(args[0], lineno, line)] = args[1]
        elif tag == "p" and len(args) == 2 and args[0] in ("commands", "save", "save_pending"):
            phase = {"ret": _int(args[1], lineno, line, 10), "memory": {}, "regs": phase["regs"]}
            cur[args[0]] = phase
        elif tag == "m" and len(args) == 2 and "memory" in phase:
            phase["memory"][_int(args[0], lineno, line)] = _int(args[1], lineno, line)
        elif tag == "x" and len(args) == 3:
            phase = {
                "name": args[0],
                "ret": _int(args[1], lineno, line, 10),
                "resave_ret": None if args[2] == "-" else _int(args[2], lineno, line, 10),
                "memory": {},
                "regs": {},
            }
            cur["restores"].append(phase)
        elif tag == "e":
            cur["error"] = rest
        elif tag == "E":
            obs.append(_observation(cur))
            cur = phase = None
        else:
            raise KvmOracleError(f"VMM output line {lineno}: unexpected record {line!r}")
    if cur is not None:
        raise KvmOracleError(
            f"VMM output ends inside stream {cur['name']!r} (the VMM or QEMU died)"
        )
    if not done:
        raise KvmOracleError(f"VMM output ends after {len(obs)} streams without the 'Z' end marker")
    return obs


def _observation(d: dict) -> Observation:
    def phase(p: dict | None) -> Phase | None:
        return None if p is None else Phase(ret=p["ret"], memory=p["memory"])

    return Observation(
        name=d["name"],
        source="kvm",
        kernel=d["kernel"],
        creadr=d.get("creadr", ()),
        commands=phase(d.get("commands")) or Phase(),
        regs=d["regs"],
        save=phase(d.get("save")),
        save_pending=phase(d.get("save_pending")),
        restores=tuple(
            RestoreResult(
                name=r["name"],
                ret=r["ret"],
                resave_ret=r["resave_ret"],
                memory=r["memory"],
                regs=r["regs"],
                creadr=r.get("creadr", ()),
            )
            for r in d["restores"]
        ),
        host_reads=d["host_reads"],
        error=d.get("error", ""),
    )


def format_output(observations: Iterable[Observation]) -> str:
    """The VMM's output format for ``observations`` (what ``decode_output`` reads back)."""
    obs = list(observations)
    kernels = {o.kernel for o in obs}
    if len(kernels) > 1:
        raise KvmOracleError(f"observations from several kernels: {sorted(kernels)}")
    out = [f"K {kernels.pop() if kernels else ''}"]

    def words(mem: dict[int, int]) -> list[str]:
        return [f"m {gpa:x} {w:x}" for gpa, w in sorted(mem.items())]

    for o in obs:
        out += [f"S {o.name}", "c" + "".join(f" {v:x}" for v in o.creadr)]
        out += [f"h {gpa:x} {r}" for gpa, r in o.host_reads.items()]
        out += [f"r {k} {v:x}" for k, v in o.regs.items()]
        if not o.error or o.commands.memory:
            out += [f"p commands {o.commands.ret}", *words(o.commands.memory)]
        for tag, ph in (("save", o.save), ("save_pending", o.save_pending)):
            if ph is not None:
                out += [f"p {tag} {ph.ret}", *words(ph.memory)]
        for r in o.restores:
            resave = "-" if r.resave_ret is None else str(r.resave_ret)
            out += [f"x {r.name} {r.ret} {resave}"]
            if r.creadr:
                out.append("c" + "".join(f" {v:x}" for v in r.creadr))
            out += [f"r {k} {v:x}" for k, v in r.regs.items()]
            out += words(r.memory)
        if o.error:
            out.append(f"e {o.error}")
        out.append("E")
    out.append("Z")
    return "\n".join(out) + "\n"


def vmm_source_hash() -> str:
    h = hashlib.sha256()
    for name in VMM_SOURCES + VMM_HEADERS:
        h.update(name.encode() + b"\0" + (VMM_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def build_vmm(tools: Tools, cache: Path | None = None) -> Path:
    """Cross-compile the VMM statically with ``tools.cc``, cached by the hash of its sources."""
    out = (cache or cache_dir()) / "vmm" / f"vmm-{vmm_source_hash()}"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    argv = [str(tools.cc), "-static", "-O2", "-Wall", "-o", str(tmp)]
    argv += [str(VMM_DIR / n) for n in VMM_SOURCES]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise KvmOracleError(f"the arm64 cross compiler {tools.cc} is not installed") from None
    if r.returncode:
        tmp.unlink(missing_ok=True)
        raise KvmOracleError(f"building the VMM failed ({' '.join(argv)}):\n{r.stderr.strip()}")
    tmp.replace(out)
    return out


@dataclass(frozen=True)
class RunStats:
    """Where the time of one boot went."""

    streams: int
    boot_s: float  # QEMU start to power-off
    init_s: float  # QEMU start to /init
    stream_us: tuple[int, ...]  # the VMM's own clock, per stream
    kvm_mode: str | None
    phase_us: dict[str, int]  # summed over streams: create, run, dump, save, ..., restore
    # What the kernel logged (WARN, BUG, Oops) while a stream ran, by stream name.
    kernel_log: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def vmm_s(self) -> float:
        return sum(self.stream_us) / 1e6


# QEMU's CPU for pKVM boots. pKVM gives every VM the CPU's whole IPA range
# (arch/arm64/kvm/mmu.c:kvm_init_ipa_range: phys_shift = kvm_ipa_limit when
# is_protected_kvm_enabled()), and kvm_stage2_destroy() walks that range in 1 GiB steps
# at VM destruction: with -cpu max (52-bit PARange, "IPA Size Limit: 52 bits") that is
# 4M steps, 23 s of L1 system time per VM under TCG. Cortex-A76 (ARMv8.2, VHE, 40-bit
# PARange) takes 1K steps; the observations were identical on both (pkvm_streams, 7.3.4).
PKVM_CPU = "cortex-a76"

_PAYLOAD = "/vmm /job {timeout} > /out 2> /vmm.err; rc=$?; cat /vmm.err; exit $rc\n"
STREAM_TIMEOUT_S = 300  # the VMM kills a stream (its child process) running longer
_US = re.compile(r"^# us (\d+)\r?$", re.M)
_LAP = re.compile(r"^# t (\w+) (\d+)\r?$", re.M)


def kernel_trouble(output: str) -> dict[str, tuple[str, ...]]:
    """What the kernel logged at warning level or worse (WARN, BUG, RCU stalls) while
    each stream ran: the VMM's ``# kernel`` lines after that stream, by stream name."""
    out: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        if line.startswith("S "):
            current = line[2:].strip()
        elif line.startswith("# kernel ") and current is not None:
            out.setdefault(current, []).append(line[len("# kernel ") :].strip())
    return {k: tuple(v) for k, v in out.items()}


def _laps(text: str) -> dict[str, int]:
    laps: dict[str, int] = {}
    for label, us in _LAP.findall(text):
        laps[label] = laps.get(label, 0) + int(us)
    return laps


def run_streams_stats(
    kernel: Kernel,
    tools: Tools,
    streams: list[Stream],
    *,
    protected_mode: bool,
    timeout_s: float,
    progress: Progress | None = None,
    cpu: str | None = None,
    stream_timeout_s: int = STREAM_TIMEOUT_S,
) -> tuple[list[Observation], RunStats]:
    """:func:`run_streams`, and where the time went; ``cpu`` overrides QEMU's ``-cpu``."""
    say = progress or (lambda line: None)
    if any(s.protected for s in streams) and not protected_mode:
        raise KvmOracleError("protected streams need protected_mode (kvm-arm.mode=protected)")
    job = encode_job(streams)
    vmm = build_vmm(tools)
    initramfs = payload_initramfs(
        kernel, tools, _PAYLOAD.format(timeout=int(stream_timeout_s)), {"vmm": vmm, "job": job}
    )
    say(f"kvm: {len(streams)} streams, {len(job) >> 10} KiB of job, one boot")
    result = run_l1(
        kernel,
        tools,
        initramfs,
        nested=True,
        protected=protected_mode,
        timeout_s=timeout_s,
        progress=say,
        # No lockup detector: under TCG on a shared host a starved vCPU thread looks
        # like a hard lockup, and the detector's backtraces flood the console.
        cmdline_extra="nowatchdog",
        qemu_extra=("-cpu", cpu) if cpu else ("-cpu", PKVM_CPU) if protected_mode else (),
    )
    if result.kvm_mode is None or result.protected != protected_mode:
        raise KvmOracleError(
            f"{kernel.describe()}: KVM initialised as {result.kvm_mode or 'nothing'}, expected"
            f" {'protected' if protected_mode else 'nested (VHE/nVHE)'} mode"
        )
    if result.payload_status or result.output is None:
        tail = "\n".join(result.console.splitlines()[-10:])
        raise KvmOracleError(f"the VMM exited with status {result.payload_status}:\n{tail}")
    obs = decode_output(result.output)
    if [o.name for o in obs] != [s.name for s in streams]:
        raise KvmOracleError(f"the VMM reported {len(obs)} streams for {len(streams)} asked")
    text = result.output.decode(errors="replace")
    trouble = kernel_trouble(text)
    for name, lines in trouble.items():
        say(f"kvm: the kernel logged while stream {name} ran: {lines[0]}")
    obs = [
        o.model_copy(update={"error": f"{o.error}; kernel: {trouble[o.name][0]}"})
        if o.error and o.name in trouble
        else o
        for o in obs
    ]
    stats = RunStats(
        streams=len(obs),
        boot_s=result.elapsed_s,
        init_s=result.init_s,
        stream_us=tuple(int(m) for m in _US.findall(text)),
        kvm_mode=result.kvm_mode,
        phase_us=_laps(text),
        kernel_log=trouble,
    )
    say(
        f"kvm: {stats.streams} streams in {stats.vmm_s:.1f} s of VMM time"
        f" ({stats.boot_s:.1f} s boot to power-off, /init at {stats.init_s:.1f} s)"
    )
    return obs, stats


def run_streams(
    kernel: Kernel,
    tools: Tools,
    streams: list[Stream],
    *,
    protected_mode: bool,
    timeout_s: float,
    progress: Progress | None = None,
) -> list[Observation]:
    """Boot ``kernel`` once (nested under QEMU, pKVM if ``protected_mode``) and replay
    every stream in it through real KVM, a fresh VM per stream."""
    return run_streams_stats(
        kernel,
        tools,
        streams,
        protected_mode=protected_mode,
        timeout_s=timeout_s,
        progress=progress,
    )[0]
