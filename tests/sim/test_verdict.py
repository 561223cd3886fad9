"""The verdict section: its figures are the run's, its words follow them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sim.cells import run_cell
from sim.matrix import Cell, attack_matrix, with_attack
from sim.report import kernel_events, liveupdate, verdict
from sim.report.verdict import SERIAL, SHADOW, SHARE, SNOOP, TRUSTED, UBUF, Evidence
from sim.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
ATTACKS = ["read-everything", "forge-queued-mapd"]


def _small(name: str, proposals: list[str], **workload) -> object:
    s = load_scenario(SCENARIOS / f"{name}.yaml")
    devices = s.devices[:2]
    churn = [c for c in s.workload.churn if c.device in {d.name for d in devices}]
    w = s.workload.model_copy(update={"churn": churn, **workload})
    return s.model_copy(update={"devices": devices, "workload": w, "proposals": proposals})


@pytest.fixture(scope="module")
def evidence() -> Evidence:
    plain = _small("kzalloc-dense-secrets", [SHARE, SNOOP, SERIAL, SHADOW, UBUF])
    hib = _small("hibernate-resume", [TRUSTED, SERIAL, UBUF])
    live = _small("live-update", [SHARE, UBUF], duration_ms=25, affinity_moves_per_s=0)
    scenarios = [plain, hib, live]
    results = [run_cell(with_attack(s, None), p, s.seed) for s in scenarios for p in s.proposals]
    cells, _ = attack_matrix(plain, [SNOOP, SERIAL, SHADOW, UBUF], ATTACKS)
    return Evidence(
        scenarios,
        results,
        {plain.name: cells},
        liveupdate.all_costs(scenarios),
        kernel_events.all_outcomes(scenarios),
    )


def _result(ev: Evidence, scenario: str, proposal: str):
    return ev.groups[scenario, proposal][0]


def _para(ev: Evidence, position) -> verdict.Paragraph:
    return position(ev)


def test_figures_are_the_runs(evidence):
    ev = evidence
    ubuf = _result(ev, "kzalloc-dense-secrets", UBUF).exposure
    serial = _result(ev, "kzalloc-dense-secrets", SERIAL).exposure
    p = verdict.ilias(ev)
    assert f"{ubuf.dma_reachable_peak_bytes:,} B against {serial.dma_reachable_peak_bytes:,} B" in (
        p.figures
    )
    share = _result(ev, "kzalloc-dense-secrets", SHARE).exposure.peak_exposed_bytes
    assert share > 0  # kzalloc'd ITTs share their pages with secrets
    marc = verdict.marc(ev)
    assert f"linux-kzalloc: {share:,} B against 0 B" in marc.figures
    lu_u = _result(ev, "live-update", UBUF).costs.its_downtime_ms
    lu_s = _result(ev, "live-update", SHARE).costs.its_downtime_ms
    assert f"{lu_u:.3f} ms for `{UBUF}` against {lu_s:.3f} ms" in marc.figures
    big = ev.live["live-update"][UBUF].blackout_us(256)[1] / 1000
    assert f"at most {big:.3f} against" in marc.figures
    trusted = {o.proposal: o for o in ev.events["hibernate-resume"]}[TRUSTED]
    assert trusted.written_bytes > trusted.baseline_written_bytes
    wood = verdict.woodhouse(ev)
    assert wood.word == "supported"
    assert f"`{TRUSTED}` writes {trusted.written_bytes:,} B of guest data" in wood.figures
    shadow = _result(ev, "kzalloc-dense-secrets", SHADOW).costs
    p = verdict.shadow(ev)
    assert f"its own part {shadow.hypercalls_by_proposal:,} hypercalls" in p.figures
    cells = ev.matrices["kzalloc-dense-secrets"]
    fell = [c.attack for c in cells if c.proposal == SNOOP and c.outcome == "succeeded"]
    assert f"{len(fell)} of {len(ATTACKS)} against `{SNOOP}`" in p.figures


def test_seeds_that_differ_are_quoted_as_median_and_range(evidence):
    ev = evidence
    base = _result(ev, "kzalloc-dense-secrets", SHARE)
    other = base.model_copy(
        update={
            "seed": base.seed + 1,
            "exposure": base.exposure.model_copy(update={"peak_exposed_bytes": 10}),
        }
    )
    third = other.model_copy(update={"seed": base.seed + 2})
    two = Evidence(ev.scenarios, [*ev.results, other, third], ev.matrices, ev.live, ev.events)
    assert f"10 [10-{base.exposure.peak_exposed_bytes:,}] B against" in verdict.marc(two).figures


def _with(ev: Evidence, scenario: str, proposal: str, update) -> Evidence:
    results = [
        update(r) if (r.scenario, r.proposal) == (scenario, proposal) else r for r in ev.results
    ]
    return Evidence(ev.scenarios, results, ev.matrices, ev.live, ev.events, ev.sens)


def test_itt_ubuf_exposing_more_than_serialization_refutes_ilias(evidence):
    assert verdict.ilias(evidence).word in ("supported", "partly")
    serial = _result(evidence, "kzalloc-dense-secrets", SERIAL).exposure.peak_exposed_bytes

    def leak(r):
        exposure = r.exposure.model_copy(update={"peak_exposed_bytes": serial + 4096})
        return r.model_copy(update={"exposure": exposure})

    assert verdict.ilias(_with(evidence, "kzalloc-dense-secrets", UBUF, leak)).word == "refuted"


def test_live_update_word_follows_which_blackout_is_longer(evidence):
    share = _result(evidence, "live-update", SHARE).costs.its_downtime_ms
    ubuf = _result(evidence, "live-update", UBUF).costs.its_downtime_ms

    def at(ms):
        def set_ms(r):
            return r.model_copy(
                update={"costs": r.costs.model_copy(update={"its_downtime_ms": ms})}
            )

        return set_ms

    slow = _with(evidence, "live-update", UBUF, at(share * 2 + 1))
    fast = _with(evidence, "live-update", UBUF, at(share / 2))
    assert "(b) live update, supported" in verdict.marc(slow).figures
    assert "(b) live update, refuted" in verdict.marc(fast).figures
    word = "supported" if ubuf > share else "refuted"
    assert f"(b) live update, {word}" in verdict.marc(evidence).figures


def test_shadow_word_follows_the_attack_cells(evidence):
    ev = evidence

    def cells(shadow_falls: bool, snoop_falls: bool) -> dict[str, list[Cell]]:
        def c(proposal, falls):
            outcome = "succeeded" if falls else "blocked"
            return Cell(attack="read-everything", proposal=proposal, outcome=outcome, why="-")

        return {"kzalloc-dense-secrets": [c(SHADOW, shadow_falls), c(SNOOP, snoop_falls)]}

    def word(shadow_falls, snoop_falls):
        e = Evidence(ev.scenarios, ev.results, cells(shadow_falls, snoop_falls), ev.live)
        return verdict.shadow(e).word

    assert word(False, True) == "supported"  # the copy stops what beats snooping
    assert word(True, True) == "refuted"  # it stops nothing snooping lets through
    assert word(True, False) == "refuted"  # it lets through what snooping stops
    assert word(False, False) == "partly"  # nothing in the run tells them apart


def test_no_corruption_after_hibernate_refutes_woodhouse(evidence):
    rows = [dataclasses.replace(o, written_bytes=0) for o in evidence.events["hibernate-resume"]]
    ev = Evidence(
        evidence.scenarios,
        evidence.results,
        evidence.matrices,
        evidence.live,
        {"hibernate-resume": rows},
    )
    assert verdict.woodhouse(ev).word == "refuted"


def test_missing_evidence_is_said(evidence):
    plain = [s for s in evidence.scenarios if s.name == "kzalloc-dense-secrets"]
    results = [r for r in evidence.results if r.scenario == "kzalloc-dense-secrets"]
    ev = Evidence(plain, results, evidence.matrices)
    wood = verdict.woodhouse(ev)
    assert wood.word == "not in this run"
    assert "the evidence is not in this run: no scenario with a hibernate-resume" in wood.figures
    marc = verdict.marc(ev)
    assert "(b) not in this run: no live-update scenario" in marc.figures
    assert marc.word != "not in this run"  # (a) is in the run
    empty = Evidence([], [])
    assert all(p.word == "not in this run" for p in verdict.paragraphs(empty))


def test_sections_name_every_position_and_fit_72_columns(evidence):
    md = verdict.section(evidence)
    assert md[0] == "## Verdict: the positions in the thread"
    for who in ("Marc Zyngier", "David Woodhouse", "Ilias Stamatis", "Sebastian Ene"):
        assert any(who in line for line in md)
    lines = verdict.text(evidence)
    assert all(len(line) <= 72 for line in lines)
    assert not any("`" in line for line in lines)
    assert "cost ranges were not run" in "\n".join(lines)


def test_rests_on_quotes_the_sensitivity_verdict_of_the_pair(evidence):
    from sim.sensitivity import design, run_design

    plain = [s for s in evidence.scenarios if s.name == "kzalloc-dense-secrets"]
    points = design(joint=2, params=["tlbi_us", "el2_cmd_parse_us"], one_at_a_time=False)
    sens = run_design(plain, points, defaults=evidence.results)
    ev = Evidence(
        evidence.scenarios,
        evidence.results,
        evidence.matrices,
        evidence.live,
        evidence.events,
        sens,
    )
    (v,) = [
        v
        for v in sens.verdicts
        if v.conclusion.kind == "more"
        and v.conclusion.metric == "peak_exposed_bytes"
        and v.conclusion.proposals == (SHARE, UBUF)
    ]
    said = (
        f"holds at all {v.evaluated} cost points x seeds"
        if v.holds
        else f"fails at {len(v.failed)} of {v.evaluated} cost points x seeds"
    )
    assert f"'{v.conclusion.text}' {said}" in verdict.marc(ev).rests_on
    assert "the sensitivity analysis did not run `live-update`" in verdict.marc(ev).rests_on


def test_scenarios_with_the_same_word_are_one_clause(evidence):
    """Fourteen scenarios give one grouped clause per word, not fourteen sentences."""
    ev = evidence
    name = "kzalloc-dense-secrets"
    plain = next(s for s in ev.scenarios if s.name == name)
    twin = plain.model_copy(update={"name": "twin"})
    rows = [r.model_copy(update={"scenario": "twin"}) for r in ev.results if r.scenario == name]
    both = Evidence([*ev.scenarios, twin], [*ev.results, *rows], ev.matrices, ev.live, ev.events)
    share = _result(ev, name, SHARE).exposure.peak_exposed_bytes
    figure = f"(linux-kzalloc: {share:,} B against 0 B)"
    marc = verdict.marc(both).figures
    assert f"partly in 2 scenarios: `{name}` {figure}, `twin` {figure}" in marc
    assert "keeps every translation in all 2 scenarios" in marc
    ilias = verdict.ilias(both).figures
    assert ilias.count("secret bytes exposed") == 1 and "over 2 scenarios" in ilias
