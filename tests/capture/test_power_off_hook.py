"""run_l1(after_power_off=...): QEMU kept alive under -no-shutdown, the hook, then QEMU killed.

A fake qemu-system-aarch64 (Python) prints what a guest prints, then stays alive as QEMU
does after the guest's power-off with -no-shutdown.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from sim.oracle.boot import EXIT_MARKER, INIT_MARKER, POWER_OFF_MARKER, run_l1
from sim.oracle.setup import Kernel, Tools


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    image = tmp_path / "Image"
    image.write_bytes(b"fake")
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF")
    script = tmp_path / "qemu"
    script.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(f"""\
        import json, os, sys, time
        open({str(tmp_path / "argv.json")!r}, "w").write(json.dumps(sys.argv[1:]))
        open({str(tmp_path / "pid")!r}, "w").write(str(os.getpid()))
        for line in ("[ 0.1] booting", "{INIT_MARKER}", "{EXIT_MARKER} 0",
                     "pkvm-sim-oracle: out none", "[ 9.9] {POWER_OFF_MARKER}"):
            sys.stdout.write(line + "\\r\\n")
        sys.stdout.flush()
        time.sleep(120)  # -no-shutdown: QEMU stays until it is told to quit
        """)
    )
    script.chmod(0o755)
    kernel = Kernel(name="user", version="7.3.4", image=image, modules=None)
    tools = Tools(qemu=script, cc=Path("/bin/false"), busybox=busybox)
    return kernel, tools, tmp_path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_hook_runs_while_qemu_is_alive_then_qemu_is_killed(fake):
    kernel, tools, tmp = fake
    seen = []

    def hook(out):
        pid = int((tmp / "pid").read_text())
        seen.append((out, alive(pid)))

    result = run_l1(kernel, tools, tmp / "Image", nested=False, timeout_s=60, after_power_off=hook)
    assert seen == [(None, True)]  # /out (none) and QEMU still running during the hook
    assert result.payload_status == 0 and result.output is None
    assert "-no-shutdown" in json.loads((tmp / "argv.json").read_text())
    assert not alive(int((tmp / "pid").read_text()))


def test_a_failing_hook_propagates_and_qemu_is_killed(fake):
    kernel, tools, tmp = fake

    def hook(out):
        raise RuntimeError("monitor gone")

    with pytest.raises(RuntimeError, match="monitor gone"):
        run_l1(kernel, tools, tmp / "Image", nested=False, timeout_s=60, after_power_off=hook)
    assert not alive(int((tmp / "pid").read_text()))


def test_without_a_hook_there_is_no_no_shutdown(fake, monkeypatch):
    kernel, tools, tmp = fake
    from sim.oracle.boot import BootTimeout

    with pytest.raises(BootTimeout):  # the fake never exits: killed at the timeout
        run_l1(kernel, tools, tmp / "Image", nested=False, timeout_s=2)
    assert "-no-shutdown" not in json.loads((tmp / "argv.json").read_text())
