"""The capture file: what one real Linux guest did to its ITS, and what shares its ITT pages.

A capture is one JSON document (``*.capture.json``), format ``pkvm-sim-capture/1``::

    {"format": "pkvm-sim-capture/1",
     "kernel": {"release": "6.1.192", "generation": "6.1"},
     "qemu": {"command_line": ["qemu-system-aarch64", ...] | null, "version": "7.2" | null},
     "guest": {"ram_base": "0x40000000", "ram_size": "0x40000000", "vcpus": 2},
     "registers": {"gits_cbaser": "0x...", "gits_baser": ["0x...", ... 8 values]},
     "devices": [{"device_id": "0x8", "name": "virtio-net", "itts": [
         {"addr": "0x42738400", "size": 1}]}],
     "commands": [
         {"index": 0, "raw": ["0000000000000009", "0", "8000000000000000", "0"],
          "phase": "boot", "decoded": {"cmd": "MAPC", "ICID": 0, ...}},
         ...],
     "colocation": [{"page": "0x42738000", "itts": ["0x42738400"],
         "allocator": {"kind": "slab", "cache": "kmalloc-512", "object_size": 512,
                       "slab_addr": "0x42738000", "slab_order": 1, "objects_per_slab": 16,
                       "objects_per_page": 8, "align": 512},
         "objects": [{"addr": "0x42738000", "size": 512, "kind": "kernel",
                      "what": "irq descriptor (alloc_desc)", "live": true, "zero": false,
                      "nonzero_qwords": 26, "symbols": ["its_msi_irq_chip"]}, ...]}],
     "notes": ["free text: how the capture was made"]}

Fields:

- ``kernel.release`` is the guest's ``uname -r`` or package version; ``generation`` the
  :class:`~sim.its.kernel.KernelGen` whose driver behaviour it shows ("6.1" or "7.3").
- ``qemu.command_line``: argv of the QEMU that ran the guest (``null``: not recorded).
- ``registers``: the guest's last writes to GITS_CBASER and GITS_BASER0..7 (64-bit).
- ``devices``: every DeviceID the stream maps, with each ITT it was given in stream
  order (a driver that re-probes gets several), ``size`` being MAPD's Size field
  (EventID bits - 1: the ITT has ``2 ** (size + 1)`` entries of 8 bytes).
- ``commands``: the command queue, in order, each as its four little-endian doublewords
  DW0..DW3 (16 hex digits each, the queue's own bytes) with ``index`` counting from 0.
  ``phase`` is ``boot`` (probe and bring-up) or ``shutdown`` (what the guest sent while
  powering off); ``decoded`` is optional and, when given, its ``cmd`` must name the
  raw command's opcode. Raw bytes are the truth; a replay plays ``raw``.
- ``colocation``: per 4 KiB page holding an ITT, the allocator it came from (``slab``:
  a kmalloc cache, ``pool``: the ``itt_pool`` of whole zeroed pages, ``pages``: the page
  allocator) and every object on the page: ``kind`` ``itt`` (one of ours), ``kernel``
  (another kernel user's object), ``free`` (a free slot or unused pool space);
  ``live`` whether it is allocated, ``zero`` whether all its bytes were zero in the dump,
  ``what`` what it is as resolved from the guest's symbols, ``symbols`` the symbols its
  pointers resolved to.

Integers are JSON numbers or ``"0x"`` strings; files are written with hex strings and
one command per line. :func:`load_capture` reads a file or raises :class:`CaptureError`
with one message naming the file, the line, the record and the field.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from sim.its.commands import COMMANDS, CommandDecodeError, decode

FORMAT = "pkvm-sim-capture/1"
KNOWN_FORMATS = (FORMAT,)
PAGE_SIZE = 4096
ITT_ALIGN = 256
_OPCODE_NAMES = {cls.CMD: cls.__name__ for cls in COMMANDS.values()}


class CaptureError(Exception):
    """A capture file that cannot be used; the message names file, line, record and field."""


def _int(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            raise ValueError(f"expected an integer or a 0x hex string, got {value!r}") from None
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _hex(value: int) -> str:
    return f"{value:#x}"


def _bounded(bits: int) -> Any:
    return Annotated[
        int,
        BeforeValidator(_int),
        Field(ge=0, lt=1 << bits),
        PlainSerializer(_hex, return_type=str),
    ]


U64 = _bounded(64)
U32 = _bounded(32)
Addr = _bounded(52)  # a guest physical address (GICv3: up to 52 bits)


def _dword(value: Any) -> Any:
    if not isinstance(value, str) or not 1 <= len(value) <= 16:
        raise ValueError(f"expected up to 16 hex digits (a doubleword), got {value!r}")
    try:
        return int(value, 16)
    except ValueError:
        raise ValueError(f"expected up to 16 hex digits (a doubleword), got {value!r}") from None


DWord = Annotated[
    int, BeforeValidator(_dword), PlainSerializer(lambda v: f"{v:016x}", return_type=str)
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KernelInfo(_Strict):
    release: Annotated[str, Field(min_length=1)]
    generation: Literal["6.1", "7.3"]


class QemuInfo(_Strict):
    command_line: list[str] | None = None
    version: str | None = None


class GuestInfo(_Strict):
    ram_base: Addr
    ram_size: Annotated[int, BeforeValidator(_int), Field(gt=0, le=1 << 48)]
    vcpus: Annotated[int, Field(ge=1, le=512)]


class Registers(_Strict):
    gits_cbaser: U64
    gits_baser: Annotated[list[U64], Field(min_length=8, max_length=8)]


class ITTInfo(_Strict):
    addr: Addr
    size: Annotated[int, Field(ge=0, le=31)]  # MAPD Size: EventID bits - 1

    @property
    def events(self) -> int:
        return 1 << (self.size + 1)

    @property
    def nbytes(self) -> int:
        """Bytes the ITT occupies: 8 per event, at least 256 (ITS_ITT_ALIGN)."""
        return max(self.events * 8, ITT_ALIGN)

    @model_validator(mode="after")
    def _aligned(self) -> ITTInfo:
        if self.addr % ITT_ALIGN:
            raise ValueError(f"addr: expected a 256-byte aligned ITT, got {self.addr:#x}")
        return self


class CapturedDevice(_Strict):
    device_id: U32
    name: str | None = None
    itts: Annotated[list[ITTInfo], Field(min_length=1)]


class CapturedCommand(_Strict):
    index: Annotated[int, Field(ge=0)]
    raw: Annotated[list[DWord], Field(min_length=4, max_length=4)]
    phase: Literal["boot", "shutdown"] = "boot"
    decoded: dict[str, int | str] | None = None

    def encode(self) -> bytes:
        return b"".join(dw.to_bytes(8, "little") for dw in self.raw)

    @model_validator(mode="after")
    def _known(self) -> CapturedCommand:
        try:
            decode(self.encode())
        except CommandDecodeError as exc:
            raise ValueError(f"raw: {exc}") from None
        if self.decoded is not None and "cmd" in self.decoded:
            name = _OPCODE_NAMES[self.raw[0] & 0xFF]
            if self.decoded["cmd"] != name:
                raise ValueError(
                    f"decoded.cmd: expected {name!r} (raw DW0[7:0] = {self.raw[0] & 0xFF:#04x}),"
                    f" got {self.decoded['cmd']!r}"
                )
        return self


class Allocator(_Strict):
    kind: Literal["slab", "pool", "pages"]
    cache: str | None = None  # e.g. "kmalloc-512"
    object_size: Annotated[int, Field(ge=8, le=1 << 22)] | None = None
    slab_addr: Addr | None = None
    slab_order: Annotated[int, Field(ge=0, le=10)] | None = None
    objects_per_slab: Annotated[int, Field(ge=1)] | None = None
    objects_per_page: Annotated[int, Field(ge=1)] | None = None
    align: Annotated[int, Field(ge=1, le=1 << 22)] | None = None


class PageObject(_Strict):
    addr: Addr
    size: Annotated[int, Field(ge=1, le=PAGE_SIZE)]
    kind: Literal["itt", "kernel", "free"]
    what: str = ""
    live: bool = True
    zero: bool = False
    nonzero_qwords: Annotated[int, Field(ge=0, le=PAGE_SIZE // 8)] | None = None
    symbols: list[str] = []


class ITTPage(_Strict):
    page: Addr
    itts: Annotated[list[Addr], Field(min_length=1)]
    allocator: Allocator
    objects: list[PageObject]

    @model_validator(mode="after")
    def _inside(self) -> ITTPage:
        if self.page % PAGE_SIZE:
            raise ValueError(f"page: expected a 4 KiB aligned address, got {self.page:#x}")
        for i, obj in enumerate(self.objects):
            if not (self.page <= obj.addr and obj.addr + obj.size <= self.page + PAGE_SIZE):
                raise ValueError(
                    f"objects[{i}].addr: {obj.addr:#x}+{obj.size:#x} is outside the page"
                    f" {self.page:#x}"
                )
        for i, itt in enumerate(self.itts):
            if not self.page <= itt < self.page + PAGE_SIZE:
                raise ValueError(f"itts[{i}]: {itt:#x} is not on page {self.page:#x}")
        return self


class Capture(_Strict):
    format: Literal["pkvm-sim-capture/1"]
    kernel: KernelInfo
    qemu: QemuInfo = QemuInfo()
    guest: GuestInfo
    registers: Registers
    devices: Annotated[list[CapturedDevice], Field(min_length=1)]
    commands: Annotated[list[CapturedCommand], Field(min_length=1)]
    colocation: list[ITTPage] = []
    notes: list[str] = []

    @model_validator(mode="after")
    def _consistent(self) -> Capture:
        for i, cmd in enumerate(self.commands):
            if cmd.index != i:
                raise ValueError(f"commands[{i}].index: expected {i}, got {cmd.index}")
        seen_shutdown = False
        for i, cmd in enumerate(self.commands):
            if cmd.phase == "shutdown":
                seen_shutdown = True
            elif seen_shutdown:
                raise ValueError(f"commands[{i}].phase: a boot command after shutdown began")
        ids: dict[int, int] = {}
        for i, dev in enumerate(self.devices):
            if dev.device_id in ids:
                raise ValueError(
                    f"devices[{i}].device_id: {dev.device_id:#x} is also"
                    f" devices[{ids[dev.device_id]}]"
                )
            ids[dev.device_id] = i
        end = self.guest.ram_base + self.guest.ram_size
        for i, dev in enumerate(self.devices):
            for j, itt in enumerate(dev.itts):
                if not self.guest.ram_base <= itt.addr < end:
                    raise ValueError(
                        f"devices[{i}].itts[{j}].addr: {itt.addr:#x} is outside guest RAM"
                        f" [{self.guest.ram_base:#x}, {end:#x})"
                    )
        for i, cmd in enumerate(self.commands):
            raw = decode(cmd.encode())
            if type(raw).__name__ == "MAPD" and raw.valid:
                dev = ids.get(raw.device_id)
                itts = {(t.addr, t.size) for t in self.devices[dev].itts} if dev is not None else ()
                if (raw.itt_addr, raw.size) not in itts:
                    raise ValueError(
                        f"commands[{i}].raw: MAPD DeviceID {raw.device_id:#x} ITT"
                        f" {raw.itt_addr:#x} Size {raw.size} is not in devices[].itts"
                    )
        return self

    def device(self, device_id: int) -> CapturedDevice:
        for dev in self.devices:
            if dev.device_id == device_id:
                return dev
        raise KeyError(device_id)


def _location(text: str, loc: tuple[Any, ...]) -> int | None:
    """The line of the JSON node at a pydantic location (JSON as YAML gives line marks)."""
    from sim.scenario import _node_at

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return None
    node = _node_at(root, loc) if root is not None else None
    return node.start_mark.line + 1 if node is not None else None


def _field_name(loc: tuple[Any, ...]) -> str:
    out = ""
    for key in loc:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out or "(top level)"


def _split_field(msg: str) -> tuple[tuple[Any, ...], str]:
    """``"commands[3].raw: text"`` -> ``(("commands", 3, "raw"), "text")``."""
    from sim.scenario import _parse_field

    head, sep, rest = msg.partition(": ")
    if not sep or " " in head:
        return (), msg
    return _parse_field(head), rest


def parse_capture(text: str, name: str = "<capture>") -> Capture:
    """Validate the text of a capture file; errors raise :class:`CaptureError`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CaptureError(f"{name}:{exc.lineno}: (top level): not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise CaptureError(
            f"{name}:1: (top level): expected a JSON object, got {type(data).__name__}"
        )
    fmt = data.get("format")
    if fmt not in KNOWN_FORMATS:
        line = _location(text, ("format",)) or 1
        known = ", ".join(repr(f) for f in KNOWN_FORMATS)
        got = "nothing" if fmt is None else repr(fmt)
        raise CaptureError(f"{name}:{line}: format: expected one of {known}, got {got}")
    try:
        return Capture.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        # Validators name the field inside their record first: "commands[3].raw: ...".
        sub, msg = _split_field(msg)
        loc = loc + sub
        got = ""
        if "input" in err and not isinstance(err["input"], dict | list) and "got" not in msg:
            got = f", got {err['input']!r}"
        line = _location(text, loc) or 1
        raise CaptureError(f"{name}:{line}: {_field_name(loc)}: {msg}{got}") from None


def load_capture(path: str | Path) -> Capture:
    """Read and validate a capture file, or raise :class:`CaptureError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CaptureError(f"{path}: cannot read: {reason}") from None
    return parse_capture(text, str(path))


def dump_capture(capture: Capture) -> str:
    """The file text: indented JSON, hex strings, one command (and one object) per line."""
    data = capture.model_dump(mode="json")
    out = ["{"]
    keys = list(data)
    for n, key in enumerate(keys):
        comma = "," if n < len(keys) - 1 else ""
        value = data[key]
        if key in ("commands", "devices") and value:
            out.append(f" {json.dumps(key)}: [")
            rows = [f"  {json.dumps(item)}" for item in value]
            out.append(",\n".join(rows))
            out.append(f" ]{comma}")
        elif key == "colocation" and value:
            out.append(f" {json.dumps(key)}: [")
            pages = []
            for page in value:
                head = {k: v for k, v in page.items() if k != "objects"}
                body = ",\n".join(f"    {json.dumps(o)}" for o in page["objects"])
                text = json.dumps(head)[:-1] + ', "objects": [\n' + body + "\n  ]}"
                pages.append("  " + text)
            out.append(",\n".join(pages))
            out.append(f" ]{comma}")
        else:
            out.append(f" {json.dumps(key)}: {json.dumps(value)}{comma}")
    out.append("}")
    return "\n".join(out) + "\n"


def write_capture(capture: Capture, path: str | Path) -> None:
    """Write ``capture`` to ``path`` atomically: a temporary file renamed into place."""
    path = Path(path)
    text = dump_capture(capture)
    parse_capture(text, str(path))  # what we write, we can read back
    write_atomic(path, text)


def write_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file beside it, renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data" / "captures"


def bundled_captures() -> dict[str, Path]:
    """The captures shipped with the package, by name (``linux-6.1.192``...)."""
    return {
        p.name.removesuffix(".capture.json"): p for p in sorted(BUNDLED_DIR.glob("*.capture.json"))
    }


def resolve_capture(name: str, relative_to: Path | None = None) -> Path:
    """A capture path: relative to ``relative_to`` (a scenario's directory), absolute, or
    a bundled capture's name. Raises :class:`CaptureError` when none exists."""
    path = Path(name)
    if not path.is_absolute() and relative_to is not None:
        path = relative_to / path
    if path.exists():
        return path
    bundled = bundled_captures()
    if name in bundled:
        return bundled[name]
    known = ", ".join(bundled) or "none"
    raise CaptureError(f"{path}: no such capture file, nor a bundled capture (bundled: {known})")
