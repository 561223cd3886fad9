"""The VMM's job and output formats (sim/oracle/kvm.py), and that vmm.c compiles."""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import pytest

from sim.oracle import kvm
from sim.oracle.setup import Tools
from sim.oracle.stream import (
    ITS_BASE,
    MemFill,
    Observation,
    Phase,
    RegWrite,
    Restore,
    RestoreResult,
    Stream,
)

B = 0x4000_0000


def cmd(*dw: int) -> str:
    return struct.pack("<4Q", *dw).hex()


def test_registers_resolve_to_frames_and_widths():
    assert kvm.reg_address("GITS_CBASER", 2) == (ITS_BASE + 0x80, 64)
    assert kvm.reg_address("GITS_CTLR", 2) == (ITS_BASE, 32)
    assert kvm.reg_address("GITS_BASER1", 2) == (ITS_BASE + 0x108, 64)
    # vCPU 1's RD_base frame is 128 KiB (RD_base + SGI_base) past vCPU 0's
    assert kvm.reg_address("GICR1_PROPBASER", 2) == (0x080A_0000 + 0x2_0000 + 0x70, 64)
    assert kvm.reg_address("GICR0_CTLR", 1) == (0x080A_0000, 32)


@pytest.mark.parametrize("reg", ["GITS_BASER8", "GICR2_CTLR", "GITS_FOO", "GICD_CTLR"])
def test_unknown_or_out_of_range_register_is_named(reg):
    with pytest.raises(kvm.KvmOracleError, match=reg):
        kvm.reg_address(reg, 2)


def test_commands_go_to_the_slot_cwriter_points_at_and_wrap_at_the_queue_size():
    # a 4 KiB queue (CBASER.Size = 0) at B + 0x10000; the guest starts at CWRITER = 0xfc0
    s = Stream(
        name="wrap",
        regs=(
            RegWrite(reg="GITS_CBASER", value=(1 << 63) | (B + 0x10000)),
            RegWrite(reg="GITS_CWRITER", value=0xFC0),
        ),
        commands=(cmd(5, 0, 0, 0), cmd(5, 0, 0, 0), cmd(5, 0, 0, 0)),
    )
    lines = kvm.encode_job([s]).decode().splitlines()
    c = [ln for ln in lines if ln.startswith("C ")]
    assert [ln.split()[1:3] for ln in c] == [
        ["40010fc0", "fe0"],
        ["40010fe0", "0"],
        ["40010000", "20"],
    ]
    assert c[0].split()[3] == "05" + "0" * 62
    assert "W 64 8080080 8000000040010000" in lines
    assert "W 64 8080088 fc0" in lines


def test_job_lines_for_a_protected_stream_with_fill_share_reads_and_restores():
    big = "ab" * (kvm.FILL_CHUNK + 8)  # one chunk and 8 bytes
    s = Stream(
        name="p",
        nr_vcpus=1,
        ram_size=1 << 20,
        protected=True,
        share=((B + 0x3000, 2),),
        fill=(MemFill(gpa=B, data=big),),
        regs=(RegWrite(reg="GICR0_CTLR", value=1),),
        commands=(cmd(5, 0, 0, 0),),
        # guest stores after the commands: a byte, then an aligned word, then a byte
        fill_after=(MemFill(gpa=B + 0x107, data="ff" + "0102030405060708" + "ee"),),
        host_reads=(B + 0x8000,),
        restores=(
            Restore(
                name="r1", patches=(MemFill(gpa=B + 8, data="0102"),), commands=(cmd(9, 0, 0, 0),)
            ),
        ),
        save_pending=False,
    )
    lines = kvm.encode_job([s]).decode().splitlines()
    assert lines[:2] == ["S p", "V 1 1 40000000 100000 1 0"]
    fills = [ln.split() for ln in lines if ln.startswith("F ")]
    assert [(f[1], len(f[2]) // 2) for f in fills] == [
        ("40000000", kvm.FILL_CHUNK),
        (f"{B + kvm.FILL_CHUNK:x}", 8),
    ]
    assert [ln for ln in lines if ln[0] in "MWCRXPQ"] == [
        "M 40003000",
        "M 40004000",
        "W 32 80a0000 1",
        "C 0 20 05" + "0" * 62,  # no CBASER written: a 4 KiB queue at 0
        "W 8 40000107 ff",
        "W 64 40000108 807060504030201",
        "W 8 40000110 ee",
        "R 40008000",
        "X r1",
        "P 40000008 0102",
        "Q 09" + "0" * 62,
    ]
    assert lines[-1] == "E"


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (Stream(name="two words"), "stream name"),
        (Stream(name="c", commands=("00" * 31,)), "command 0: expected 64 hex digits"),
        (Stream(name="f", fill=(MemFill(gpa=B, data="abc"),)), "fill at 0x40000000"),
        (Stream(name="r", regs=(RegWrite(reg="GITS_CTLR", value=1 << 32),)), "exceeds 32 bits"),
        (Stream(name="a", ram_size=(1 << 20) + 1), "4 KiB aligned"),
        (
            Stream(name="q", restores=(Restore(name="r", commands=("zz" * 32,)),)),
            "restore r: command 0",
        ),
    ],
)
def test_bad_streams_are_refused_with_the_field_named(stream, message):
    with pytest.raises(kvm.KvmOracleError, match=message):
        kvm.encode_job([stream])


def _observation() -> Observation:
    return Observation(
        name="linux-6.1",
        source="kvm",
        kernel="7.3.4+deb13-arm64",
        creadr=(0x20, 0x40, 0x60),
        commands=Phase(ret=0, memory={B + 0x120000: 9}),
        regs={"GITS_TYPER": 0x1EF71, "GITS_IIDR": 0x4B00043B, "GICR0_PROPBASER": 0x4000078F},
        save=Phase(ret=0, memory={B + 0x100040: 0x8010000008040081, B + 0x120000: 9}),
        save_pending=Phase(ret=-14, memory={B + 0x120000: 9}),
        restores=(
            RestoreResult(
                name="same",
                ret=0,
                resave_ret=0,
                memory={B: 1},
                regs={"GITS_CTLR": 0x80000001},
                creadr=(0xE0, 0x100),
            ),
            RestoreResult(name="garbage", ret=-14, resave_ret=None, memory={B + 8: 2}),
        ),
        host_reads={B + 0x300000: "fault", B + 0x120000: "ok"},
    )


def test_output_round_trip():
    o = _observation()
    failed = Observation(name="bad", source="kvm", kernel=o.kernel, error="KVM_RUN: x (errno 4)")
    text = kvm.format_output([o, failed])
    assert kvm.decode_output(text) == [o, failed]
    assert kvm.decode_output(text.encode()) == [o, failed]


def test_output_from_the_real_vmm_with_console_noise():
    # as the VMM printed it on 7.3.4 (trimmed), behind console lines and CRLFs
    text = (
        "[   12.3] random: crng init done\r\n"
        "K 7.3.4+deb13-arm64\r\n"
        "S basic\r\n"
        "c 20 40\r\n"
        "r GITS_TYPER 1ef71\r\n"
        "p commands 0\r\n"
        "m 40120000 9\r\n"
        "p save 0\r\n"
        "m 40100040 8000000008040001\r\n"
        "p save_pending 0\r\n"
        "x same 0 0\r\n"
        "r GITS_CTLR 80000001\r\n"
        "m 40100040 8000000008040001\r\n"
        "# us 65568\r\n"
        "E\r\n"
        "Z\r\n"
    )
    (o,) = kvm.decode_output(text)
    assert o.kernel == "7.3.4+deb13-arm64"
    assert o.creadr == (0x20, 0x40)
    assert o.regs == {"GITS_TYPER": 0x1EF71}
    assert o.commands.memory == {0x40120000: 9}
    assert o.save is not None and o.save.memory == {0x40100040: 0x8000000008040001}
    assert o.save_pending == Phase(ret=0, memory={})
    assert o.restores[0].regs == {"GITS_CTLR": 0x80000001}
    assert o.restores[0].resave_ret == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no 'K <kernel>' line"),
        ("K 7\nS a\nc 20\n", "ends inside stream 'a'"),
        ("K 7\nS a\nE\n", "without the 'Z' end marker"),
        ("K 7\nS a\nc 2g\nE\nZ\n", "line 3: bad number '2g'"),
        ("K 7\nS a\nq 1\nE\nZ\n", "line 3: unexpected record 'q 1'"),
        ("K 7\nc 20\nZ\n", "line 2: 'c 20' outside a stream"),
        ("K 7\nS a\nS b\n", "stream 'b' starts inside 'a'"),
    ],
)
def test_malformed_output_is_a_clear_error(text, message):
    with pytest.raises(kvm.KvmOracleError, match=message):
        kvm.decode_output(text)


CC = shutil.which(kvm.CROSS_CC)


@pytest.mark.skipif(CC is None, reason=f"the arm64 cross compiler {kvm.CROSS_CC} is not installed")
def test_vmm_builds_statically_for_arm64_and_is_cached(tmp_path: Path):
    tools = Tools(qemu=Path("/nonexistent"), cc=Path(CC), busybox=Path("/nonexistent"))
    out = kvm.build_vmm(tools, cache=tmp_path)
    head = out.read_bytes()[:64]
    assert head[:4] == b"\x7fELF"
    assert struct.unpack_from("<H", head, 18)[0] == 183  # EM_AARCH64
    assert struct.unpack_from("<H", head, 16)[0] == 2  # ET_EXEC: static, not PIE
    assert out.name == f"vmm-{kvm.vmm_source_hash()}"
    mtime = out.stat().st_mtime_ns
    assert kvm.build_vmm(tools, cache=tmp_path) == out
    assert out.stat().st_mtime_ns == mtime


def test_a_missing_cross_compiler_is_a_clear_error(tmp_path: Path):
    tools = Tools(qemu=Path("/x"), cc=tmp_path / "no-such-gcc", busybox=Path("/x"))
    with pytest.raises(kvm.KvmOracleError, match=r"cross compiler .*no-such-gcc"):
        kvm.build_vmm(tools, cache=tmp_path)


def test_kernel_warnings_are_attributed_to_the_stream_that_ran():
    output = "\n".join(
        [
            "K 7.3.4+deb13-arm64",
            "S random-0-0001",
            "E",
            "S random-0-0002",
            "e the VMM died of signal 11 (see the kernel log)",
            "E",
            "# kernel WARNING: CPU: 1 PID: 80 at arch/arm64/kvm/vgic/vgic-its.c:123 f+0x1/0x2",
            "# kernel Modules linked in: virtio_blk",
            "S random-0-0003",
            "E",
            "Z",
        ]
    )
    assert kvm.kernel_trouble(output) == {
        "random-0-0002": (
            "WARNING: CPU: 1 PID: 80 at arch/arm64/kvm/vgic/vgic-its.c:123 f+0x1/0x2",
            "Modules linked in: virtio_blk",
        )
    }
    assert [o.error for o in kvm.decode_output(output)] == [
        "",
        "the VMM died of signal 11 (see the kernel log)",
        "",
    ]


def test_the_vmm_lays_out_the_guest_as_the_contract_says():
    """vmm.h's addresses are stream.py's (the model places nothing in the code memslot)."""
    from sim.oracle import stream

    header = (kvm.VMM_DIR / "vmm.h").read_text()
    defines = {
        m[1]: int(m[2].rstrip("UL"), 0)
        for m in re.finditer(r"^#define (\w+)\s+(0x[0-9a-fA-F]+UL|\d+UL)", header, re.M)
    }
    for name in ("CODE_BASE", "ITS_BASE", "GICD_BASE", "GICR_BASE"):
        assert defines[name] == getattr(stream, name), name
    assert "#define CODE_SIZE\t(4UL << 20)" in header and stream.CODE_SIZE == 4 << 20
    assert kvm.GICR_STRIDE == 0x2_0000
