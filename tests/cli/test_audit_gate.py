"""`pkvm-sim audit` as a CI gate: protected proposals gate, TAP 14 and JUnit XML, and a
summary-only mode."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from sim.cli import main
from sim.proposals import PROPOSALS
from tests.cli.conftest import SCENARIOS

SMALL = str(SCENARIOS / "small-vm.yaml")
# small-vm on a platform whose EL2 mediates the physical ITS: no DMA reach into the guest.
MEDIATED = ["--set", "lowvisor.mediate_physical_its=true"]


def test_an_honest_audit_passes_though_trusted_host_exposes_everything(capsys):
    assert main(["audit", SMALL, *MEDIATED]) == 0
    out = capsys.readouterr().out
    assert "no violation found in a gating run" in out
    assert "not gating: 1 run of unprotected trusted-host failed" in out
    # ... and gates when asked to.
    assert main(["audit", SMALL, *MEDIATED, "--include-unprotected"]) == 1


def test_protected_proposals_with_dma_reach_still_gate(capsys):
    # No IOMMU in front of the physical ITS: every protected proposal but iommu-gated-its
    # leaves the guest's secrets DMA-reachable, a real finding the gate must keep.
    reach = sum(c.protected and not c.its_behind_iommu for c in PROPOSALS.values())
    assert main(["audit", SMALL, "--summary"]) == 1
    out = capsys.readouterr().out
    fails = [line for line in out.splitlines() if line.startswith("FAIL: ")]
    assert len(fails) == reach and all("confidentiality/dma-reachable 118" in f for f in fails)
    assert "ok: small-vm: iommu-gated-its, host: honest: no violation, ITS correct" in out
    assert out.rstrip().endswith(f"{reach} protected runs with violations\nviolations found")


def test_tap_has_a_plan_a_point_per_run_and_todo_for_unprotected(tmp_path, capsys):
    tap = tmp_path / "audit.tap"
    assert main(["audit", SMALL, *MEDIATED, "--tap", str(tap)]) == 0
    lines = tap.read_text().splitlines()
    assert lines[:2] == ["TAP version 14", f"1..{len(PROPOSALS)}"]
    points = [line for line in lines if re.match(r"(not )?ok \d+ - ", line)]
    assert [int(re.search(r"ok (\d+)", p).group(1)) for p in points] == list(
        range(1, len(PROPOSALS) + 1)
    )
    assert points[0].startswith("not ok 1 - small-vm: trusted-host, host: honest # TODO ")
    assert all(p.startswith("ok ") for p in points[1:])
    block = lines[lines.index(points[0]) + 1 : lines.index("  ...") + 1]
    assert block[0] == "  ---" and "  protected: false" in block
    assert "    confidentiality/could-read: 118" in block


def test_junit_counts_failures_and_skips_as_the_gate_does(tmp_path, capsys):
    junit = tmp_path / "audit.xml"
    argv = ["audit", SMALL, "--proposal", "trusted-host", "--proposal", "share-host-claims"]
    assert main([*argv, "--junit", str(junit), "--attack", "its-dma"]) == 1
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    (suite,) = root
    cases = suite.findall("testcase")
    assert len(cases) == 4  # 2 proposals x (honest + its-dma)
    assert suite.get("tests") == "4" and root.get("tests") == "4"
    failed = [c for c in cases if c.find("failure") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    assert {c.get("name") for c in failed} == {"share-host-claims"}
    assert {c.get("name") for c in skipped} == {"trusted-host"}
    assert suite.get("failures") == str(len(failed)) and suite.get("skipped") == str(len(skipped))
    assert {c.get("classname") for c in cases} == {"small-vm.honest", "small-vm.its-dma"}
    assert "dma-reachable" in failed[0].find("failure").get("message")


def test_summary_prints_a_line_per_run_and_no_violation_detail(capsys):
    argv = ["audit", SMALL, "--attack", "its-dma", "--proposal", "share-host-claims"]
    assert main([*argv, "--summary"]) == 1
    out = capsys.readouterr().out
    assert "<-" not in out and "[confidentiality/" not in out
    runs = [line for line in out.splitlines() if line.startswith(("FAIL: ", "ok: ", "fail, "))]
    assert len(runs) == 2
    assert "its-dma" in out.split("attack x proposal")[1]  # the matrix is kept
    assert len(out.splitlines()) < 20


def test_tap_to_stdout_sends_everything_else_to_stderr(capsys):
    assert main(["audit", SMALL, *MEDIATED, "--proposal", "iommu-gated-its", "--tap", "-"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "TAP version 14\n1..1\nok 1 - small-vm: iommu-gated-its, host: honest\n"
    assert "no violation found" in captured.err
