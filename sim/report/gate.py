"""The audit's verdict per run, and how kernel CI reads it: TAP 14 and JUnit XML.

A run *fails* if the audit found a violation or an ITS failure in it. It *gates* (counts
for the exit status, ``not ok`` in TAP, ``<failure>`` in JUnit) if its proposal is a
protected one, or if unprotected proposals were asked for (``--include-unprotected``);
an unprotected proposal's failure is reported as ``not ok ... # TODO`` in TAP and
``<skipped>`` in JUnit: known, expected, and not a regression.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass

from sim.report.words import plural

NOT_GATING = "unprotected proposal: reported, not gating (--include-unprotected gates it)"


@dataclass(frozen=True)
class Verdict:
    scenario: str
    proposal: str
    host: str
    protected: bool
    violations: Counter[str]  # "kind/how" -> how many
    its_failures: list[str]
    gating: bool

    @property
    def failed(self) -> bool:
        return bool(self.violations) or bool(self.its_failures)

    @property
    def gates(self) -> bool:
        """Counts against the exit status."""
        return self.failed and self.gating

    @property
    def name(self) -> str:
        return f"{self.scenario}: {self.proposal}, host: {self.host}"

    def reasons(self) -> str:
        parts = [plural(sum(self.violations.values()), "violation")] if self.violations else []
        parts += [f"{k} {n:,}" for k, n in sorted(self.violations.items())]
        if self.its_failures:
            parts.append(plural(len(self.its_failures), "ITS failure"))
        return ", ".join(parts) or "no violation, ITS correct"


def verdicts(runs, include_unprotected: bool) -> list[Verdict]:
    from sim.proposals import PROPOSALS

    out = []
    for run in runs:
        protected = PROPOSALS[run.proposal].protected
        c = run.result.correctness
        out.append(
            Verdict(
                scenario=run.scenario,
                proposal=run.proposal,
                host=" + ".join(run.behaviours),
                protected=protected,
                violations=Counter(f"{v.kind}/{v.how}" for v in run.violations),
                its_failures=[*c.its_errors, *c.command_failures]
                or ([] if run.summary.its_correct else ["translations not kept"]),
                gating=protected or include_unprotected,
            )
        )
    return out


def summary_line(v: Verdict) -> str:
    status = "FAIL" if v.gates else ("fail, not gating" if v.failed else "ok")
    return f"{status}: {v.name}: {v.reasons()}"


def render_tap(verdicts_: list[Verdict]) -> str:
    """TAP version 14: a test point per run, a YAML block with what failed."""
    out = ["TAP version 14", f"1..{len(verdicts_)}"]
    for i, v in enumerate(verdicts_, 1):
        directive = f" # TODO {NOT_GATING}" if v.failed and not v.gating else ""
        out.append(f"{'not ok' if v.failed else 'ok'} {i} - {v.name}{directive}")
        if v.failed:
            out += [
                "  ---",
                f"  proposal: {v.proposal}",
                f"  protected: {str(v.protected).lower()}",
            ]
            if v.violations:
                out.append("  violations:")
                out += [f"    {k}: {n}" for k, n in sorted(v.violations.items())]
            if v.its_failures:
                out.append("  its_failures:")
                out += [f"    - {_yaml_str(line)}" for line in v.its_failures]
            out.append("  ...")
    return "\n".join(out) + "\n"


def _yaml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_junit(verdicts_: list[Verdict]) -> str:
    """JUnit XML: a testsuite per scenario, a testcase per run."""
    root = ET.Element("testsuites", name="pkvm-sim audit")
    totals = Counter()
    for scenario in dict.fromkeys(v.scenario for v in verdicts_):
        runs = [v for v in verdicts_ if v.scenario == scenario]
        counts = {
            "tests": len(runs),
            "failures": sum(v.gates for v in runs),
            "skipped": sum(v.failed and not v.gating for v in runs),
            "errors": 0,
        }
        totals.update(counts)
        suite = ET.SubElement(
            root, "testsuite", name=scenario, **{k: str(n) for k, n in counts.items()}
        )
        for v in runs:
            case = ET.SubElement(
                suite, "testcase", classname=f"{scenario}.{v.host}", name=v.proposal
            )
            if v.gates:
                ET.SubElement(case, "failure", message=v.reasons(), type="audit").text = v.reasons()
            elif v.failed:
                ET.SubElement(case, "skipped", message=NOT_GATING)
            if v.failed:
                ET.SubElement(case, "system-out").text = "\n".join([v.reasons(), *v.its_failures])
    for key in ("tests", "failures", "skipped", "errors"):
        root.set(key, str(totals[key]))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
