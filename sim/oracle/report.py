"""reports/oracle.md: what the oracle ran, what it compared, and every divergence class.

:func:`render` takes one :class:`KernelRun` per kernel (and mode) the oracle ran: the
exact ``uname -r``, QEMU's version, the streams by source, one :class:`Comparison` per
stream, the wall time, and a minimal stream per divergence class (``minimise``). It
lists every class with its minimal stream as decoded commands, the kernel source line
that explains it and its resolution. Rendering is deterministic: same runs, same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sim.oracle.compare import (
    KERNEL_DIFFERENCES,
    KIND_DESCRIPTIONS,
    KNOWN,
    Comparison,
    Known,
    describe_command,
)
from sim.oracle.stream import Stream


@dataclass
class KernelRun:
    kernel: str  # exact uname -r of the L1 kernel
    qemu: str  # QEMU's version string
    mode: str  # e.g. "nested KVM (VHE)", "pKVM (protected hVHE)"
    streams: Sequence[Stream]
    sources: dict[str, str]  # stream name -> source (real-guests, random, ...)
    comparisons: Sequence[Comparison]
    wall_time: float  # seconds, boot included
    minimal: dict[str, Stream] = field(default_factory=dict)  # class key -> reproducer


@dataclass(frozen=True)
class Resolved:
    """A divergence the oracle found that the model no longer has."""

    key: str
    title: str
    source: str
    resolution: str


# The divergences real KVM showed that the kernel-generation parameter now models.
RESOLVED: tuple[Resolved, ...] = tuple(
    Resolved(k.key, k.title, k.source, k.resolution) for k in KERNEL_DIFFERENCES
)


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _class_description(key: str) -> str:
    phase, _, what = key.partition(":")
    desc = KIND_DESCRIPTIONS.get(what.split("+")[0])
    if desc is None:
        desc = f"register {what}" if what.startswith(("GITS_", "GICR")) else what
    return f"{desc} differs ({phase})"


def render(
    runs: Sequence[KernelRun],
    *,
    known: Sequence[Known] = KNOWN,
    resolved: Sequence[Resolved] = RESOLVED,
    title: str = "pkvm-sim oracle: real KVM beside the model",
) -> str:
    lines = [f"# {title}", ""]
    lines += [
        "Each stream ran through real KVM (a C VMM in an L1 kernel under QEMU) and through",
        "`sim.its.VirtualITS` configured the same way; guest RAM after each phase was",
        "compared word by word, decoded as the table that lives there, with the registers,",
        "CREADR after each command, ioctl return values and restore results.",
        "",
        "## Runs",
        "",
        "| kernel (`uname -r`) | QEMU | mode | streams | commands | bytes compared"
        " | mismatches (explained / unexplained) | wall time |",
        "|---|---|---|---:|---:|---:|---|---:|",
    ]
    for run in runs:
        cmds = sum(len(s.commands) for s in run.streams)
        compared = sum(c.bytes_compared for c in run.comparisons)
        mism = sum(len(c.mismatches) for c in run.comparisons)
        unexplained = sum(len(c.unexplained) for c in run.comparisons)
        lines.append(
            f"| {run.kernel} | {run.qemu} | {run.mode} | {len(run.streams)} | {cmds}"
            f" | {_fmt_bytes(compared)} | {mism - unexplained} / {unexplained}"
            f" | {run.wall_time:.1f} s |"
        )
    lines += ["", "## Streams by source", ""]
    lines += [
        "| kernel | source | streams | commands | diverging streams |",
        "|---|---|---:|---:|---:|",
    ]
    for run in runs:
        by_source: dict[str, list[Stream]] = {}
        for s in run.streams:
            by_source.setdefault(run.sources.get(s.name, "other"), []).append(s)
        diverging = {c.name for c in run.comparisons if c.mismatches}
        for source in sorted(by_source):
            ss = by_source[source]
            lines.append(
                f"| {run.kernel} | {source} | {len(ss)} | {sum(len(s.commands) for s in ss)}"
                f" | {sum(s.name in diverging for s in ss)} |"
            )
    lines += ["", "## Divergence classes", ""]
    classes: dict[str, list[tuple[KernelRun, Comparison]]] = {}
    for run in runs:
        for c in run.comparisons:
            for key in c.classes:
                classes.setdefault(key, []).append((run, c))
    if not classes:
        lines += ["No mismatch: every stream gave the same bytes on every kernel.", ""]
    for key in sorted(classes):
        hits = classes[key]
        explained = next((c.explained[key] for _, c in hits if key in c.explained), None)
        kernels = sorted({run.kernel for run, _ in hits})
        lines += [f"### `{key}`: {_class_description(key)}", ""]
        lines.append(f"- streams: {len(hits)} ({', '.join(kernels)})")
        _, first = hits[0]
        example = first.classes[key][0]
        lines.append(
            f"- first: stream `{first.name}` at {example.where}: {first.labels[0]} "
            f"`{example.a}`, {first.labels[1]} `{example.b}`"
        )
        if explained is not None:
            lines.append(f"- explained: {explained.title}. {explained.reason}")
            lines.append(f"- kernel source: {explained.source}")
            lines.append(f"- resolution: {explained.resolution}")
        else:
            lines.append("- **unexplained**: no documented difference matches this class")
        minimal = next((run.minimal[key] for run, _ in hits if key in run.minimal), None)
        if minimal is not None:
            lines += [
                "",
                f"Minimal stream `{minimal.name}` ({len(minimal.commands)} commands):",
                "",
            ]
            lines += ["```"] + [describe_command(h) for h in minimal.commands] + ["```"]
            for rs in minimal.restores:
                patches = ", ".join(f"{p.gpa:#x}={p.data}" for p in rs.patches)
                lines.append(f"restore `{rs.name}`" + (f" with {patches}" if patches else ""))
        lines.append("")
    if known:
        lines += ["## Documented differences", ""]
        for k in known:
            lines.append(
                f"- `{k.key}` ({', '.join(k.kernels)}): {k.title}. {k.reason} ({k.source})"
            )
        lines.append("")
    if resolved:
        lines += ["## Resolved divergences", ""]
        lines += ["| class | divergence | kernel source | resolution |", "|---|---|---|---|"]
        for x in resolved:
            lines.append(f"| `{x.key}` | {x.title} | {x.source} | {x.resolution} |")
        lines.append("")
    return "\n".join(lines)


def write(path: Path, runs: Sequence[KernelRun], **kw) -> None:
    """Render and write atomically (nothing half-written)."""
    text = render(runs, **kw)
    tmp = path.with_suffix(path.suffix + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text)
    tmp.replace(path)
