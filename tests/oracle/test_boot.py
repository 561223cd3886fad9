"""run_l1 against fake QEMUs (small scripts): timeouts, panics, the payload's /out, argv."""

from __future__ import annotations

import json
import os
import time

import pytest

from sim.oracle.boot import (
    EXIT_MARKER,
    INIT_MARKER,
    OUT_DISK_MARKER,
    OUT_HEX_MARKER,
    BootError,
    BootTimeout,
    kvm_mode,
    run_l1,
)
from sim.oracle.errors import OracleSetupError
from sim.oracle.setup import Kernel

MODE_LINE = "[    4.489452] kvm [1]: Protected hVHE mode initialized successfully"


@pytest.fixture
def kernel(tmp_path) -> Kernel:
    image = tmp_path / "Image"
    image.write_bytes(b"fabricated")
    return Kernel(name="newest", version="7.3.10", image=image, modules=None, release="7.3.10")


@pytest.fixture
def initramfs(tmp_path):
    path = tmp_path / "initramfs.cpio.gz"
    path.write_bytes(b"fabricated")
    return path


def argv_of(tmp_path) -> list[str]:
    return json.loads((tmp_path / "argv.json").read_text())


def test_a_panic_before_init_is_a_boot_error_with_the_last_console_lines(
    qemu, kernel, initramfs, cache
):
    tools = qemu(
        """
        say(*BOOT, "[    3.1] Kernel panic - not syncing: VFS: Unable to mount root fs")
        say("[    3.2] ---[ end Kernel panic - not syncing ]---")
        """
    )
    with pytest.raises(BootError) as exc:
        run_l1(kernel, tools, initramfs, timeout_s=30)
    message = str(exc.value)
    assert "did not reach /init" in message
    assert "Kernel panic - not syncing: VFS: Unable to mount root fs" in message
    assert "boot line 39" in message
    assert "boot line 0" in exc.value.console  # the whole console is kept
    log = cache / "runs" / "newest-nested.console"
    assert f"whole console: {log}" in message
    assert "boot line 0\n" in log.read_text()
    assert "boot line 10" not in message  # the last ~20 lines, not the whole console
    assert isinstance(exc.value, OracleSetupError)


def test_a_hang_is_killed_at_the_timeout_with_its_process_group(qemu, kernel, initramfs, tmp_path):
    child = tmp_path / "child.pid"
    tools = qemu(
        f"""
        p = subprocess.Popen(["sleep", "600"])
        open({str(child)!r}, "w").write(str(p.pid))
        say(*BOOT, "{INIT_MARKER}", "payload running")
        time.sleep(600)
        """
    )
    start = time.monotonic()
    with pytest.raises(BootTimeout) as exc:
        run_l1(kernel, tools, initramfs, timeout_s=2)
    assert time.monotonic() - start < 20
    message = str(exc.value)
    assert "not powered off after 2 s (timeout 2 s" in message
    assert "payload running" in message
    pid = int(child.read_text())
    for _ in range(50):  # the killed sleep is reaped by init shortly
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"QEMU's child {pid} survived the timeout")


def test_no_init_within_the_init_timeout(qemu, kernel, initramfs):
    tools = qemu('say(*BOOT, "[ 9.0] rcu: INFO: rcu_sched self-detected stall")\ntime.sleep(600)')
    with pytest.raises(BootTimeout, match=r"no /init after 1 s") as exc:
        run_l1(kernel, tools, initramfs, timeout_s=60, init_timeout_s=1)
    assert "rcu_sched self-detected stall" in str(exc.value)


def test_stopping_during_the_payload_is_a_boot_error(qemu, kernel, initramfs):
    tools = qemu(f'say(*BOOT, "{INIT_MARKER}", "[ 20.0] Internal error: Oops: 0000000096000004")')
    with pytest.raises(BootError, match="stopped before the payload finished") as exc:
        run_l1(kernel, tools, initramfs, timeout_s=30)
    assert "Oops: 0000000096000004" in str(exc.value)


def test_output_from_the_disk_and_the_mode_line(qemu, kernel, initramfs, tmp_path):
    data = bytes(range(256)) * 5000  # 1.28 MB
    (tmp_path / "data").write_bytes(data)
    tools = qemu(
        f"""
        say(*BOOT, {MODE_LINE!r}, "{INIT_MARKER}")
        payload = open({str(tmp_path / "data")!r}, "rb").read()
        with open(disk, "r+b") as f:
            f.write(b"PKVMSIMOUT %d\\n" % len(payload))
            f.seek(1 << 20)
            f.write(payload)
        say("{EXIT_MARKER} 3", "{OUT_DISK_MARKER} %d" % len(payload), "[ 9.9] reboot: Power down")
        """
    )
    r = run_l1(kernel, tools, initramfs, protected=True, timeout_s=30)
    assert r.output == data
    assert r.payload_status == 3
    assert r.kvm_mode == "Protected hVHE"
    assert r.protected
    assert r.init_s <= r.elapsed_s
    assert "\r" not in r.console
    argv = argv_of(tmp_path)
    assert argv[argv.index("-M") + 1] == "virt,gic-version=3,its=on,virtualization=on"
    append = argv[argv.index("-append") + 1]
    assert append == "console=ttyAMA0 panic=-1 rdinit=/init kvm-arm.mode=protected"
    assert argv[argv.index("-kernel") + 1] == str(kernel.image)
    assert argv[argv.index("-initrd") + 1] == str(initramfs)
    assert "virtio-blk-device,drive=out" in argv
    assert argv[argv.index("-nic") + 1] == "none"
    assert not os.path.exists(argv[argv.index("-drive") + 1][5:].split(",")[0])  # cleaned up


def test_output_from_console_hex_when_there_is_no_disk(qemu, kernel, initramfs, tmp_path):
    data = b"saved tables \x00\xff" * 3
    hexed = data.hex()
    rows = [hexed[i : i + 64] for i in range(0, len(hexed), 64)]
    rows[-1] = rows[-1] + " " * (64 - len(rows[-1]))  # hexdump pads the last row
    tools = qemu(
        f"""
        say(*BOOT, "{INIT_MARKER}", "{EXIT_MARKER} 0", "{OUT_HEX_MARKER} {len(data)}")
        say(*["@@" + r for r in {rows!r}], "pkvm-sim-oracle: out end")
        """
    )
    r = run_l1(kernel, tools, initramfs, nested=False, cmdline_extra="loglevel=4", timeout_s=30)
    assert r.output == data
    assert r.kvm_mode is None
    argv = argv_of(tmp_path)
    assert argv[argv.index("-M") + 1] == "virt,gic-version=3,its=on"
    assert argv[argv.index("-append") + 1].endswith("rdinit=/init loglevel=4")


def test_no_out_file_gives_no_output(qemu, kernel, initramfs, tmp_path):
    tools = qemu(f'say("{INIT_MARKER}", "{EXIT_MARKER} 0", "pkvm-sim-oracle: out none")')
    r = run_l1(kernel, tools, initramfs, timeout_s=30, memory_mib=1024, cpus=4, qemu_extra=["-S0"])
    assert r.output is None
    assert r.payload_status == 0
    argv = argv_of(tmp_path)
    assert (argv[argv.index("-m") + 1], argv[argv.index("-smp") + 1]) == ("1024", "4")
    assert argv[-1] == "-S0"


def test_dying_while_returning_out_is_a_boot_error(qemu, kernel, initramfs):
    tools = qemu(f'say("{INIT_MARKER}", "{EXIT_MARKER} 0", "[ 30.0] Kernel panic - in dd")')
    with pytest.raises(BootError, match="stopped while returning /out") as exc:
        run_l1(kernel, tools, initramfs, timeout_s=30)
    assert "Kernel panic - in dd" in exc.value.console


def test_a_failed_disk_write_is_a_boot_error(qemu, kernel, initramfs):
    tools = qemu(
        f'say("{INIT_MARKER}", "{EXIT_MARKER} 0",'
        ' "pkvm-sim-oracle: out error writing 9999999 bytes to /dev/vda")'
    )
    with pytest.raises(BootError, match=r"could not write /out: .*writing 9999999 bytes") as exc:
        run_l1(kernel, tools, initramfs, timeout_s=30, output_mib=8)
    assert "the disk holds 8 MiB" in str(exc.value)


def test_a_missing_qemu_is_a_clear_error(kernel, initramfs, fake_tools):
    with pytest.raises(OracleSetupError, match=r"cannot run .*qemu"):
        run_l1(kernel, fake_tools, initramfs, timeout_s=5)


@pytest.mark.parametrize(
    ("line", "mode"),
    [
        ("[    1.679271] kvm [1]: VHE mode initialized successfully", "VHE"),
        ("[    6.52] kvm [1]: Protected nVHE mode initialized successfully", "Protected nVHE"),
        ("[    4.48] kvm [1]: Protected hVHE mode initialized successfully", "Protected hVHE"),
        ("[    1.00] kvm [1]: Hyp mode initialized successfully", "Hyp"),
        ("[    1.00] kvm [1]: VHE+NV2 mode initialized successfully", "VHE+NV2"),
        ("[    1.00] kvm [1]: HYP mode not available", None),
    ],
)
def test_kvm_mode_line(line, mode):
    assert kvm_mode(f"boot\n{line}\nmore") == mode
