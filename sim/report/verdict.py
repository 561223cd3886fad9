"""The verdict: one paragraph per position in the upstream thread, read off this run.

The positions (``/work/shared/reference/upstream-2025-2026.md``): Marc Zyngier's (the ITT
is not special, the guest can share its pages through existing APIs; serializing ITTs
costs too much for a host live update), David Woodhouse's (after a guest's
hibernate-resume a later SAVE_TABLES corrupts guest memory, confidential or not; let KVM
hand its state to userspace), Ilias Stamatis' RFC (``itt-ubuf``: the ITTs go to a VMM
buffer) and Sebastian Ene's shadow queue (``share-cmdq-shadow``: EL2 checks its own copy
of the commands). Each paragraph states the claim, a word (supported, refuted, partly,
or that the evidence is not in this run), the figures it rests on, all computed from
what ``compare`` ran: the honest runs over seeds (median, [min-max] where seeds differ),
the attack matrices, the live-update costs (:mod:`sim.report.liveupdate`), the
kernel-event outcomes (:mod:`sim.report.kernel_events`) and, when compare ran them, the
sensitivity verdicts (:mod:`sim.sensitivity`) of the conclusions a paragraph uses.

The decision rules are this module's own reading of each claim and are stated in each
paragraph's figures; a reader who reads the claim differently has the numbers.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field

from sim.cells import Spread, by_cell, spread
from sim.costs import CostModel
from sim.liveupdate import LiveUpdateCost
from sim.report.kernel_events import KernelEventOutcome
from sim.run import RunResult
from sim.scenario import Scenario
from sim.sensitivity import Sensitivity

WIDTH = 72
SHARE = "share-enlightened-guest"  # sharing through existing APIs (MEM_SHARE per page)
UBUF = "itt-ubuf"
SERIAL = "userspace-serialization"
SHADOW = "share-cmdq-shadow"
SNOOP = "share-cmdq-snoop"
IOMMU = "iommu-gated-its"
TRUSTED = "trusted-host"  # no confidential computing
# The estimates a time figure rests on (sim/costs.py; CostModel.ranges()).
TIME_COSTS = ("s2_update_us", "tlbi_us", "guest_hvc_us", "ioctl_us", "its_cmd_us")
SHADOW_COSTS = ("el2_trap_entry_us", "el2_cmd_parse_us", "its_cmd_us", "s2_update_us")

Word = str  # "supported" | "refuted" | "partly" | "not in this run"


@dataclass
class Evidence:
    """What compare has: the honest runs (several seeds per (scenario, proposal)), the
    attack cells per scenario, the live-update costs and kernel-event outcomes per
    scenario, and the sensitivity analysis if it ran."""

    scenarios: list[Scenario]
    results: list[RunResult]
    matrices: dict[str, list] = field(default_factory=dict)
    live: dict[str, dict[str, LiveUpdateCost]] = field(default_factory=dict)
    events: dict[str, list[KernelEventOutcome]] = field(default_factory=dict)
    sens: Sensitivity | None = None

    def __post_init__(self) -> None:
        self.groups = by_cell(self.results)

    def spread(self, scenario: str, proposal: str, metric: Callable[[RunResult], float]):
        runs = self.groups.get((scenario, proposal))
        return spread(runs, metric) if runs else None

    def plain(self) -> list[Scenario]:
        """Scenarios migrated the ordinary way, without kernel events."""
        return [
            s for s in self.scenarios if s.migration.mode != "live-update" and not s.workload.events
        ]

    def has(self, scenario: str, *proposals: str) -> bool:
        return all((scenario, p) in self.groups for p in proposals)

    def fell(self, scenario: str, proposal: str) -> list[str]:
        """The attacks that succeeded against ``proposal`` in ``scenario``."""
        return [
            c.attack
            for c in self.matrices.get(scenario, [])
            if c.proposal == proposal and c.outcome == "succeeded"
        ]

    def attacked(self, scenario: str, proposal: str) -> int:
        return sum(c.proposal == proposal for c in self.matrices.get(scenario, []))


@dataclass(frozen=True)
class Paragraph:
    position: str  # whose
    claim: str
    word: Word
    figures: str
    rests_on: str

    def markdown(self) -> list[str]:
        return [
            f"**{self.position}.** {self.claim} **{self.word.capitalize()}**: {self.figures}"
            f" *Rests on:* {self.rests_on}",
            "",
        ]

    def text(self) -> list[str]:
        body = f"{self.claim} {self.word.upper()}: {self.figures} Rests on: {self.rests_on}"
        out = textwrap.wrap(f"{self.position}.".replace("`", ""), WIDTH)
        out += textwrap.wrap(
            body.replace("`", ""),
            WIDTH,
            initial_indent="  ",
            subsequent_indent="  ",
            break_on_hyphens=False,
        )
        return [*out, ""]


# ---- formatting -------------------------------------------------------------------------


def _b(sp: Spread) -> str:
    return sp.format(lambda v: f"{v:,.0f}") + " B"


def _ms(sp: Spread) -> str:
    return sp.format(lambda v: f"{v:.3f}") + " ms"


def _us(sp: Spread) -> str:
    return sp.format(lambda v: f"{v:,.1f}") + " us"


def _n(sp: Spread) -> str:
    return sp.format(lambda v: f"{v:,.0f}")


def _seeds(ev: Evidence, scenario: str) -> str:
    n = len({r.seed for r in ev.results if r.scenario == scenario})
    return f"{n} seed{'s' if n != 1 else ''}"


def _estimates(names: tuple[str, ...]) -> str:
    ranges = CostModel.ranges()
    parts = [
        f"{n} {ranges[n].default:g} {ranges[n].unit} ({ranges[n].low:g}-{ranges[n].high:g})"
        for n in names
        if n in ranges
    ]
    return "the estimated costs " + ", ".join(parts) + " (sim/costs.py: defaults, ranges)"


def _sensitivity(ev: Evidence, scenario: str, metric: str, pair: tuple[str, str]) -> str:
    """Whether the default run's conclusion on ``pair`` survives the cost ranges."""
    if ev.sens is None:
        return "the cost ranges were not run in this compare (--cost-samples 0)"
    if scenario not in ev.sens.scenarios:
        return f"the sensitivity analysis did not run `{scenario}`"
    for v in ev.sens.verdicts:
        c = v.conclusion
        if c.scenario == scenario and c.metric == metric and set(c.proposals) == set(pair):
            if c.kind == "ranking":
                continue
            if v.holds:
                return f"'{c.text}' holds at all {v.evaluated} cost points x seeds"
            return f"'{c.text}' fails at {len(v.failed)} of {v.evaluated} cost points x seeds"
    return (
        f"`{pair[0]}` and `{pair[1]}` tie at the defaults, so no conclusion on them was"
        " put to the cost ranges"
    )


def _missing(position: str, claim: str, what: str, rests_on: str = "-") -> Paragraph:
    return Paragraph(
        position, claim, "not in this run", f"the evidence is not in this run: {what}.", rests_on
    )


def _join(notes: list[str]) -> str:
    return "; ".join(dict.fromkeys(notes)) + "."


def _combine(words: list[Word]) -> Word:
    words = [w for w in words if w != "not in this run"]
    if not words:
        return "not in this run"
    if all(w == words[0] for w in words):
        return words[0]
    return "partly"


# ---- the positions ----------------------------------------------------------------------


def _exposure(r: RunResult) -> float:
    return r.exposure.peak_exposed_bytes


def _itsms(r: RunResult) -> float:
    return r.costs.its_downtime_ms


def marc(ev: Evidence) -> Paragraph:
    who = "Marc Zyngier"
    claim = (
        "The ITT is not special: the guest can share its pages through existing APIs"
        f" (`{SHARE}`), and serializing ITTs through userspace (`{UBUF}`) is a performance"
        " problem for a host live update."
    )
    words: list[Word] = []
    figures: list[str] = []
    rests: list[str] = []
    # (a) sharing through existing APIs: correct, and what it exposes against the RFC.
    plain = [s for s in ev.plain() if ev.has(s.name, SHARE, UBUF)]
    if plain:
        parts = []
        for s in plain:
            share = ev.spread(s.name, SHARE, _exposure)
            ubuf = ev.spread(s.name, UBUF, _exposure)
            correct = all(r.correctness.its_correct for r in ev.groups[s.name, SHARE])
            word = (
                "refuted"
                if not correct
                else "partly"
                if share.median > ubuf.median
                else "supported"
            )
            words.append(word)
            parts.append(
                f"{word} in `{s.name}` ({_seeds(ev, s.name)}, allocator {s.guest.allocator}):"
                f" `{SHARE}` {'keeps' if correct else 'does NOT keep'} every translation and"
                f" exposes {_b(share)} of secrets to the host's stage-2 against {_b(ubuf)}"
                f" for `{UBUF}`"
            )
            rests.append(_sensitivity(ev, s.name, "peak_exposed_bytes", (SHARE, UBUF)))
        figures.append(
            "(a) sharing through existing APIs, " + "; ".join(parts) + " (partly if sharing"
            " keeps every translation but exposes more than the RFC)."
        )
    else:
        figures.append(
            f"(a) not in this run: no ordinary migration scenario ran both `{SHARE}` and `{UBUF}`."
        )
    # (b) live update: the RFC's blackout against sharing's.
    live = [n for n, c in ev.live.items() if SHARE in c and UBUF in c and ev.has(n, SHARE, UBUF)]
    if live:
        parts = []
        for name in live:
            s = next(x for x in ev.scenarios if x.name == name)
            costs = ev.live[name]
            ubuf = ev.spread(name, UBUF, _itsms)
            share = ev.spread(name, SHARE, _itsms)
            big_u, big_s = costs[UBUF].blackout_us(256)[1], costs[SHARE].blackout_us(256)[1]
            word = "supported" if ubuf.median > share.median else "refuted"
            words.append(word)
            parts.append(
                f"{word} in `{name}` ({s.migration.vms} VMs, {s.migration.host_cpus} host"
                f" CPUs, {_seeds(ev, name)}): ITS blackout {_ms(ubuf)} for `{UBUF}` against"
                f" {_ms(share)} for `{SHARE}`; at 256 VMs (seed {s.seed}) at most"
                f" {big_u / 1000:.3f} against {big_s / 1000:.3f} ms, the RFC's EL2-serialised"
                f" part {costs[UBUF].save.serial_us + costs[UBUF].restore.serial_us:.2f} us"
                " per VM"
            )
            rests.append(_sensitivity(ev, name, "its_downtime_ms", (UBUF, SHARE)))
        figures.append(
            "(b) live update, "
            + "; ".join(parts)
            + " (supported if the RFC blacks out the ITS longer than sharing)."
        )
        rests.insert(0, _estimates(TIME_COSTS) + "; N VMs scale analytically (sim/liveupdate.py)")
    else:
        figures.append(
            "(b) not in this run: no live-update scenario (migration.mode: live-update) ran"
            f" both `{UBUF}` and `{SHARE}`."
        )
    if not plain and not live:
        return _missing(who, claim, " ".join(figures))
    rests.insert(0, "exposed bytes follow the guest allocator model and secret density")
    return Paragraph(who, claim, _combine(words), " ".join(figures), _join(rests))


def woodhouse(ev: Evidence) -> Paragraph:
    who = "David Woodhouse"
    claim = (
        "After a guest's hibernate-resume KVM keeps stale ITT addresses, so a later"
        " SAVE_TABLES writes into guest memory and corrupts it, without confidential VMs"
        f" too (`{TRUSTED}`); KVM handing its state to userspace (`{SERIAL}`) avoids it."
    )
    names = [
        s.name
        for s in ev.scenarios
        if any(e.action == "hibernate-resume" for e in s.workload.events) and s.name in ev.events
    ]
    if not names:
        return _missing(
            who, claim, "no scenario with a hibernate-resume event (workload.events) ran"
        )
    words, parts = [], []
    for name in names:
        s = next(x for x in ev.scenarios if x.name == name)
        rows = {o.proposal: o for o in ev.events[name]}
        if TRUSTED not in rows:
            parts.append(f"`{name}` did not run `{TRUSTED}`")
            continue
        t = rows[TRUSTED]
        new = t.written_bytes - t.baseline_written_bytes
        words.append("supported" if new > 0 else "refuted")
        clean = [p for p, o in rows.items() if o.written_bytes == 0]
        dirty = [f"`{p}` {o.written_bytes:,} B" for p, o in rows.items() if o.written_bytes]
        serial = rows.get(SERIAL)
        if serial is not None and serial.written_bytes > 0:
            words.append("partly")
        parts.append(
            f"in `{name}` (seed {s.seed}, kernel {s.kernel}) `{TRUSTED}` writes"
            f" {t.written_bytes:,} B of guest data ({t.baseline_written_bytes:,} B without"
            f" the event; stale DTEs: {', '.join(t.stale_devices) or 'none'}); written:"
            f" {', '.join(dirty) or 'none'}; nothing written under"
            f" {', '.join(f'`{p}`' for p in clean) or 'no proposal'}"
        )
    for s in ev.plain():  # his other points: the GIC behind an IOMMU; EL2 snooping the queue
        named = [(IOMMU, "the GIC behind an IOMMU"), (SNOOP, "EL2 snooping the queue")]
        seen = [(p, what) for p, what in named if ev.attacked(s.name, p)]
        if seen:
            parts.append(
                f"on his other points, in `{s.name}` "
                + ", ".join(
                    f"`{p}` ({what}) falls to {len(ev.fell(s.name, p))} of"
                    f" {ev.attacked(s.name, p)} attacks"
                    for p, what in seen
                )
            )
    return Paragraph(
        who,
        claim,
        _combine(words) if words else "not in this run",
        "; ".join(parts) + ".",
        "the byte-exact audit of one run per proposal at the scenario's seed and default"
        " costs (the kernel-event runs are not put to the cost ranges); the boot kernel"
        " mapping the devices with its own ITTs, as the scenario describes.",
    )


def ilias(ev: Evidence) -> Paragraph:
    who = "Ilias Stamatis (the ITT_UBUF RFC)"
    claim = (
        f"Moving the ITTs into a VMM buffer (`{UBUF}`) keeps the guest's secrets from the"
        f" host as well as serializing the whole vITS (`{SERIAL}`) does, while the device"
        " and collection tables stay in guest memory."
    )
    plain = [s for s in ev.plain() if ev.has(s.name, UBUF, SERIAL)]
    if not plain:
        return _missing(
            who, claim, f"no ordinary migration scenario ran both `{UBUF}` and `{SERIAL}`"
        )
    words, parts, rests = [], [], []
    for s in plain:
        ubuf, serial = ev.spread(s.name, UBUF, _exposure), ev.spread(s.name, SERIAL, _exposure)
        dma_u = ev.spread(s.name, UBUF, lambda r: r.exposure.dma_reachable_peak_bytes)
        dma_s = ev.spread(s.name, SERIAL, lambda r: r.exposure.dma_reachable_peak_bytes)
        fell_u, fell_s = ev.fell(s.name, UBUF), ev.fell(s.name, SERIAL)
        if ubuf.median > serial.median or dma_u.median > dma_s.median:
            words.append("refuted")
        elif len(fell_u) > len(fell_s):
            words.append("partly")
        else:
            words.append("supported")
        attacks = (
            f"attacks that succeed: {len(fell_u)} of {ev.attacked(s.name, UBUF)} against"
            f" `{UBUF}` ({'; '.join(fell_u) or 'none'}), {len(fell_s)} of"
            f" {ev.attacked(s.name, SERIAL)} against `{SERIAL}` ({'; '.join(fell_s) or 'none'})"
            if s.name in ev.matrices
            else "no attack matrix"
        )
        parts.append(
            f"in `{s.name}` ({_seeds(ev, s.name)}) secret bytes exposed to the host's"
            f" stage-2 {_b(ubuf)} for `{UBUF}` against {_b(serial)}, DMA-reachable"
            f" {_b(dma_u)} against {_b(dma_s)}; {attacks}"
        )
        rests.append(_sensitivity(ev, s.name, "peak_exposed_bytes", (UBUF, SERIAL)))
    for name, rows in ev.events.items():
        o = {r.proposal: r for r in rows}
        if UBUF in o:
            parts.append(
                f"after the kernel events of `{name}` `{UBUF}` has {o[UBUF].written_bytes:,} B"
                " of guest data written"
            )
    return Paragraph(
        who,
        claim,
        _combine(words),
        "; ".join(parts) + " (refuted if it exposes more than serialization, partly if more attacks"
        " succeed).",
        "the buffer format is this model's own (the RFC's is not available); the guest"
        " driver shares the device and collection tables as mainline Linux does; " + _join(rests),
    )


def shadow(ev: Evidence) -> Paragraph:
    who = "The shadow queue (Sebastian Ene, `share-cmdq-shadow`)"
    claim = (
        "EL2 copying the guest's commands into a queue it owns and deciding on that copy"
        f" closes the window that snooping the shared queue (`{SNOOP}`) leaves, at the"
        " cost of EL2 work per command."
    )
    plain = [s for s in ev.plain() if ev.has(s.name, SHADOW)]
    if not plain:
        return _missing(who, claim, f"no ordinary migration scenario ran `{SHADOW}`")
    words, parts, rests = [], [], [_estimates(SHADOW_COSTS)]
    for s in plain:
        fell_shadow, fell_snoop = ev.fell(s.name, SHADOW), ev.fell(s.name, SNOOP)
        if s.name not in ev.matrices or not ev.attacked(s.name, SHADOW):
            attack = "no attack matrix"
        else:
            closed = [a for a in fell_snoop if a not in fell_shadow]
            opened = [a for a in fell_shadow if a not in fell_snoop]
            if closed:
                words.append("partly" if opened else "supported")
            else:  # no attack that beats snooping is stopped: refuted, unless none beats it
                words.append("refuted" if fell_shadow else "partly")
            attack = (
                f"attacks that succeed: {len(fell_shadow)} of {ev.attacked(s.name, SHADOW)}"
                f" against `{SHADOW}`, {len(fell_snoop)} of {ev.attacked(s.name, SNOOP)}"
                f" against `{SNOOP}`; closed by the copy: {'; '.join(closed) or 'none'};"
                f" open for both: {'; '.join(a for a in fell_shadow if a in fell_snoop) or 'none'}"
                f"; open only with the copy: {'; '.join(opened) or 'none'}"
            )
        own = ev.spread(s.name, SHADOW, lambda r: r.costs.hypercalls_by_proposal)
        el2 = ev.spread(s.name, SHADOW, lambda r: r.costs.proposal_el2_us)
        its = ev.spread(s.name, SHADOW, _itsms)
        cost = (
            f"its own part {_n(own)} hypercalls and {_us(el2)} of EL2 time, ITS downtime {_ms(its)}"
        )
        if ev.has(s.name, SHARE):
            cost += f" against {_ms(ev.spread(s.name, SHARE, _itsms))} for `{SHARE}`"
            rests.append(_sensitivity(ev, s.name, "its_downtime_ms", (SHADOW, SHARE)))
        parts.append(f"in `{s.name}` ({_seeds(ev, s.name)}) {attack}; {cost}")
    return Paragraph(
        who,
        claim,
        _combine(words) if words else "not in this run",
        "; ".join(parts)
        + " (supported if some attack that beats snooping fails against the copy and none"
        " beats only the copy).",
        "the vITS variant of a series written for the physical ITS (EL2 forwards to KVM"
        " at EL1 rather than to an ITS); " + _join(rests),
    )


POSITIONS = (marc, woodhouse, ilias, shadow)


def paragraphs(ev: Evidence) -> list[Paragraph]:
    return [position(ev) for position in POSITIONS]


INTRO = (
    "What this run says about each position in the upstream thread. Figures: medians"
    " over seeds, [min-max] where the seeds differ; the word is this model's reading of"
    " the claim against them, and each paragraph names what it rests on."
)


def section(ev: Evidence) -> list[str]:
    """The report's verdict section (markdown lines)."""
    out = ["## Verdict: the positions in the thread", "", INTRO, ""]
    for p in paragraphs(ev):
        out += p.markdown()
    return out


def text(ev: Evidence) -> list[str]:
    """The same for summary.txt: 72 columns."""
    out = ["Verdict: the positions in the thread", *textwrap.wrap(INTRO, WIDTH), ""]
    for p in paragraphs(ev):
        out += p.text()
    assert all(len(line) <= WIDTH for line in out), "verdict wider than 72 columns"
    return out
