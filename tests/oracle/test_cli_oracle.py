"""`pkvm-sim oracle`: bad input and every set-up or boot failure exit 2 with one clear message."""

from __future__ import annotations

import pytest

from sim.cli import main
from sim.oracle import run as oracle_run
from sim.oracle.boot import EXIT_MARKER, INIT_MARKER, OUT_DISK_MARKER

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
    use_tools(monkeypatch, qemu('say(*BOOT, "[ 2.0] Kernel panic - not syncing: Oh no")'))
    out = tmp_path / "r.md"
    assert main(["oracle", "--kernel", str(user_image), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pkvm-sim oracle: user kernel" in err
    assert "did not reach /init" in err
    assert "Kernel panic - not syncing: Oh no" in err
    assert "Traceback" not in err
    assert not out.exists()


PROBE_QEMU = f"""
append = argv[argv.index("-append") + 1]
protected = "kvm-arm.mode=protected" in append
mode = "Protected hVHE" if protected else "VHE"
say(*BOOT, f"[ 4.4] kvm [1]: {{mode}} mode initialized successfully", "{INIT_MARKER}")
out = KVM_OUT
with open(disk, "r+b") as f:
    f.write(b"PKVMSIMOUT %d\\n" % len(out))
    f.seek(1 << 20)
    f.write(out)
say("{EXIT_MARKER} 0", "{OUT_DISK_MARKER} %d" % len(out))
"""


def test_probe_boots_report_what_came_up(capsys, monkeypatch, qemu, user_image, tmp_path):
    out = b"release=7.3.10+deb13-arm64\nkvm=yes\n"
    use_tools(monkeypatch, qemu(f"KVM_OUT = {out!r}\n" + PROBE_QEMU))
    report = tmp_path / "reports" / "oracle.md"
    assert main(["oracle", "--kernel", str(user_image), "--out", str(report)]) == 0
    captured = capsys.readouterr()
    rows = captured.out.splitlines()
    assert rows[0].split()[:5] == ["user", "7.3.10+deb13-arm64", "nested", "KVM:", "VHE"]
    assert rows[1].split()[:6] == [
        "user",
        "7.3.10+deb13-arm64",
        "protected",
        "KVM:",
        "Protected",
        "hVHE",
    ]
    assert "set-up done" in captured.err
    text = report.read_text()
    assert "| user | 7.3.10 | 7.3.10+deb13-arm64 |" in text
    assert "| protected | Protected hVHE |" in text


def test_kvm_not_coming_up_exits_2(capsys, monkeypatch, qemu, user_image, tmp_path):
    out = b"release=7.3.10+deb13-arm64\nkvm=no\n"
    use_tools(monkeypatch, qemu(f"KVM_OUT = {out!r}\n" + PROBE_QEMU))
    assert main(["oracle", "--kernel", str(user_image), "--modes", "nested", "--out", ""]) == 2
    err = capsys.readouterr().err
    assert "KVM did not come up (mode line: VHE, /dev/kvm: no)" in err


def test_a_different_kernel_booted_exits_2(capsys, monkeypatch, qemu, user_image):
    out = b"release=6.1.0-57-arm64\nkvm=yes\n"
    use_tools(monkeypatch, qemu(f"KVM_OUT = {out!r}\n" + PROBE_QEMU))
    assert main(["oracle", "--kernel", str(user_image), "--modes", "nested", "--out", ""]) == 2
    assert (
        "uname -r says '6.1.0-57-arm64', expected '7.3.10+deb13-arm64'" in capsys.readouterr().err
    )


def test_an_unwritable_report_fails_before_any_set_up(capsys, tmp_path, no_setup, user_image):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["oracle", "--kernel", str(user_image), "--out", str(blocker / "o.md")]) == 2
    assert f"--out {blocker / 'o.md'}: cannot create {blocker}" in capsys.readouterr().err
    assert main(["oracle", "--kernel", str(user_image), "--out", str(tmp_path)]) == 2
    assert "a directory; expected a file name" in capsys.readouterr().err
