"""reports/oracle.md renders what ran, what was compared and every divergence class."""

from __future__ import annotations

from sim.its.commands import MAPC, MAPD, MAPTI
from sim.oracle.compare import Known, compare
from sim.oracle.model import observe
from sim.oracle.report import KernelRun, Resolved, render, write
from sim.oracle.stream import Phase
from sim.oracle.streams import Layout, _Builder

LAY = Layout(nr_vcpus=2)


def test_report_renders_runs_sources_and_classes_with_minimal_streams(tmp_path):
    b = _Builder("r", LAY)
    b.linux_setup(baser_attrs=0, cbaser_attrs=0)
    b.cmd(MAPC(0, 0, True), MAPD(1, 0, LAY.itt(0), True), MAPTI(1, 0, 8192, 0))
    s = b.stream()
    model = observe(s, kernel="7.3")
    mem = {**model.save.memory, LAY.ct: 0}
    kvm = model.model_copy(
        update={"source": "kvm", "kernel": "7.3.4+deb13-arm64", "save": Phase(memory=mem)}
    )
    same = compare(model, model, s)
    diff = compare(kvm, model, s)
    run = KernelRun(
        kernel="7.3.4+deb13-arm64",
        qemu="QEMU emulator version 7.2.x",
        mode="nested KVM (VHE)",
        streams=[s, s.model_copy(update={"name": "r2"})],
        sources={"r": "random", "r2": "kvm-unit-tests"},
        comparisons=[diff, same.__class__("r2", same.labels, [], {}, same.bytes_compared)],
        wall_time=12.5,
        minimal={"save:cte": s},
    )
    known = [Known(key="regs:*", title="t", reason="why", source="vgic-its.c:fn")]
    fixed = [Resolved("save:ite", "MAPTI twice", "vgic-its.c:vgic_its_map_lpi", "model fixed")]
    text = render([run], known=known, resolved=fixed)
    assert "| 7.3.4+deb13-arm64 | QEMU emulator version 7.2.x | nested KVM (VHE) | 2 | 6 |" in text
    assert "| 0 / 1 | 12.5 s |" in text  # one mismatch, unexplained
    assert "| 7.3.4+deb13-arm64 | random | 1 | 3 | 1 |" in text
    assert "### `save:cte`: collection-table entry (CTE) differs (save)" in text
    assert "**unexplained**" in text
    assert "MAPTI(device_id=0x1, event_id=0x0, intid=0x2000, icid=0x0)" in text
    assert "vgic-its.c:vgic_its_map_lpi" in text and "vgic-its.c:fn" in text
    assert render([run], known=known, resolved=fixed) == text  # deterministic
    out = tmp_path / "reports" / "oracle.md"
    write(out, [run])
    assert out.read_text().startswith("# pkvm-sim oracle") and not list(out.parent.glob("*.tmp"))


def test_evaluate_minimises_each_class_and_the_report_shows_it():
    """The pipeline end to end, with the 6.1 model standing in for a 6.1 kernel."""
    from sim.oracle.compare import describe_command
    from sim.oracle.evaluate import evaluate
    from sim.oracle.streams import known_divergence_streams

    def kernel(streams):
        return [
            observe(s, kernel="6.1").model_copy(update={"source": "kvm", "kernel": "6.1.0-57"})
            for s in streams
        ]

    calls = []

    def rerun(streams):
        calls.append(len(streams))
        return kernel(streams)

    sources = {"known-divergences": known_divergence_streams()}
    kvm = kernel(sources["known-divergences"])
    run = evaluate(
        sources,
        kvm,
        kernel="7.3.4+deb13-arm64",
        qemu="7.2",
        mode="model",
        wall_time=1.0,
        rerun=rerun,
    )
    assert {c.name for c in run.comparisons if c.mismatches} == {
        "kd-mapti-lpi-twice",
        "kd-save-unmapped-collection",
        "kd-save-l1-cleared",
        "kd-mapc-v0-bad-target",
    }
    mini = run.minimal["save:cte"]  # first seen on kd-mapti-lpi-twice
    cmds = [describe_command(h) for h in mini.commands]
    assert cmds == [
        "MAPD(device_id=0x1, size=0x1, itt_addr=0x40200000, valid=True)",
        "MAPTI(device_id=0x1, event_id=0x2, intid=0x2001, icid=0x5)",
        "MAPTI(device_id=0x1, event_id=0x3, intid=0x2001, icid=0x6)",
    ]
    assert len(calls) > 1 and max(calls) > 1  # rounds are batched
    text = render([run])
    assert "Minimal stream `kd-mapti-lpi-twice-min` (3 commands)" in text
    assert "## Resolved divergences" in text and "vgic_its_map_lpi" in text
