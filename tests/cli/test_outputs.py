"""Outputs checked before any run, written whole or not at all, and interrupts that end
cleanly: one line, exit 130 (143 for SIGTERM), old report intact, no worker left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim.cli import main
from tests.cli.conftest import ROOT, remount_ro

VARY = ["--vary", "guest.secret_density=0,0.5", "--vary", "devices[0].vectors=3,7"]


def _no_run(monkeypatch) -> None:
    """Fail the test if anything gets simulated."""

    def refuse(*args, **kwargs):
        raise AssertionError("simulated before checking its outputs")

    # Every simulation goes through simulate(), in this process or a worker's. sim.matrix
    # first: importing it while sim.run.simulate is patched would bind the patch.
    for name in ("sim.matrix.simulate", "sim.run.simulate", "sim.parallel.run_jobs"):
        monkeypatch.setattr(name, refuse)
    monkeypatch.setattr("sim.sweep.run_cell", refuse)


def _one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize(
    ("command", "extra"),
    [("run", []), ("compare", []), ("audit", []), ("sweep", ["--vary", "guest.vcpus=2,4"])],
)
def test_json_into_a_missing_directory_is_refused_before_any_run(
    tiny, tmp_path, monkeypatch, capsys, command, extra
):
    _no_run(monkeypatch)
    monkeypatch.setattr("sim.matrix.audit_run", lambda *a: pytest.fail("ran"))
    target = tmp_path / "missing" / "out.json"
    argv = [command, str(tiny), *extra, "--json", str(target)]
    if command in ("compare", "sweep"):
        argv += ["--out", str(tmp_path / "report")]
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == f"pkvm-sim: --json {target}: directory {target.parent} does not exist"
    assert not (tmp_path / "report").exists()


def test_json_onto_dev_full_is_one_line_and_exit_2(tiny, capsys):
    assert (
        main(
            ["run", "--seeds", "1", str(tiny), "--proposal", "trusted-host", "--json", "/dev/full"]
        )
        == 2
    )
    line = _one_line(capsys.readouterr().err)
    assert line == "pkvm-sim: --json /dev/full: no space left on device"


def test_a_full_disk_is_found_before_any_run(tiny, small_fs, monkeypatch, capsys):
    fs = small_fs(64)
    (fs / "filler").write_bytes(b"\0" * (64 << 10))
    _no_run(monkeypatch)
    for argv in (
        ["run", str(tiny), "--json", str(fs / "r.json")],
        ["compare", str(tiny), "--out", str(fs)],
        ["sweep", str(tiny), *VARY, "--out", str(fs / "sweep")],
    ):
        assert main(argv) == 2
        line = _one_line(capsys.readouterr().err)
        assert "no space left on device" in line and str(fs) in line
    assert sorted(p.name for p in fs.iterdir()) == ["filler"]


def test_a_read_only_directory_is_found_before_any_run(tiny, small_fs, monkeypatch, capsys):
    fs = small_fs(256)
    remount_ro(fs)
    _no_run(monkeypatch)
    for argv in (
        ["run", str(tiny), "--trace", str(fs / "t.json")],
        ["compare", str(tiny), "--out", str(fs / "reports")],
    ):
        assert main(argv) == 2
        line = _one_line(capsys.readouterr().err)
        assert "read-only file system" in line and str(fs) in line


def test_a_disk_that_fills_while_writing_leaves_no_partial_report(tiny, small_fs, capsys):
    fs = small_fs(200)  # passes the up-front check, cannot hold the charts
    assert (
        main(["compare", "--seeds", "1", "--cost-samples", "0", str(tiny), "--out", str(fs)]) == 2
    )
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"pkvm-sim: --out {fs / 'tiny'}: no space left on device")
    assert list(fs.iterdir()) == []  # neither the report nor its staging directory


def test_an_interrupt_while_writing_keeps_the_old_report_whole(tiny, tmp_path, monkeypatch, capsys):
    assert (
        main(["compare", "--seeds", "1", "--cost-samples", "0", str(tiny), "--out", str(tmp_path)])
        == 0
    )
    old = tree(tmp_path)
    from sim.report import charts

    written = []

    def interrupted(results, out, *args, **kwargs):
        (out / "exposure.png").write_bytes(b"\x89PNG half")
        written.append(out)
        raise KeyboardInterrupt

    monkeypatch.setattr(charts, "write_charts", interrupted)
    argv = ["compare", str(tiny), "--out", str(tmp_path), "--set", "guest.vcpus=4"]
    assert main(argv) == 130
    assert _one_line(capsys.readouterr().err) == "pkvm-sim: interrupted"
    assert written and not written[0].exists()  # the staging directory went
    assert tree(tmp_path) == old


@pytest.mark.parametrize(
    ("interrupt", "status", "line"),
    [
        (KeyboardInterrupt, 130, "pkvm-sim: interrupted"),
        ("sim.cli.Terminated", 128 + signal.SIGTERM, "pkvm-sim: terminated"),
    ],
)
def test_a_signal_during_an_extension_import_is_that_signal(
    tiny, tmp_path, monkeypatch, capsys, interrupt, status, line
):
    # CPython fails the import of a C extension interrupted in its init with an
    # ImportError ("initialization failed") whose cause is the KeyboardInterrupt.
    if isinstance(interrupt, str):
        from sim.cli import Terminated as interrupt

    def import_interrupted(*args, **kwargs):
        raise ImportError("initialization failed") from interrupt()

    monkeypatch.setattr("sim.run.simulate", import_interrupted)
    assert main(["run", str(tiny), "--seeds", "1"]) == status
    assert _one_line(capsys.readouterr().err) == line


def test_an_import_error_of_its_own_is_not_taken_for_an_interrupt(tiny, monkeypatch):
    def broken(*args, **kwargs):
        raise ImportError("no module named frobnicate")

    monkeypatch.setattr("sim.run.simulate", broken)
    with pytest.raises(ImportError, match="frobnicate"):
        main(["run", str(tiny), "--seeds", "1"])


def test_a_new_report_replaces_the_old_one_whole(tiny, tmp_path, capsys):
    reports = tmp_path / "reports"
    assert (
        main(["compare", "--seeds", "1", "--cost-samples", "0", str(tiny), "--out", str(reports)])
        == 0
    )
    (reports / "tiny" / "stale.png").write_bytes(b"from an older version")
    assert (
        main(
            [
                "compare",
                "--seeds",
                "1",
                "--cost-samples",
                "0",
                str(tiny),
                "--out",
                str(reports),
                "--set",
                "guest.vcpus=4",
            ]
        )
        == 0
    )
    assert not (reports / "tiny" / "stale.png").exists()
    assert sorted(p.name for p in reports.iterdir()) == ["tiny"]  # nothing left beside


def test_a_directory_that_is_not_a_report_is_not_replaced(tiny, tmp_path, monkeypatch, capsys):
    _no_run(monkeypatch)
    mine = tmp_path / "tiny"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    assert (
        main(["compare", "--seeds", "1", "--cost-samples", "0", str(tiny), "--out", str(tmp_path)])
        == 2
    )
    line = _one_line(capsys.readouterr().err)
    assert "exists and is not a pkvm-sim report (no results.json)" in line
    assert (mine / "notes.txt").read_text() == "mine\n"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> set[int]:
    children: dict[int, set[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, set()).add(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sim.cli", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        start_new_session=True,  # its own process group, as a shell job has
    )


def _wait_until(what, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not what():
        if time.monotonic() > end:
            pytest.fail("timed out")
        time.sleep(0.05)


def test_sigint_during_compare_is_one_line_and_exit_130(tmp_path):
    small = ROOT / "scenarios" / "small-vm.yaml"
    reports = tmp_path / "reports"
    proc = _start(["compare", str(small), "--out", str(reports)])
    # Past the imports and into the simulation (small-vm takes seconds of CPU).
    _wait_until(lambda: proc.poll() is not None or _cpu_seconds(proc.pid) > 1.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err == "pkvm-sim: interrupted\n"
    assert not reports.exists()


@pytest.mark.parametrize(
    ("how", "status", "line"),
    [
        ("SIGTERM to the parent", 128 + signal.SIGTERM, "pkvm-sim: terminated"),
        ("Ctrl-C to the process group", 130, "pkvm-sim: interrupted"),
    ],
)
def test_sweep_on_two_workers_stopped_leaves_no_process(tmp_path, how, status, line):
    small = ROOT / "scenarios" / "small-vm.yaml"  # 40 cells of a second or so each
    argv = ["sweep", str(small), "--vary", "guest.vcpus=2,4", "--seeds", "20", "--jobs", "2"]
    argv.append("--no-cache")
    proc = _start([*argv, "--out", str(tmp_path / "out")])
    seen: set[int] = set()

    def workers_running() -> bool:
        seen.update(_descendants(proc.pid))
        # the resource tracker and two workers, the workers past their imports
        busy = [p for p in seen if _alive(p) and _cpu_seconds(p) > 0.5]
        return proc.poll() is not None or (len(seen) >= 3 and len(busy) >= 2)

    _wait_until(workers_running)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    if how.startswith("SIGTERM"):
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)  # the workers get it too
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert err == line + "\n"  # one line: no worker's traceback, no leak warning
    _wait_until(lambda: not any(_alive(p) for p in seen), timeout=10)
    assert not (tmp_path / "out").exists()


def test_bench_refuses_an_unwritable_out_before_measuring(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sim.bench.bare_simpy", lambda *a, **kw: pytest.fail("measured"))
    target = tmp_path / "afile"
    target.write_text("mine\n")
    assert main(["bench", "--quick", "--out", str(target)]) == 2
    assert _one_line(capsys.readouterr().err) == f"pkvm-sim: --out {target}: file exists"
    assert target.read_text() == "mine\n"
