"""The device mix and its QEMU arguments, the guest's /out, and the capture's own helpers."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from sim.capture.format import bundled_captures, load_capture
from sim.capture.guest import GuestReportError, PciFunction, parse_out, payload
from sim.capture.qemu import DeviceSpecError, device_args, device_mix, guest_modules, parse_spec
from sim.capture.run import (
    _qemu_refusal,
    default_scenario_path,
    itt_records,
    mapped_vectors,
    scenario_name,
    scenario_text,
)
from sim.cli import main
from sim.its.commands import MAPD
from sim.scenario import load_scenario


def test_spec_spelling():
    assert parse_spec("virtio-net", "6") == [("virtio-net", 6)]
    assert parse_spec("nvme", "2x4") == [("nvme", 4), ("nvme", 4)]
    for bad, match in [
        ("six", "expected SIZE or COUNTxSIZE"),
        ("0", "MSI-X vectors must be 1..2048, got 0"),
        ("0x4", "COUNT must be 1..64, got 0"),
        ("4096", "must be 1..2048"),
    ]:
        with pytest.raises(DeviceSpecError, match=match):
            parse_spec("virtio-net", bad)


def test_device_mix_to_qemu_arguments(tmp_path):
    mix = device_mix(
        parse_spec("virtio-net", "6")
        + parse_spec("virtio-blk", "2")
        + parse_spec("virtio-rng", "2")
        + parse_spec("nvme", "2x3")
    )
    assert [d.qemu_id for d in mix] == ["virtionet0", "virtioblk0", "virtiorng0", "nvme0", "nvme1"]
    args = device_args(mix, tmp_path)
    devices = [args[i + 1] for i, a in enumerate(args) if a == "-device"]
    assert devices == [
        "virtio-net-pci,id=virtionet0,netdev=virtionet0n,romfile=,vectors=6",
        "virtio-blk-pci,id=virtioblk0,drive=virtioblk0d,num-queues=2",
        "virtio-rng-pci,id=virtiorng0,vectors=2",
        "nvme,id=nvme0,drive=nvme0d,serial=pkvmsim0,max_ioqpairs=3,msix_qsize=4",
        "nvme,id=nvme1,drive=nvme1d,serial=pkvmsim1,max_ioqpairs=3,msix_qsize=4",
    ]
    assert "user,id=virtionet0n,restrict=on" in args
    assert (tmp_path / "nvme1.img").stat().st_size == 1 << 20
    assert guest_modules(mix) == ["virtio_pci", "virtio_net", "virtio_blk", "virtio_rng", "nvme"]


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_guest_out_parsed():
    out = _tar(
        {
            "kallsyms": b"ffff800008000000 T _text\n",
            "kcore.head": b"\x7fELF" + bytes(60),
            "pci": b"0000:00:00.0 0x1b36:0x0008 - -\n0000:00:04.0 0x1b36:0x0010 nvme 30,31,\n",
            "release": b"7.3.4+deb13-arm64\n",
        }
    )
    rep = parse_out(out)
    assert rep.release == "7.3.4+deb13-arm64"
    assert rep.pci[1] == PciFunction("0000:00:04.0", "1b36:0010", "nvme", (30, 31))
    assert rep.pci[1].device_id == 0x20 and rep.pci[0].device_id == 0
    with pytest.raises(GuestReportError, match="no /out"):
        parse_out(None)
    with pytest.raises(GuestReportError, match=r"lacks kcore\.head"):
        parse_out(_tar({"kallsyms": b"", "pci": b""}))
    with pytest.raises(GuestReportError, match="could not be read"):
        parse_out(_tar({"kallsyms": b"", "pci": b"", "kcore.head": b"denied"}))


def test_payload_waits_for_nvme_and_reads_the_marker():
    text = payload(2, 0x08080004)
    assert "want=2" in text and "devmem 0x8080004 32" in text
    assert "kptr_restrict" in text and "/proc/kcore" in text


def _raw(cmd) -> tuple[int, int, int, int]:
    b = cmd.encode()
    return tuple(int.from_bytes(b[i : i + 8], "little") for i in range(0, 32, 8))


def test_itt_records_follow_mapd_and_unmap():
    cmds = [
        MAPD(0x20, 0, 0x42C52200, True),
        MAPD(0x20, 0, 0x42C52200, False),
        MAPD(0x20, 1, 0x42C56E00, True),
        MAPD(0x8, 1, 0x42738400, True),
        MAPD(0x8, 1, 0x42738400, False),
    ]
    recs = itt_records([_raw(c) for c in cmds], ite_size=12)
    assert [(r.device_id, r.addr, r.nbytes, r.live) for r in recs] == [
        (0x20, 0x42C52200, 256, False),
        (0x20, 0x42C56E00, 256, True),  # 4 events x 12 bytes, at least ITS_ITT_ALIGN
        (0x8, 0x42738400, 256, False),
    ]
    big = itt_records([_raw(MAPD(0x20, 6, 0x4453B300, True))], ite_size=12)
    assert big[0].nbytes == 128 * 12


def test_scenario_for_a_capture_loads_and_says_what_the_guest_mapped(tmp_path):
    cap = load_capture(bundled_captures()["linux-6.1.192"])
    assert mapped_vectors(cap) == {0x8: 3, 0x10: 3, 0x18: 2, 0x20: 3}
    mix = device_mix(
        parse_spec("virtio-net", "6")
        + parse_spec("virtio-blk", "2")
        + parse_spec("virtio-rng", "2")
        + parse_spec("nvme", "2")
    )
    ref = str(bundled_captures()["linux-6.1.192"])
    text = scenario_text(cap, ref, "my-guest", "pkvm-sim capture --virtio-net 6", mix)
    path = tmp_path / "my-guest.yaml"
    path.write_text(text)
    scen = load_scenario(path)
    assert scen.guest.its_driver == "replay" and scen.guest.allocator == "linux-kzalloc"
    assert [(d.name, d.device_id, d.vectors, d.msix_table_size) for d in scen.devices] == [
        ("virtio-net", 0x8, 3, 6),
        ("virtio-blk", 0x10, 3, 3),
        ("virtio-rng", 0x18, 2, 2),
        ("nvme", 0x20, 3, 3),
    ]
    assert scen.devices[3].frees_at_shutdown and scen.devices[1].managed_vectors == 2


def test_names_and_paths():
    assert default_scenario_path(Path("c/linux-7.3.4.capture.json")) == Path("c/linux-7.3.4.yaml")
    assert scenario_name(Path("x/Linux_7.3.4.yaml")) == "linux-7-3-4"
    console = (
        "qemu-system-aarch64: -device nvme,id=nvme0: Property 'nvme.max_ioqpairs' bad\n"
        "something else"
    )
    assert _qemu_refusal(console, Path("/usr/bin/qemu-system-aarch64")) == console.splitlines()[0]
    assert _qemu_refusal("[ 0.0] Booting Linux", Path("qemu-system-aarch64")) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no devices: name at least one"),
        (["--virtio-net", "x"], "--virtio-net: expected SIZE or COUNTxSIZE"),
        (["--nvme", "1", "--modules", "/tmp"], "--modules: only with --kernel"),
        (["--nvme", "1", "--kernels", "sid"], "--kernels: expected newest or bookworm"),
        (["--nvme", "1", "--cpus", "0"], "--cpus: expected 1..8"),
        (["--nvme", "1", "--timeout", "0"], "--timeout: expected a positive number"),
    ],
)
def test_bad_flags_exit_2_with_one_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["capture", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_user_kernel_is_exit_2_before_any_setup(tmp_path, capsys):
    code = main(["capture", "--nvme", "1", "--kernel", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "c.json")])  # fmt: skip
    assert code == 2
    assert "--kernel" in capsys.readouterr().err and not (tmp_path / "c.json").exists()


def test_virtio_rng_without_a_value_is_its_default(capsys):
    from sim.cli import build_parser
    from sim.commands.capture import check

    parser = build_parser()
    args = parser.parse_args(["capture", "--virtio-rng", "--nvme", "1"])
    check(parser, args)
    assert [(d.kind, d.size) for d in args.device_mix] == [("virtio-rng", 2), ("nvme", 1)]


DATA = Path(__file__).parent / "data"


def test_capture_built_from_a_real_61_boot(tmp_path):
    """build_capture on a Debian 6.1.192 boot's trace, queue and PCI listing (--raw)."""
    from sim.capture.guest import GuestReport, parse_pci
    from sim.capture.queue import geometry
    from sim.capture.run import MARKER_LINE, CaptureOptions, _Readback, build_capture
    from sim.capture.trace import read_trace
    from sim.oracle.setup import Kernel, Tools

    trace = read_trace(DATA / "linux-6.1.192.its.trace")
    hexes = (DATA / "linux-6.1.192.queue.hex").read_text().split()
    queue = b"".join(bytes.fromhex(h) for h in hexes).ljust(geometry(trace.cbaser).size, b"\0")
    report = GuestReport(
        kallsyms="",
        kcore_head=b"",
        pci=parse_pci((DATA / "linux-6.1.192.pci").read_text()),
        release="6.1.0-57-arm64",
        version="Linux version 6.1.0-57-arm64",
    )
    qemu = tmp_path / "qemu"
    qemu.write_text("#!/bin/sh\necho 'QEMU emulator version 7.2.22'\n")
    qemu.chmod(0o755)
    tools = Tools(qemu=qemu, cc=Path("/bin/false"), busybox=Path("/bin/false"))
    kernel = Kernel(name="bookworm", version="6.1.192", image=Path("/x"), modules=None)
    mix = device_mix(
        parse_spec("virtio-net", "6")
        + parse_spec("virtio-blk", "2")
        + parse_spec("virtio-rng", "2")
        + parse_spec("nvme", "1")
    )
    rb = _Readback(trace=trace, queue=queue, report=report)
    options = CaptureOptions(devices=mix, out=tmp_path / "c.json")
    console = f"{MARKER_LINE} 0x0000043B\n"
    cap, check, _ = build_capture(options, kernel, tools, ["qemu"], rb, console)
    assert check.ok and (check.compared, check.fields) == (71, 183)
    assert (cap.kernel.release, cap.kernel.generation, cap.qemu.version) == (
        "6.1.0-57-arm64", "6.1", "7.2.22"
    )  # fmt: skip
    assert [(d.device_id, d.name) for d in cap.devices] == [
        (0x8, "virtio-net"), (0x10, "virtio-blk"), (0x18, "virtio-rng"), (0x20, "nvme")
    ]  # fmt: skip
    assert cap.registers.gits_cbaser == trace.cbaser and len(cap.registers.gits_baser) == 8
    phases = [c.phase for c in cap.commands]
    split = phases.index("shutdown")
    assert split == 62 and set(phases[split:]) == {"shutdown"}  # after the GITS_IIDR read
    shutdown = [c.decoded["cmd"] for c in cap.commands[split:]]
    assert shutdown[:4] == ["INV", "SYNC", "DISCARD", "SYNC"]  # free_irq: mask, then discard
    assert cap.commands[-1].decoded == {
        "cmd": "MAPD",
        "DeviceID": 0x20,
        "Size": 0,
        "ITT_addr": cap.devices[3].itts[-1].addr,
        "V": 0,
    }
    # no marker on the console: no split, and a note says why
    cap2, _, notes = build_capture(options, kernel, tools, ["qemu"], rb, "")
    assert {c.phase for c in cap2.commands} == {"boot"}
    assert any("no GITS_IIDR marker" in n for n in notes)


def test_real_61_kcore_header_matches_the_manual_capture():
    from sim.capture.symbols import KernelMap

    kmap = KernelMap(bytes.fromhex((DATA / "linux-6.1.192.kcore-head.hex").read_text().strip()))
    # sim/data/real-guests/linux-6.1.192-qemu-virt.meta.json: ITT 0x42738400's struct page
    assert kmap.struct_page(0x42738400) == (0xFFFFFC000009CE00, 64)
    assert kmap.phys(0xFFFF000002401400) == 0x42401400  # its kmalloc-512 kmem_cache


def test_raw_material_is_kept_when_asked(tmp_path):
    from sim.capture.run import _Readback, keep_raw
    from sim.oracle.errors import OracleSetupError

    trace = tmp_path / "its.trace"
    trace.write_text("gicv3_its_cmd_sync GICv3 ITS: command SYNC\n")
    rb = _Readback(queue=b"\x05" + bytes(31), out=b"tar bytes")
    keep_raw(tmp_path / "raw", trace, rb)
    assert (tmp_path / "raw" / "its.trace").read_text() == trace.read_text()
    assert (tmp_path / "raw" / "queue.bin").read_bytes() == rb.queue
    assert (tmp_path / "raw" / "guest-out.tar").read_bytes() == b"tar bytes"
    (tmp_path / "file").write_text("")
    with pytest.raises(OracleSetupError, match=r"--raw .*file/x: cannot write"):
        keep_raw(tmp_path / "file" / "x", trace, rb)
