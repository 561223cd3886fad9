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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from sim.cells import Spread, by_cell, spread
from sim.costs import CostModel
from sim.liveupdate import LiveUpdateCost
from sim.report.kernel_events import KernelEventOutcome
from sim.report.words import plural
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


def _sensitivity(ev: Evidence, names: list[str], metric: str, pair: tuple[str, str]) -> str:
    """Whether the default runs' conclusion on ``pair`` survives the cost ranges, over the
    scenarios ``names``: one clause per conclusion, its scenarios grouped by outcome."""
    if ev.sens is None:
        return "the cost ranges were not run in this compare (--cost-samples 0)"
    said: dict[str, dict[str, list[str]]] = {}  # conclusion text -> outcome -> scenarios
    notes = []
    missing = [n for n in names if n not in ev.sens.scenarios]
    if missing:
        notes.append(f"the sensitivity analysis did not run {_names(missing)}")
    tied = []
    for name in names:
        if name in missing:
            continue
        for v in ev.sens.verdicts:
            c = v.conclusion
            if c.scenario == name and c.metric == metric and set(c.proposals) == set(pair):
                if c.kind == "ranking":
                    continue
                outcome = (
                    f"holds at all {v.evaluated} cost points x seeds"
                    if v.holds
                    else f"fails at {len(v.failed)} of {v.evaluated} cost points x seeds"
                )
                said.setdefault(c.text, {}).setdefault(outcome, []).append(name)
                break
        else:
            tied.append(name)
    for text, outcomes in said.items():
        notes.append(
            f"'{text}' " + "; ".join(f"{o} in {_names(ns, names)}" for o, ns in outcomes.items())
        )
    if tied:
        notes.append(
            f"`{pair[0]}` and `{pair[1]}` tie at the defaults in {_names(tied, names)}, so no"
            " conclusion on them there was put to the cost ranges"
        )
    return "; ".join(notes)


def _names(names: list[str], of: list[str] | None = None) -> str:
    """The scenarios by name, or "all N scenarios" when they are every one of ``of``."""
    if of is not None and len(names) > 1 and sorted(names) == sorted(of):
        return f"all {len(names)} scenarios"
    return ", ".join(f"`{n}`" for n in names)


def _span(values: list[float], fmt: Callable[[float], str], unit: str = "") -> str:
    """``low-high`` over scenarios (their medians), or the value when all agree."""
    lo, hi = min(values), max(values)
    return (fmt(lo) if lo == hi else f"{fmt(lo)}-{fmt(hi)}") + unit


def _count(v: float) -> str:
    return f"{v:,.0f}"


def _falls(ev: Evidence, proposal: str, names: list[str]) -> str:
    """How many attacks succeed against ``proposal`` per scenario, and which, with the
    number of scenarios each succeeds in."""
    names = [n for n in names if ev.attacked(n, proposal)]
    if not names:
        return "no attack matrix"
    fell = [ev.fell(n, proposal) for n in names]
    which = Counter(a for f in fell for a in f)
    listed = ", ".join(f"{a} in {k}" for a, k in which.most_common()) or "none succeeds"
    return (
        f"{_span([len(f) for f in fell], _count)} of"
        f" {_span([ev.attacked(n, proposal) for n in names], _count)} attacks per scenario"
        f" ({listed})"
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


def _grouped(found: dict[str, tuple[Word, str]]) -> str:
    """Scenarios grouped by their word, each with its figure: "partly in 2 scenarios:
    `a` (X), `b` (Y); supported in 1: `c` (Z)"."""
    out = []
    for word in ("refuted", "partly", "supported"):
        names = [(n, detail) for n, (w, detail) in found.items() if w == word]
        if len(names) == len(found) > 1 and not any(d for _, d in names):
            out.append(f"{word} in all {len(names)} scenarios")
        elif names:
            listed = ", ".join(f"`{n}`" + (f" ({d})" if d else "") for n, d in names)
            out.append(f"{word} in {plural(len(names), 'scenario')}: {listed}")
    return "; ".join(out)


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
        found: dict[str, tuple[Word, str]] = {}
        lost = []
        for s in plain:
            share = ev.spread(s.name, SHARE, _exposure)
            ubuf = ev.spread(s.name, UBUF, _exposure)
            if not all(r.correctness.its_correct for r in ev.groups[s.name, SHARE]):
                lost.append(s.name)
                found[s.name] = ("refuted", "translations lost")
            elif share.median > ubuf.median:
                found[s.name] = ("partly", f"{s.guest.allocator}: {_b(share)} against {_b(ubuf)}")
            else:
                found[s.name] = ("supported", "")
        words += [w for w, _ in found.values()]
        kept = (
            f"`{SHARE}` keeps every translation in {_every(len(plain))}"
            if not lost
            else f"`{SHARE}` does NOT keep every translation in {_names(lost)}"
        )
        figures.append(
            f"(a) sharing through existing APIs: {kept}; the secret bytes it exposes to the"
            f" host's stage-2 against `{UBUF}`'s: " + _grouped(found) + " (supported where"
            " sharing exposes no more than the RFC, partly where it keeps every translation"
            " but exposes more)."
        )
        rests.append(_sensitivity(ev, [s.name for s in plain], "peak_exposed_bytes", (SHARE, UBUF)))
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
        rests.append(_sensitivity(ev, live, "its_downtime_ms", (UBUF, SHARE)))
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
    attacked = [s.name for s in ev.plain() if s.name in ev.matrices]
    named = [(IOMMU, "the GIC behind an IOMMU"), (SNOOP, "EL2 snooping the queue")]
    seen = [(p, what) for p, what in named if any(ev.attacked(n, p) for n in attacked)]
    if seen:  # his other points
        parts.append(
            f"on his other points, over {_matrices(len(attacked))}: "
            + "; ".join(f"`{p}` ({what}) falls to {_falls(ev, p, attacked)}" for p, what in seen)
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
    found: dict[str, tuple[Word, str]] = {}
    stage2, dma = {UBUF: [], SERIAL: []}, {UBUF: [], SERIAL: []}
    for s in plain:
        for p in (UBUF, SERIAL):
            stage2[p].append(ev.spread(s.name, p, _exposure).median)
            dma[p].append(
                ev.spread(s.name, p, lambda r: r.exposure.dma_reachable_peak_bytes).median
            )
        more = stage2[UBUF][-1] > stage2[SERIAL][-1] or dma[UBUF][-1] > dma[SERIAL][-1]
        falls = len(ev.fell(s.name, UBUF)) > len(ev.fell(s.name, SERIAL))
        if more:
            found[s.name] = ("refuted", "exposes more")
        elif falls:
            found[s.name] = ("partly", "more attacks succeed")
        else:
            found[s.name] = ("supported", "")
    attacked = [s.name for s in plain if s.name in ev.matrices]
    parts = [
        f"over {plural(len(plain), 'scenario')} (scenario medians) secret bytes exposed to the"
        f" host's stage-2 {_span(stage2[UBUF], _count, ' B')} for `{UBUF}` against"
        f" {_span(stage2[SERIAL], _count, ' B')}, DMA-reachable {_span(dma[UBUF], _count, ' B')}"
        f" against {_span(dma[SERIAL], _count, ' B')}"
    ]
    if attacked:
        parts.append(
            f"attacks that succeed: against `{UBUF}` {_falls(ev, UBUF, attacked)}, against"
            f" `{SERIAL}` {_falls(ev, SERIAL, attacked)}"
        )
    parts.append(_grouped(found))
    written = {name: {r.proposal: r for r in rows} for name, rows in ev.events.items()}
    after = [(n, o[UBUF].written_bytes) for n, o in written.items() if UBUF in o]
    if after:
        parts.append(
            f"after the kernel events `{UBUF}` has guest data written: "
            + ", ".join(f"{b:,} B in `{n}`" for n, b in after)
        )
    return Paragraph(
        who,
        claim,
        _combine([w for w, _ in found.values()]),
        "; ".join(parts) + " (refuted if it exposes more than serialization, partly if more"
        " attacks succeed).",
        "the buffer format is this model's own (the RFC's is not available); the guest"
        " driver shares the device and collection tables as mainline Linux does; "
        + _join([_sensitivity(ev, [s.name for s in plain], "peak_exposed_bytes", (UBUF, SERIAL))]),
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
    found: dict[str, tuple[Word, str]] = {}
    closed: Counter[str] = Counter()
    both: Counter[str] = Counter()
    opened: Counter[str] = Counter()
    attacked = [s.name for s in plain if s.name in ev.matrices and ev.attacked(s.name, SHADOW)]
    for name in attacked:
        fell_shadow, fell_snoop = ev.fell(name, SHADOW), ev.fell(name, SNOOP)
        shut = [a for a in fell_snoop if a not in fell_shadow]
        new = [a for a in fell_shadow if a not in fell_snoop]
        closed.update(shut)
        opened.update(new)
        both.update(a for a in fell_shadow if a in fell_snoop)
        if shut:
            found[name] = ("partly" if new else "supported", "")
        else:  # no attack that beats snooping is stopped: refuted, unless none beats it
            found[name] = ("refuted" if fell_shadow else "partly", "")

    def listed(c: Counter[str]) -> str:
        return ", ".join(f"{a} in {k}" for a, k in c.most_common()) or "none"

    parts = []
    if attacked:
        parts.append(
            f"over {_matrices(len(attacked))}, attacks that"
            f" succeed: {_span([len(ev.fell(n, SHADOW)) for n in attacked], _count)} of"
            f" {_span([ev.attacked(n, SHADOW) for n in attacked], _count)} against `{SHADOW}`,"
            f" {_span([len(ev.fell(n, SNOOP)) for n in attacked], _count)} of"
            f" {_span([ev.attacked(n, SNOOP) for n in attacked], _count)} against `{SNOOP}`;"
            f" closed by the copy: {listed(closed)}; open for both: {listed(both)}; open only"
            f" with the copy: {listed(opened)}; " + _grouped(found)
        )
    else:
        parts.append("no attack matrix")
    names = [s.name for s in plain]

    def medians(p: str, metric: Callable[[RunResult], float]) -> list[float]:
        return [ev.spread(n, p, metric).median for n in names if ev.has(n, p)]

    cost = (
        f"its own part {_span(medians(SHADOW, lambda r: r.costs.hypercalls_by_proposal), _count)}"
        f" hypercalls and {_span(medians(SHADOW, lambda r: r.costs.proposal_el2_us), _us1)} us"
        f" of EL2 time, ITS downtime {_span(medians(SHADOW, _itsms), _ms3)} ms"
    )
    rests = [_estimates(SHADOW_COSTS)]
    with_share = [n for n in names if ev.has(n, SHARE)]
    if with_share:
        cost += f" against {_span(medians(SHARE, _itsms), _ms3)} ms for `{SHARE}`"
        rests.append(_sensitivity(ev, with_share, "its_downtime_ms", (SHADOW, SHARE)))
    parts.append(f"over {plural(len(names), 'scenario')} (scenario medians) {cost}")
    return Paragraph(
        who,
        claim,
        _combine([w for w, _ in found.values()]) if found else "not in this run",
        "; ".join(parts)
        + " (supported if some attack that beats snooping fails against the copy and none"
        " beats only the copy).",
        "the vITS variant of a series written for the physical ITS (EL2 forwards to KVM"
        " at EL1 rather than to an ITS); " + _join(rests),
    )


def _matrices(n: int) -> str:
    return plural(n, "attack matrix", "attack matrices")


def _every(n: int) -> str:
    return "the one scenario" if n == 1 else f"all {n} scenarios"


def _us1(v: float) -> str:
    return f"{v:,.1f}"


def _ms3(v: float) -> str:
    return f"{v:.3f}"


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
