"""`pkvm-sim oracle`: bad input and every set-up or boot failure exit 2 with one clear message."""

from __future__ import annotations

import pytest

from sim.cli import main
from sim.oracle import run as oracle_run

from .conftest import fake_image


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--modules", "/x"], "--modules: only with --kernel IMAGE"),
        (["--kernels", "newest,sid"], "--kernels: expected a comma-separated list of newest"),
        (["--kernels", ""], "--kernels: expected"),
        (["--modes", "hvhe"], "--modes: expected a comma-separated list of nested, protected"),
        (["--timeout", "0"], "--timeout: expected a positive number of seconds, got 0.0"),
        (["--timeout", "soon"], "invalid float value"),
    ],
)
def test_bad_arguments_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["oracle", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.fixture
def no_setup(monkeypatch):
    """Fail the test if anything would be installed or downloaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("set-up ran")

    monkeypatch.setattr(oracle_run, "ensure_host_tools", refuse)
    monkeypatch.setattr(oracle_run, "debian_kernel", refuse)


def test_a_bad_user_kernel_fails_before_any_set_up(capsys, tmp_path, no_setup):
    bad = tmp_path / "vmlinux"
    bad.write_bytes(b"\x7fELF" + bytes(100))
    assert main(["oracle", "--kernel", str(bad), "--out", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pkvm-sim oracle: --kernel {bad}: not an arm64 kernel Image")
    assert "Traceback" not in err
    assert not (tmp_path / "r.md").exists()


@pytest.fixture
def user_image(tmp_path):
    image = tmp_path / "Image"
    image.write_bytes(fake_image("7.3.10+deb13-arm64"))
    return image


def use_tools(monkeypatch, tools):
    monkeypatch.setattr(oracle_run, "ensure_host_tools", lambda progress: tools)


def test_a_kernel_that_panics_exits_2_with_the_console_tail(
    capsys, monkeypatch, qemu, user_image, tmp_path
):
    from sim.oracle import kvm

    use_tools(monkeypatch, qemu('say(*BOOT, "[ 2.0] Kernel panic - not syncing: Oh no")'))
    vmm = tmp_path / "vmm"
    vmm.write_bytes(b"\x7fELF")
    monkeypatch.setattr(kvm, "build_vmm", lambda tools: vmm)
    out = tmp_path / "r.md"
    assert main(["oracle", "--kernel", str(user_image), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pkvm-sim oracle: user kernel" in err
    assert "did not reach /init" in err
    assert "Kernel panic - not syncing: Oh no" in err
    assert "Traceback" not in err
    assert not out.exists()


def fake_kvm(monkeypatch, tools, *, mode="VHE", release="7.3.10+deb13-arm64", plant=None):
    """Real KVM replaced by the model itself (and ``plant`` applied to its observations):
    the flow, the judging and the report are the real ones."""
    from sim.oracle.kvm import RunStats
    from sim.oracle.model import observe

    use_tools(monkeypatch, tools)

    def run_streams_stats(kernel, tools, streams, *, protected_mode, timeout_s, progress):
        kvm_mode = ("Protected hVHE" if protected_mode else "VHE") if mode == "VHE" else mode
        obs = [
            observe(s, kernel="7.3").model_copy(update={"source": "kvm", "kernel": release})
            for s in streams
        ]
        if plant is not None:
            obs = [plant(o) for o in obs]
        return obs, RunStats(len(streams), 1.0, 0.5, (0,) * len(streams), kvm_mode, {})

    monkeypatch.setattr(oracle_run, "run_streams_stats", run_streams_stats)
    monkeypatch.setattr(
        oracle_run,
        "run_streams",
        lambda *a, **k: run_streams_stats(*a, progress=None, **k)[0],
    )


def test_the_flow_judges_every_stream_and_writes_the_report(
    capsys, monkeypatch, qemu, user_image, tmp_path
):
    fake_kvm(monkeypatch, qemu("pass"))
    report = tmp_path / "reports" / "oracle.md"
    argv = ["oracle", "--kernel", str(user_image), "--random", "5", "--out", str(report)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    rows = captured.out.splitlines()
    assert rows[0].split()[:3] == ["7.3.10+deb13-arm64", "nested", "KVM"]
    assert rows[1].split()[:2] == ["7.3.10+deb13-arm64", "pKVM"]
    assert " 0 unexplained" in rows[0] and " 0 unexplained" in rows[1]
    text = report.read_text()
    assert "| random (seed 1) | 5 |" in text
    assert "| 7.3.10+deb13-arm64 | pkvm |" in text
    assert "No mismatch" in text


def test_an_unexplained_mismatch_exits_1_with_a_minimal_stream(
    capsys, monkeypatch, qemu, user_image, tmp_path
):
    def plant(obs):  # "KVM" reads one more CREADR step than the model after command 0
        if not obs.creadr:
            return obs
        return obs.model_copy(update={"creadr": (obs.creadr[0] + 32, *obs.creadr[1:])})

    fake_kvm(monkeypatch, qemu("pass"), plant=plant)
    report = tmp_path / "oracle.md"
    argv = ["oracle", "--kernel", str(user_image), "--modes", "nested", "--random", "2"]
    assert main([*argv, "--out", str(report)]) == 1
    text = report.read_text()
    assert "**unexplained**" in text
    assert "Minimal stream" in text


def test_kvm_in_the_wrong_mode_exits_2(capsys, monkeypatch, qemu, user_image):
    from sim.oracle import kvm

    use_tools(monkeypatch, qemu("pass"))

    def wrong_mode(*args, **kwargs):
        raise kvm.KvmOracleError("user: KVM initialised as VHE, expected protected mode")

    monkeypatch.setattr(oracle_run, "run_streams_stats", wrong_mode)
    argv = ["oracle", "--kernel", str(user_image), "--modes", "protected", "--out", ""]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "KVM initialised as VHE, expected protected mode" in err
    assert "Traceback" not in err


def test_a_different_kernel_booted_exits_2(capsys, monkeypatch, qemu, user_image):
    fake_kvm(monkeypatch, qemu("pass"), release="6.1.0-57-arm64")
    argv = ["oracle", "--kernel", str(user_image), "--modes", "nested", "--random", "0"]
    assert main([*argv, "--out", ""]) == 2
    err = capsys.readouterr().err
    assert "uname -r says '6.1.0-57-arm64', expected '7.3.10+deb13-arm64'" in err


def test_an_unwritable_report_fails_before_any_set_up(capsys, tmp_path, no_setup, user_image):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["oracle", "--kernel", str(user_image), "--out", str(blocker / "o.md")]) == 2
    assert f"--out {blocker / 'o.md'}: cannot create {blocker}" in capsys.readouterr().err
    assert main(["oracle", "--kernel", str(user_image), "--out", str(tmp_path)]) == 2
    assert "a directory; expected a file name" in capsys.readouterr().err
