"""`pkvm-sim run --trace`: Chrome trace-event JSON whose events are the run's own."""

from __future__ import annotations

import json
from collections import Counter

from sim.cli import main
from tests.cli.conftest import SCENARIOS

MALICIOUS = str(SCENARIOS / "malicious-host.yaml")
PROPOSALS = ["share-host-claims", "iommu-gated-its"]  # in the scenario's order


def test_trace_is_trace_event_json_matching_the_runs_counts(tmp_path, capsys):
    trace, results = tmp_path / "t.json", tmp_path / "r.json"
    argv = ["run", MALICIOUS, "--seeds", "1", "--trace", str(trace), "--json", str(results)]
    assert main([*argv, *(a for p in PROPOSALS for a in ("--proposal", p))]) == 0
    doc = json.loads(trace.read_text())
    events = doc["traceEvents"]
    assert doc["displayTimeUnit"] == "ns"
    assert [r["proposal"] for r in doc["otherData"]["runs"]] == PROPOSALS
    assert doc["otherData"]["provenance"]["scenarios"][0]["name"] == "malicious-host"
    meta = [e for e in events if e["ph"] == "M"]
    timed = [e for e in events if e["ph"] != "M"]
    assert events[: len(meta)] == meta  # metadata first, then events in time order
    assert [e["ts"] for e in timed] == sorted(e["ts"] for e in timed)
    for e in timed:
        assert {"name", "cat", "ph", "ts", "pid", "tid"} <= set(e)
        assert e["ph"] in ("X", "i") and isinstance(e["pid"], int) and isinstance(e["tid"], int)
        assert e["ph"] == "i" or e["dur"] >= 0
    processes = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert len(set(threads)) == len(threads)  # one track per (machine, actor)
    for result in json.loads(results.read_text())["results"]:
        prefix = f"{result['proposal']}: "
        mine = [e for e in timed if processes[e["pid"]].startswith(prefix)]
        by_cat = Counter(e["cat"] for e in mine)
        costs, correctness = result["costs"], result["correctness"]
        assert by_cat["hypercall"] == costs["hypercalls"]
        calls = Counter(e["name"] for e in mine if e["cat"] == "hypercall")
        assert calls == costs["hypercalls_by_call"]
        shares = [e for e in mine if e["cat"] == "share"]
        pages = Counter()
        for e in shares:
            pages[e["name"]] += e["args"]["nr_pages"]
        assert pages["GUEST_SHARE_HOST"] == costs["pages_shared"]
        assert pages["GUEST_UNSHARE_HOST"] == costs["pages_unshared"]
        assert by_cat["fault"] == correctness["stage2_faults"]
        errors = Counter(e["args"]["error"] for e in mine if "error" in e.get("args", {}))
        assert errors == Counter(correctness["command_errors"])
        phases = [e["name"] for e in mine if e["cat"] == "migration"]
        assert phases == ["save", "transfer", "import guest pages", "restore"]
        names = {n for (pid, _), n in threads.items() if processes[pid].startswith(prefix)}
        assert {"src.host", "dst.host", "src.lowvisor", "dst.lowvisor"} <= names
        # KVM's vITS runs the guest's queue on both machines (as ITS DMA behind an IOMMU).
        kvm = {threads[e["pid"], e["tid"]] for e in mine if e["cat"] == "its-command"}
        assert kvm in ({"src.kvm-vits", "dst.kvm-vits"}, {"src.its-hw", "dst.its-hw"})
    # One scenario, two runs; each named on its own processes.
    faults = [e for e in timed if e["cat"] == "fault"]
    assert faults and all(processes[e["pid"]].startswith("iommu-gated-its: ") for e in faults)


def test_a_single_run_trace_names_machines_plainly(tiny, tmp_path, capsys):
    trace = tmp_path / "t.json"
    assert (
        main(
            [
                "run",
                "--seeds",
                "1",
                str(tiny),
                "--proposal",
                "share-host-claims",
                "--trace",
                str(trace),
            ]
        )
        == 0
    )
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names == {"src", "dst", "migration"}
    assert "trace events" in capsys.readouterr().out


def test_trace_into_a_missing_directory_is_refused_before_the_run(tiny, tmp_path, capsys):
    trace = tmp_path / "no" / "t.json"
    assert main(["run", "--seeds", "1", str(tiny), "--trace", str(trace)]) == 2
    err = capsys.readouterr().err
    assert err == f"pkvm-sim: --trace {trace}: directory {trace.parent} does not exist\n"
