"""One kernel's oracle run, judged: the kernel's observations against the model's.

:func:`evaluate` runs every stream through the model with the kernel's generation,
compares it with what the kernel did, and, given a way to run streams on the kernel
again (``rerun``, one boot per call), shrinks the first stream of every divergence class
to a minimal reproducer. The result is a :class:`~sim.oracle.report.KernelRun` for
:func:`sim.oracle.report.render`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sim.oracle.compare import KNOWN, Comparison, Known, compare, minimise_batch
from sim.oracle.model import observe
from sim.oracle.report import KernelRun
from sim.oracle.stream import Observation, Stream

Rerun = Callable[[list[Stream]], list[Observation]]


def evaluate(
    sources: Mapping[str, Sequence[Stream]],
    kvm: Sequence[Observation],
    *,
    kernel: str,
    qemu: str,
    mode: str,
    wall_time: float,
    rerun: Rerun | None = None,
    known: Sequence[Known] = KNOWN,
) -> KernelRun:
    """``kvm`` holds one observation per stream of ``sources``, in the same order."""
    streams = [s for ss in sources.values() for s in ss]
    source_of = {s.name: src for src, ss in sources.items() for s in ss}
    if [o.name for o in kvm] != [s.name for s in streams]:
        raise ValueError("kvm observations do not match the streams one for one, in order")
    comparisons: list[Comparison] = [
        compare(obs, observe(s, kernel=kernel), s, known)
        for s, obs in zip(streams, kvm, strict=True)
    ]
    minimal: dict[str, Stream] = {}
    if rerun is not None:
        for s, c in zip(streams, comparisons, strict=True):
            for key in c.classes:
                if key in minimal:
                    continue

                def diverges(cands: list[Stream], key: str = key) -> list[bool]:
                    return [
                        key in compare(o, observe(x, kernel=kernel), x, known).classes
                        for x, o in zip(cands, rerun(cands), strict=True)
                    ]

                minimal[key] = minimise_batch(s, diverges)
    return KernelRun(
        kernel=kernel,
        qemu=qemu,
        mode=mode,
        streams=streams,
        sources=source_of,
        comparisons=comparisons,
        wall_time=wall_time,
        minimal=minimal,
    )
