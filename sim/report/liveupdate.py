"""The live-update section of the report: the ITS blackout per proposal as N VMs grow.

For each ``migration.mode: live-update`` scenario every proposal runs once (one VM); the
VMs are independent, so one VM's save and restore phases scale to N through the bounds
of :class:`sim.liveupdate.PhaseCost` (host CPUs in parallel, pKVM's ``host_mmu.lock``
one VM at a time). The table gives those per-VM parts and the blackout at 1, the
scenario's N and 256 VMs; the chart the blackout over ``VM_COUNTS``, least to most.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
from matplotlib.figure import Figure

from sim.liveupdate import VM_COUNTS, LiveUpdateCost
from sim.report.charts import STYLE, proposal_colour
from sim.scenario import Scenario


def live_update_costs(scenario: Scenario) -> dict[str, LiveUpdateCost]:
    """One run per proposal (honest host): each proposal's per-VM phase costs."""
    from sim.matrix import with_attack
    from sim.run import simulate

    honest = with_attack(scenario, None)
    return {p: simulate(honest, p).live_update_cost for p in honest.proposals}


def _ms(us: float) -> str:
    return f"{us / 1000:.3f}"


def _range(bounds: tuple[float, float]) -> str:
    low, high = bounds
    return _ms(low) if abs(high - low) < 1e-9 else f"{_ms(low)}-{_ms(high)}"


def chart(scenario: Scenario, costs: dict[str, LiveUpdateCost], path: Path) -> Path:
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(7.5, 4.2))
        ax = fig.subplots()
        for i, (proposal, cost) in enumerate(costs.items()):
            low = [cost.blackout_us(n)[0] / 1000 for n in VM_COUNTS]
            high = [cost.blackout_us(n)[1] / 1000 for n in VM_COUNTS]
            colour = proposal_colour(proposal)
            marker = "osD^vx*"[i % 7]
            ax.plot(VM_COUNTS, high, marker=marker, ms=4, color=colour, label=proposal, lw=1)
            ax.fill_between(VM_COUNTS, low, high, color=colour, alpha=0.2, lw=0)
        ax.axvline(scenario.migration.vms, color="#999999", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("VMs updated together (N)")
        ax.set_ylabel("ITS blackout (ms): most, band down to least")
        ax.set_title(
            f"Live update: ITS blackout vs N, `{scenario.name}` seed {scenario.seed},"
            f" {scenario.migration.host_cpus} host CPUs, honest host",
            fontsize=9,
        )
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        fig.savefig(path, metadata={"Software": None})
    return path


def section(scenario: Scenario, costs: dict[str, LiveUpdateCost], chart_path: Path) -> list[str]:
    n, cpus = scenario.migration.vms, scenario.migration.host_cpus
    out = [
        f"## Live update: `{scenario.name}` (seed {scenario.seed})",
        "",
        f"> {scenario.question}",
        "",
        "The host kernel is replaced under the running VMs on the same machine"
        " (`migration.mode: live-update`): each VM's ITS is saved the proposal's way, the",
        "new kernel is handed guest memory, EL2 and the VMM's buffers as they were, and",
        "restores into a fresh vITS. Nothing crosses a network and no page is re-imported.",
        "One VM is simulated per proposal; the VMs are independent, so its save and restore",
        f"scale to N: {cpus} host CPUs run the VMs' ioctls in parallel (per-VM `kvm->lock`,",
        "`its_lock`), while every pKVM page-state change holds the global `host_mmu.lock`",
        "(`mem_protect.c`: `host_lock_component()`), so EL2's stage-2 updates and TLB",
        "invalidations run one VM at a time. With P the parallel and S the serialised time",
        "of a VM's phase and W = ceil(N / CPUs), a phase takes from max(W(P+S), N S) to",
        "W P + N S. Per VM, in us; blackout in ms (least-most):",
        "",
        "| proposal | save us (EL2-serialised) | restore us (EL2-serialised) | hypercalls / VM"
        " | page-state changes / VM | TLBIs / VM | ITS blackout, 1 VM | "
        f"{n} VMs | 256 VMs | 256 VMs / 1 VM |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for proposal, c in costs.items():
        one, scen, big = c.blackout_us(1), c.blackout_us(n), c.blackout_us(256)
        out.append(
            f"| `{proposal}` | {c.save.wall_us:.2f} ({c.save.serial_us:.2f})"
            f" | {c.restore.wall_us:.2f} ({c.restore.serial_us:.2f})"
            f" | {c.save.hypercalls + c.restore.hypercalls}"
            f" | {c.save.page_transitions + c.restore.page_transitions}"
            f" | {c.save.tlbis + c.restore.tlbis}"
            f" | {_range(one)} | {_range(scen)} | {_range(big)} | {big[1] / one[1]:.0f}x |"
        )
    serial = [p for p, c in costs.items() if c.save.serial_us + c.restore.serial_us > 0]
    flat = [p for p in costs if p not in serial]
    out += [""]
    if serial:
        worst = max(serial, key=lambda p: costs[p].blackout_us(256)[1])
        floor = min(costs, key=lambda p: costs[p].blackout_us(256)[1])
        out.append(
            "Only "
            + ", ".join(f"`{p}`" for p in serial)
            + " changes page states during the update, so only there does a term grow as"
            f" N x S: at 256 VMs `{worst}` blacks out the ITS for up to"
            f" {_ms(costs[worst].blackout_us(256)[1])} ms against"
            f" {_ms(costs[floor].blackout_us(256)[1])} ms for `{floor}`."
        )
    if flat:
        out.append(
            ", ".join(f"`{p}`" for p in flat)
            + " make no hypercall and change no page state (EL2 keeps the shares and IOMMU"
            " domains across the host's kexec), so their blackout grows only in waves of"
            f" {cpus} VMs (in the chart their lines overlap where their costs are equal)."
        )
    out += ["", f"![{chart_path.stem}]({chart_path.name})", ""]
    return out


def all_costs(scenarios: list[Scenario]) -> dict[str, dict[str, LiveUpdateCost]]:
    """Every live-update scenario's per-proposal costs, by scenario name (none: empty)."""
    return {s.name: live_update_costs(s) for s in scenarios if s.migration.mode == "live-update"}


def write(
    scenarios: list[Scenario],
    out: Path,
    computed: dict[str, dict[str, LiveUpdateCost]] | None = None,
) -> tuple[list[str], list[Path]]:
    """The section and chart of every live-update scenario (none: nothing); ``computed``:
    :func:`all_costs` already run, reused."""
    lines: list[str] = []
    charts: list[Path] = []
    computed = all_costs(scenarios) if computed is None else computed
    for scenario in scenarios:
        if scenario.name not in computed:
            continue
        costs = computed[scenario.name]
        path = chart(scenario, costs, out / f"liveupdate-{scenario.name}.png")
        lines += section(scenario, costs, path)
        charts.append(path)
    return lines, charts
