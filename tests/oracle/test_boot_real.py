"""Real boots (``pytest -m oracle``): Debian's newest arm64 kernel, nested KVM and pKVM.

Sets itself up like ``pkvm-sim oracle`` (root and Debian's archive on the first run; the
user's cache afterwards). Deselected by default: a boot takes 10-30 s under TCG.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from sim.oracle.boot import payload_initramfs, run_l1
from sim.oracle.setup import debian_kernel, ensure_host_tools

pytestmark = pytest.mark.oracle

# 3 MB from the guest's RNG, its md5 printed on the console: /out must come back whole.
PAYLOAD = """\
uname -r
ls -l /dev/kvm
head -c 3000000 /dev/urandom > /out
md5sum /out
"""


@pytest.fixture(scope="module")
def newest():
    progress = print
    return ensure_host_tools(progress), debian_kernel("newest", progress)


@pytest.mark.parametrize(
    ("protected", "mode"), [(False, "VHE"), (True, "Protected hVHE")], ids=["nested", "pkvm"]
)
def test_newest_kernel_boots_with_kvm_and_returns_out(newest, protected, mode):
    tools, kernel = newest
    assert int(kernel.version.split(".")[0]) >= 7  # Debian's newest arm64 kernel today: 7.3.x
    result = run_l1(
        kernel, tools, payload_initramfs(kernel, tools, PAYLOAD), protected=protected, timeout_s=300
    )
    assert result.kvm_mode == mode
    assert f"kvm [1]: {mode} mode initialized successfully" in result.console
    assert kernel.release in result.console.splitlines()
    assert "crw-------    1 0        0          10, 232" in result.console  # /dev/kvm
    assert result.payload_status == 0
    assert len(result.output) == 3_000_000
    assert f"{hashlib.md5(result.output).hexdigest()}  /out" in result.console


def test_out_comes_back_on_the_console_without_the_disk_modules(newest):
    tools, kernel = newest
    bare = replace(kernel, modules=None)  # no virtio_mmio/virtio_blk: no /dev/vda
    payload = "head -c 20000 /dev/urandom > /out\nmd5sum /out\n"
    result = run_l1(bare, tools, payload_initramfs(bare, tools, payload), timeout_s=300)
    assert "pkvm-sim-oracle: out hex 20000" in result.console
    assert len(result.output) == 20000
    assert f"{hashlib.md5(result.output).hexdigest()}  /out" in result.console
