"""The kernel-replacement section: what a SAVE_TABLES after hibernate-resume or kexec
corrupts, per proposal, read off the audit's byte-exact violations.

For each scenario with ``workload.events`` every proposal runs with an honest host; the
integrity violations (guest data the host or a DMA master wrote) and the secret bytes
the host's stage-2 could read are counted, with the stale DTEs KVM kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.scenario import Scenario


@dataclass(frozen=True)
class KernelEventOutcome:
    proposal: str
    stale_devices: tuple[str, ...]  # DeviceIDs KVM maps at an ITT the kernel does not use
    stale_pending_tables: int  # redistributors whose PENDBASER is not the kernel's table
    written_bytes: int  # guest data (secret or kernel data) the host or DMA wrote
    written_secret_bytes: int
    writers: tuple[str, ...]
    victims: tuple[str, ...]
    exposed_peak_bytes: int  # secret bytes the host's stage-2 could read at once
    baseline_written_bytes: int  # the same without the kernel events
    baseline_exposed_peak_bytes: int
    translations: str  # kept / expected after migration
    command_errors: dict[str, int]


def distinct_bytes(violations) -> int:
    """Guest bytes written, each (machine, address) once however often it was written."""
    return len({(v.machine, a) for v in violations for a in range(v.addr, v.addr + v.length)})


def outcome(scenario: Scenario, proposal: str) -> KernelEventOutcome:
    """One proposal's run of a kernel-replacement scenario with an honest host, beside the
    same scenario without its events (module-level: a sim.parallel job)."""
    from sim.matrix import with_attack
    from sim.run import collect, simulate

    honest = with_attack(scenario, None)
    workload = honest.workload.model_copy(update={"events": []})
    baseline = honest.model_copy(update={"workload": workload})
    world = simulate(honest, proposal)
    result = collect(world)
    written = [v for v in world.auditor.all() if v.kind == "integrity"]
    base_world = simulate(baseline, proposal)
    base_written = [v for v in base_world.auditor.all() if v.kind == "integrity"]
    stale = sorted({d for e in world.kernel_events for d in e["stale_devices"]})
    pend = {r for e in world.kernel_events for r in e["stale_pending_tables"]}
    c = result.correctness
    return KernelEventOutcome(
        proposal=proposal,
        stale_devices=tuple(stale),
        stale_pending_tables=len(pend),
        written_bytes=sum(v.length for v in written),
        written_secret_bytes=sum(v.length for v in written if v.victim.startswith("secret")),
        writers=tuple(sorted({v.actor for v in written})),
        victims=tuple(sorted({v.victim for v in written})),
        exposed_peak_bytes=result.exposure.peak_exposed_bytes,
        baseline_written_bytes=distinct_bytes(base_written),
        baseline_exposed_peak_bytes=collect(base_world).exposure.peak_exposed_bytes,
        translations=f"{c.ok_after_migration}/{c.expected_translations}",
        command_errors=c.command_errors,
    )


def outcomes(scenario: Scenario) -> list[KernelEventOutcome]:
    return [outcome(scenario, p) for p in scenario.proposals]


def section(scenario: Scenario, rows: list[KernelEventOutcome]) -> list[str]:
    events = ", ".join(f"`{e.action}` at {e.at_ms:g} ms" for e in scenario.workload.events)
    out = [
        f"## Kernel replacement: `{scenario.name}` (seed {scenario.seed},"
        f" kernel {scenario.kernel})",
        "",
        f"> {scenario.question}",
        "",
        f"Events: {events}; migration at {scenario.migration.at_ms:g} ms; honest host. Bytes",
        "are the audit's integrity violations (guest data, secret or kernel data, that the",
        "host or a DMA master wrote, each byte once per machine; `pkvm-sim audit` lists each",
        "with its chain); in brackets the same scenario without the events.",
        "",
        "| proposal | stale DTEs | stale pending tables | guest data written (B) |"
        " of it secret (B) | by | peak secret B exposed | translations kept |"
        " ITS command errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        errors = ", ".join(f"{k} x{v}" for k, v in r.command_errors.items()) or "none"
        out.append(
            f"| `{r.proposal}` | {', '.join(r.stale_devices) or 'none'}"
            f" | {r.stale_pending_tables}"
            f" | {r.written_bytes} ({r.baseline_written_bytes})"
            f" | {r.written_secret_bytes} | {', '.join(r.writers) or '-'}"
            f" | {r.exposed_peak_bytes} ({r.baseline_exposed_peak_bytes})"
            f" | {r.translations} | {errors} |"
        )
    victims = sorted({v for r in rows for v in r.victims})
    if victims:
        out += ["", "What was written over:"]
        out += [f"- `{v}`" for v in victims[:8]]
    out.append("")
    return out


def all_outcomes(
    scenarios: list[Scenario], workers: int | None = 1
) -> dict[str, list[KernelEventOutcome]]:
    """Every kernel-replacement scenario's outcomes, by scenario name (none: empty), as
    jobs on ``workers`` processes (sim.parallel; None: every core)."""
    from sim.parallel import Job, run_jobs

    todo = [(s, p) for s in scenarios if s.workload.events for p in s.proposals]
    done = iter(run_jobs([Job(outcome, (s, p)) for s, p in todo], workers))
    out: dict[str, list[KernelEventOutcome]] = {}
    for s, _ in todo:
        out.setdefault(s.name, []).append(next(done))
    return out


def write(
    scenarios: list[Scenario], computed: dict[str, list[KernelEventOutcome]] | None = None
) -> list[str]:
    """The section of every kernel-replacement scenario; ``computed``: :func:`all_outcomes`
    already run, reused."""
    computed = all_outcomes(scenarios) if computed is None else computed
    lines: list[str] = []
    for scenario in scenarios:
        if scenario.name in computed:
            lines += section(scenario, computed[scenario.name])
    return lines
