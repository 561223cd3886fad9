"""Scenario files: a pydantic schema, and YAML loading whose errors name file, line and field.

A scenario fixes everything a run depends on (guest, devices, workload, migration time,
host behaviour, proposals, seed, cost overrides), so the same file and seed always give
the same result.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sim.costs import CostModel

Allocator = Literal["linux-kzalloc", "linux-shared-pool"]
ProposalName = Literal[
    "trusted-host",
    "share-host-claims",
    "share-enlightened-guest",
    "share-cmdq-snoop",
    "userspace-serialization",
    "iommu-gated-its",
]
ALL_PROPOSALS: tuple[str, ...] = ProposalName.__args__
KernelName = Literal["6.1", "7.3"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GuestSpec(_Strict):
    ram_mib: Annotated[int, Field(ge=64, le=1 << 20)] = 2048
    vcpus: Annotated[int, Field(ge=1, le=512)] = 4
    allocator: Allocator = "linux-shared-pool"
    secret_density: Annotated[float, Field(ge=0.0, le=1.0)] = 0.25
    two_level_device_table: bool = True
    # linux: irq-gic-v3-its.c's command pattern; bulk: a synthetic driver for scale that
    # batches commands and may map more vectors than LPIs (sim/actors/guest.py).
    its_driver: Literal["linux", "bulk", "replay"] = "linux"
    # replay: a capture file (sim/capture/format.py) played as the driver
    # (sim/actors/replay.py), relative to the scenario file, or a bundled capture's name;
    # colocated_as labels the capture's neighbours of each ITT: secret, kernel-data, or
    # density (a secret with probability secret_density, as the model's neighbours).
    capture: str | None = None
    colocated_as: Literal["secret", "kernel-data", "density"] = "density"
    # The guest kernel whose ITS driver the linux driver follows (sim/actors/linux_driver.py:
    # LPI and CPU choice, ITT sizing, re-probe and free sequences as each generation does
    # them, checked against the captures); unset: the generic model of sim/actors/guest.py.
    kernel: KernelName | None = None
    # At the end of the workload the guest powers off: a replay guest plays its capture's
    # shutdown commands; a guest.kernel guest frees the vectors of devices whose drivers
    # do so at shutdown (devices[].frees_at_shutdown).
    power_off: bool = False


class DeviceSpec(_Strict):
    name: Annotated[str, Field(min_length=1)]
    device_id: Annotated[int, Field(ge=0, le=0xFFFF)]
    vectors: Annotated[int, Field(ge=1, le=2048)]
    rate_hz: Annotated[float, Field(ge=0.0)] = 1000.0
    # Driver facts a guest.kernel guest uses (sim/actors/linux_driver.py): the MSI-X table
    # size (7.3 sizes the ITT by it; default: vectors), the vectors with managed affinity
    # (the last N: queue vectors of virtio-blk, nvme), vectors probed first and freed
    # before the full allocation (nvme: 1 admin vector), whether the driver frees its
    # vectors at power-off (nvme_shutdown).
    msix_table_size: Annotated[int, Field(ge=1, le=2048)] | None = None
    managed_vectors: Annotated[int, Field(ge=0, le=2048)] = 0
    probe_vectors: Annotated[int, Field(ge=1, le=2048)] | None = None
    frees_at_shutdown: bool = False


class ChurnEvent(_Strict):
    at_ms: Annotated[float, Field(ge=0.0)]
    device: str
    action: Literal["remove", "add"]


class WorkloadSpec(_Strict):
    duration_ms: Annotated[float, Field(gt=0.0)] = 20.0
    affinity_moves_per_s: Annotated[float, Field(ge=0.0)] = 0.0
    churn: list[ChurnEvent] = []


class MigrationSpec(_Strict):
    at_ms: Annotated[float, Field(gt=0.0)] = 10.0


class Honest(_Strict):
    kind: Literal["honest"] = "honest"


class SecretPageAsITT(_Strict):
    """Ask EL2 to share guest pages that hold secrets, as if they were ITT pages."""

    kind: Literal["secret-page-as-itt"]
    pages: Annotated[int, Field(ge=1, le=64)] = 2


class OversizedITT(_Strict):
    """Claim each ITT as ``factor`` times its real size."""

    kind: Literal["oversized-itt"]
    factor: Annotated[int, Field(ge=2, le=1024)] = 16


class ReadEverything(_Strict):
    """Read every guest page the host's stage-2 reaches, every ``period_ms``."""

    kind: Literal["read-everything"]
    period_ms: Annotated[float, Field(gt=0.0)] = 1.0


class WriteOutsideEntries(_Strict):
    """At save time, overwrite every reachable guest byte that is not a table entry."""

    kind: Literal["write-outside-entries"]
    pattern: Annotated[int, Field(ge=0, le=255)] = 0xA5


class KeepStaleShare(_Strict):
    """Claim ITT pages early and keep them; sit on the MAPD V=0 that would release them."""

    kind: Literal["keep-stale-share"]
    hold_ms: Annotated[float, Field(gt=0.0)] = 1500.0


class DelayCommands(_Strict):
    """Run the command queue ``delay_ms`` after each CWRITER write instead of at once."""

    kind: Literal["delay-commands"]
    delay_ms: Annotated[float, Field(gt=0.0)] = 2.0


class ReplayStaleMapd(_Strict):
    """At save time, replay an unmapped device's old MAPD and MAPTIs from the queue ring."""

    kind: Literal["replay-stale-mapd"]


class ITSDMA(_Strict):
    """Map a physical device on the physical ITS with its ITT on a guest secret (DMA)."""

    kind: Literal["its-dma"]
    at_ms: Annotated[float, Field(ge=0.0)] = 1.0


class TamperState(_Strict):
    """Alter the saved ITS state in transit (the blob, or the tables in guest memory)."""

    kind: Literal["tamper-state"]


class RedirectPendingTable(_Strict):
    """Point a vCPU's pending table at other guest data before SAVE_PENDING_TABLES."""

    kind: Literal["redirect-pending-table"]


class ForgeQueuedMapd(_Strict):
    """Rewrite a MAPD in the shared queue between the guest's write and EL2's parse."""

    kind: Literal["forge-queued-mapd"]
    reaction_us: Annotated[float, Field(ge=0.0)] = 0.2


ATTACK_SPECS = (
    SecretPageAsITT,
    OversizedITT,
    ReadEverything,
    WriteOutsideEntries,
    KeepStaleShare,
    DelayCommands,
    ReplayStaleMapd,
    ITSDMA,
    TamperState,
    RedirectPendingTable,
    ForgeQueuedMapd,
)
ATTACKS: tuple[str, ...] = tuple(
    cls.model_fields["kind"].annotation.__args__[0] for cls in ATTACK_SPECS
)
BEHAVIOUR_KINDS = frozenset({"honest", *ATTACKS})
BehaviourSpec = Annotated[Union[(Honest, *ATTACK_SPECS)], Field(discriminator="kind")]


class HostSpec(_Strict):
    behaviours: list[BehaviourSpec] = [Honest()]


def _short(value: object) -> str:
    """A parameter as a name shows it: ``2`` for 2.0, every digit where ``g`` would round."""
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


def describe_behaviours(behaviours: list) -> str:
    """A host's behaviours as one name: each kind with the parameters it was given that
    differ from the defaults, joined by " + " (``read-everything(period_ms=2) +
    delay-commands``); ``honest`` for a host with none but honest."""
    parts = []
    for b in behaviours:
        if b.kind == "honest":
            continue
        params = b.model_dump(exclude_defaults=True, exclude={"kind"})
        args = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
        parts.append(f"{b.kind}({args})" if args else b.kind)
    return " + ".join(parts) or "honest"


class LowvisorSpec(_Strict):
    # EL2 traps the host's writes to the physical ITS and refuses an ITT outside host memory.
    mediate_physical_its: bool = False


class Scenario(_Strict):
    name: Annotated[str, Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9-]*$")]
    question: Annotated[str, Field(min_length=1)]
    seed: int = 1
    guest: GuestSpec = GuestSpec()
    devices: Annotated[list[DeviceSpec], Field(min_length=1)]
    workload: WorkloadSpec = WorkloadSpec()
    migration: MigrationSpec = MigrationSpec()
    host: HostSpec = HostSpec()
    lowvisor: LowvisorSpec = LowvisorSpec()
    proposals: list[ProposalName] = list(ALL_PROPOSALS)
    costs: CostModel = CostModel()
    # The host's KVM, where the two kernels the oracle runs differ (sim/its/kernel.py):
    # "7.3" is Debian 7.3.4, "6.1" Debian 6.1.192 (the pre-v6.13 vITS).
    kernel: KernelName = "7.3"

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        for field in ("name", "device_id"):
            seen: dict[object, int] = {}
            for i, device in enumerate(self.devices):
                value = getattr(device, field)
                if value in seen:
                    raise ValueError(
                        f"devices[{i}].{field}: expected unique values, {value!r} is also"
                        f" devices[{seen[value]}].{field}"
                    )
                seen[value] = i
        if (self.guest.its_driver == "replay") != (self.guest.capture is not None):
            raise ValueError(
                "guest.capture: expected a capture file exactly when guest.its_driver is replay"
            )
        for i, device in enumerate(self.devices):
            if device.managed_vectors > device.vectors:
                raise ValueError(
                    f"devices[{i}].managed_vectors: expected at most vectors ({device.vectors})"
                )
            if device.msix_table_size is not None and device.msix_table_size < device.vectors:
                raise ValueError(
                    f"devices[{i}].msix_table_size: expected at least vectors ({device.vectors})"
                )
        if self.guest.kernel is not None and self.guest.its_driver != "linux":
            raise ValueError("guest.kernel: expected only with guest.its_driver: linux")
        if self.guest.kernel is not None:
            # its_lpi_alloc() takes a power-of-two block per device (sim/actors/linux_driver.py)
            sizes = [
                d.msix_table_size or d.vectors if self.guest.kernel == "7.3" else d.vectors
                for d in self.devices
            ]
            blocks = sum(1 << (n - 1).bit_length() for n in sizes)
            if blocks > (1 << 16) - 8192:
                raise ValueError(
                    f"devices: guest.kernel {self.guest.kernel} allocates LPIs in power-of-two"
                    f" blocks, {blocks} in all, more than the 57344 LPIs of 16 INTID bits"
                )
        if self.guest.its_driver == "replay" and self.workload.churn:
            raise ValueError("workload.churn: a replay guest plays its capture, not device churn")
        names = {d.name for d in self.devices}
        for i, event in enumerate(self.workload.churn):
            if event.device not in names:
                raise ValueError(f"workload.churn[{i}].device: {event.device!r} is not in devices")
        if self.migration.at_ms >= self.workload.duration_ms:
            raise ValueError("migration.at_ms: expected a time before workload.duration_ms")
        nr_lpis = sum(d.vectors for d in self.devices)
        if nr_lpis > (1 << 16) - 8192 and self.guest.its_driver != "bulk":
            raise ValueError(
                f"devices: {nr_lpis} vectors exceed the 57344 LPIs of 16 INTID bits"
                " (only guest.its_driver: bulk maps several vectors to one LPI)"
            )
        if nr_lpis > (1 << 16) - 8192 and self.kernel != "6.1":
            raise ValueError(
                f"kernel: {nr_lpis} vectors exceed the 57344 LPIs, and a bulk guest maps the"
                " surplus onto LPIs in use, which only kernel 6.1 accepts (7.3's"
                " vgic_its_map_lpi fails a second MAPTI onto a mapped LPI); expected"
                " kernel: '6.1'"
            )
        return self


class ScenarioError(Exception):
    """A scenario file that cannot be used; the message names file, line and field."""


def _node_at(node: yaml.Node, loc: tuple[Any, ...]) -> yaml.Node:
    """The YAML node at a pydantic error location (as deep as the file goes)."""
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key:
                    node = v
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                return node
            node = node.value[key]
        else:
            return node
    return node


def _field_name(loc: tuple[Any, ...]) -> str:
    out = ""
    for key in loc:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out or "(top level)"


def _parse_field(text: str) -> tuple[Any, ...]:
    """``"devices[1].name"`` -> ``("devices", 1, "name")``."""
    return tuple(
        int(index) if index else name for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", text)
    )


def _path_at_yaml_error(text: str) -> tuple[Any, ...]:
    """The key path the YAML parser had reached when it failed."""
    stack: list[list] = []  # ["map", key, expecting_key] or ["seq", index]
    node_events = (
        yaml.MappingStartEvent,
        yaml.SequenceStartEvent,
        yaml.ScalarEvent,
        yaml.AliasEvent,
    )
    try:
        for event in yaml.parse(text):
            if isinstance(event, node_events):
                top = stack[-1] if stack else None
                if top is not None and top[0] == "map":
                    if top[2]:  # this node is a key
                        top[1] = getattr(event, "value", None)
                        top[2] = False
                        continue
                    top[2] = True  # this node is the value; a key comes next
                elif top is not None:
                    top[1] += 1
                if isinstance(event, yaml.MappingStartEvent):
                    stack.append(["map", None, True])
                elif isinstance(event, yaml.SequenceStartEvent):
                    stack.append(["seq", -1])
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                stack.pop()
    except yaml.YAMLError:
        pass
    return tuple(frame[1] for frame in stack if frame[1] is not None and frame[1] != -1)


def _duplicate_key(node: yaml.Node, loc: tuple[Any, ...] = ()) -> tuple | None:
    """``(loc, line, first_line)`` of the first key given twice in one mapping."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[object, int] = {}
        for key, value in node.value:
            if key.value in seen:
                return (*loc, key.value), key.start_mark.line + 1, seen[key.value]
            seen[key.value] = key.start_mark.line + 1
            found = _duplicate_key(value, (*loc, key.value))
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _duplicate_key(item, (*loc, i))
            if found:
                return found
    return None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file, or raise :class:`ScenarioError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        field = _field_name(_path_at_yaml_error(text))
        raise ScenarioError(f"{path}{where}: {field}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        line = root.start_mark.line + 1 if root is not None else 1
        raise ScenarioError(
            f"{path}:{line}: (top level): expected a mapping of scenario fields, got"
            f" {'nothing' if data is None else type(data).__name__}"
        )
    duplicate = _duplicate_key(root)
    if duplicate:
        loc, line, first = duplicate
        raise ScenarioError(
            f"{path}:{line}: {_field_name(loc)}: duplicate key, first given on line {first}"
        )
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        # Drop pydantic's own location parts: the root marker and union tags
        # (a host behaviour's kind), which are not keys in the file.
        loc = tuple(k for k in err["loc"] if k != "__root__" and k not in BEHAVIOUR_KINDS)
        msg = err["msg"].removeprefix("Value error, ")
        if not loc and ": " in msg:
            # Cross-field checks name their field first: "workload.churn[1].device: ...".
            head, msg = msg.split(": ", 1)
            loc = _parse_field(head)
        node = _node_at(root, loc) if root is not None else None
        line = node.start_mark.line + 1 if node is not None else 1
        field = _field_name(loc)
        got = ""
        if "input" in err and not isinstance(err["input"], dict | list) and "got" not in msg:
            got = f", got {err['input']!r}"
        raise ScenarioError(f"{path}:{line}: {field}: {msg}{got}") from None
    if scenario.guest.its_driver == "replay":  # the capture it plays: sim/actors/replay.py
        from sim.actors.replay import bind_scenario

        scenario = bind_scenario(scenario, path, lambda at: _node_at(root, at).start_mark.line + 1)
    return scenario
