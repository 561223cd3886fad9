"""Scenario files: a pydantic schema, and YAML loading whose errors name file, line and field.

A scenario fixes everything a run depends on (guest, devices, workload, migration time,
host behaviour, proposals, seed, cost overrides), so the same file and seed always give
the same result.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from sim.costs import CostModel
from sim.registry import plugin_behaviours, spec_kind

Allocator = Literal["linux-kzalloc", "linux-shared-pool"]
KernelName = Literal["6.1", "7.3"]
# The bundled scenarios: package data (sim/data/scenarios, in a checkout a symlink to the
# top-level scenarios/), each found by its file name without ".yaml".
BUNDLED = Path(__file__).resolve().parent / "data" / "scenarios"

# Bounds that keep a run finite: every float is finite (allow_inf_nan=False) and within
# these; the workload's events together within EVENT_BUDGET.
MAX_DURATION_MS = 600_000.0  # ten minutes of simulated time
MAX_RATE_HZ = 10_000_000.0  # MSIs per second from one device
MAX_MOVES_PER_S = 1_000_000.0
# What one run may simulate, in MSIs: 2M MSIs took 8.8 s on the 2-core machine (loaded),
# 100k affinity moves 6.5 s, 40k read-everything polls of a small VM 9.7 s; so a move
# counts as MOVE_COST MSIs, a poll as POLL_COST (more pages reached make a poll dearer).
EVENT_BUDGET = 2_000_000
MOVE_COST = 15
POLL_COST = 50


def _proposal_names() -> tuple[str, ...]:
    from sim.proposals import PROPOSALS

    return tuple(PROPOSALS)


def _known_proposal(name: str) -> str:
    names = _proposal_names()
    if name not in names:
        raise ValueError(f"unknown proposal; expected one of {', '.join(map(repr, names))}")
    return name


# A proposal by name: a built-in (sim/proposals/__init__.py) or a plugin's (sim/registry.py).
ProposalName = Annotated[str, AfterValidator(_known_proposal)]


def __getattr__(name: str) -> Any:
    # ALL_PROPOSALS: every registered proposal, in order, known once sim.proposals has
    # loaded (lazily: a proposal module may import this one).
    if name == "ALL_PROPOSALS":
        return _proposal_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
    rate_hz: Annotated[float, Field(ge=0.0, le=MAX_RATE_HZ)] = 1000.0
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
    at_ms: Annotated[float, Field(ge=0.0, le=MAX_DURATION_MS)]
    device: str
    action: Literal["remove", "add"]


class KernelEvent(_Strict):
    """The guest's kernel is replaced without unmapping its devices (sim/actors/kernel_swap.py).

    ``hibernate-resume``: the guest hibernates, is reset, a boot kernel maps its devices
    and loads the image, the resumed kernel reprograms only the ITS registers.
    ``kexec``: a new kernel boots over the running one and maps its devices afresh.
    """

    at_ms: Annotated[float, Field(ge=0.0, le=MAX_DURATION_MS)]
    action: Literal["hibernate-resume", "kexec"]
    # The devices the new (kexec) or boot (hibernate) kernel maps; default all of them.
    remap: list[str] | None = None
    # same-address: the new kernel's page allocations land where the old kernel's first
    # boot put them (same kernel, same command line), so GITS_BASER<n> is rewritten with
    # the old value; moved: they start ``moved_mib`` higher (another kernel or initramfs).
    tables: Literal["same-address", "moved"] = "same-address"
    moved_mib: Annotated[int, Field(ge=1, le=1 << 16)] = 64


class WorkloadSpec(_Strict):
    duration_ms: Annotated[float, Field(gt=0.0, le=MAX_DURATION_MS)] = 20.0
    affinity_moves_per_s: Annotated[float, Field(ge=0.0, le=MAX_MOVES_PER_S)] = 0.0
    churn: list[ChurnEvent] = []
    events: list[KernelEvent] = []  # guest kernel replacements (hibernate-resume, kexec)


class MigrationSpec(_Strict):
    at_ms: Annotated[float, Field(gt=0.0, le=MAX_DURATION_MS)] = 10.0
    # migrate: to another machine; live-update: the host kernel is replaced under the
    # running VMs on the same machine (sim/liveupdate.py), ``vms`` of them alike.
    mode: Literal["migrate", "live-update"] = "migrate"
    vms: Annotated[int, Field(ge=1, le=256)] = 1
    # Host CPUs that run the VMs' save and restore ioctls in parallel (live-update).
    host_cpus: Annotated[int, Field(ge=1, le=1024)] = 16


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
    period_ms: Annotated[float, Field(gt=0.0, le=MAX_DURATION_MS)] = 1.0


class WriteOutsideEntries(_Strict):
    """At save time, overwrite every reachable guest byte that is not a table entry."""

    kind: Literal["write-outside-entries"]
    pattern: Annotated[int, Field(ge=0, le=255)] = 0xA5


class KeepStaleShare(_Strict):
    """Claim ITT pages early and keep them; sit on the MAPD V=0 that would release them."""

    kind: Literal["keep-stale-share"]
    hold_ms: Annotated[float, Field(gt=0.0, le=MAX_DURATION_MS)] = 1500.0


class DelayCommands(_Strict):
    """Run the command queue ``delay_ms`` after each CWRITER write instead of at once."""

    kind: Literal["delay-commands"]
    delay_ms: Annotated[float, Field(gt=0.0, le=MAX_DURATION_MS)] = 2.0


class ReplayStaleMapd(_Strict):
    """At save time, replay an unmapped device's old MAPD and MAPTIs from the queue ring."""

    kind: Literal["replay-stale-mapd"]


class ITSDMA(_Strict):
    """Map a physical device on the physical ITS with its ITT on a guest secret (DMA)."""

    kind: Literal["its-dma"]
    at_ms: Annotated[float, Field(ge=0.0, le=MAX_DURATION_MS)] = 1.0


class TamperState(_Strict):
    """Alter the saved ITS state in transit (the blob, or the tables in guest memory)."""

    kind: Literal["tamper-state"]


class RedirectPendingTable(_Strict):
    """Point a vCPU's pending table at other guest data before SAVE_PENDING_TABLES."""

    kind: Literal["redirect-pending-table"]


class ForgeQueuedMapd(_Strict):
    """Rewrite a MAPD in the shared queue between the guest's write and EL2's parse."""

    kind: Literal["forge-queued-mapd"]
    reaction_us: Annotated[float, Field(ge=0.0, le=MAX_DURATION_MS * 1000.0)] = 0.2


# The built-in host behaviours; plugins' are appended at the end of this module.
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


class HostSpec(_Strict):
    # BehaviourSpec: the union of every behaviour's spec, built at the end of this module.
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
    host: HostSpec = Field(default_factory=lambda: HostSpec())
    lowvisor: LowvisorSpec = LowvisorSpec()
    proposals: Annotated[
        list[ProposalName], Field(default_factory=lambda: list(_proposal_names()), min_length=1)
    ]
    costs: CostModel = CostModel()
    # The host's KVM, where the two kernels the oracle runs differ (sim/its/kernel.py):
    # "7.3" is Debian 7.3.4, "6.1" Debian 6.1.192 (the pre-v6.13 vITS).
    kernel: KernelName = "7.3"

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        problems = list(self._problems())
        if problems:
            raise ValueError("\n".join(problems))  # the loader reports each one
        return self

    def _problems(self) -> Iterator[str]:
        """Every cross-field mistake, each as ``field: what was expected``."""
        for field in ("name", "device_id"):
            seen: dict[object, int] = {}
            for i, device in enumerate(self.devices):
                value = getattr(device, field)
                if value in seen:
                    yield (
                        f"devices[{i}].{field}: expected unique values, {value!r} is also"
                        f" devices[{seen[value]}].{field}"
                    )
                seen[value] = i
        if (self.guest.its_driver == "replay") != (self.guest.capture is not None):
            yield ("guest.capture: expected a capture file exactly when guest.its_driver is replay")
        for i, device in enumerate(self.devices):
            if device.managed_vectors > device.vectors:
                yield (f"devices[{i}].managed_vectors: expected at most vectors ({device.vectors})")
            if device.msix_table_size is not None and device.msix_table_size < device.vectors:
                yield (
                    f"devices[{i}].msix_table_size: expected at least vectors ({device.vectors})"
                )
        if self.guest.kernel is not None and self.guest.its_driver != "linux":
            yield "guest.kernel: expected only with guest.its_driver: linux"
        if self.guest.kernel is not None:
            # its_lpi_alloc() takes a power-of-two block per device (sim/actors/linux_driver.py)
            sizes = [
                d.msix_table_size or d.vectors if self.guest.kernel == "7.3" else d.vectors
                for d in self.devices
            ]
            blocks = sum(1 << (n - 1).bit_length() for n in sizes)
            if blocks > (1 << 16) - 8192:
                yield (
                    f"devices: guest.kernel {self.guest.kernel} allocates LPIs in power-of-two"
                    f" blocks, {blocks} in all, more than the 57344 LPIs of 16 INTID bits"
                )
        if self.guest.its_driver == "replay" and self.workload.churn:
            yield "workload.churn: a replay guest plays its capture, not device churn"
        names = {d.name for d in self.devices}
        for i, event in enumerate(self.workload.churn):
            if event.device not in names:
                yield f"workload.churn[{i}].device: {event.device!r} is not in devices"
        yield from self._impossible_churn()
        for i, event in enumerate(self.workload.events):
            for j, name in enumerate(event.remap or []):
                if name not in names:
                    yield f"workload.events[{i}].remap[{j}]: {name!r} is not in devices"
            if event.tables == "moved" and event.moved_mib > self.guest.ram_mib // 2:
                yield (
                    f"workload.events[{i}].moved_mib: expected at most half of guest.ram_mib"
                    f" ({self.guest.ram_mib // 2}), so the new kernel's allocations fit"
                )
            if event.at_ms >= self.migration.at_ms:
                yield f"workload.events[{i}].at_ms: expected a time before migration.at_ms"
        if self.migration.at_ms >= self.workload.duration_ms:
            yield "migration.at_ms: expected a time before workload.duration_ms"
        seen_proposals: dict[str, int] = {}
        for i, proposal in enumerate(self.proposals):
            if proposal in seen_proposals:
                yield (
                    f"proposals[{i}]: expected each proposal once, {proposal!r} is also"
                    f" proposals[{seen_proposals[proposal]}]"
                )
            seen_proposals.setdefault(proposal, i)
        events = self.events_estimate()
        if events > EVENT_BUDGET:
            yield (
                f"workload: {events:,.0f} events to simulate (MSIs: the devices' rate_hz"
                f" over workload.duration_ms; affinity moves, {MOVE_COST} each; host polls,"
                f" {POLL_COST} each)"
                f" exceed the budget of {EVENT_BUDGET:,}; expected lower rates or a shorter"
                " duration"
            )
        nr_lpis = sum(d.vectors for d in self.devices)
        if nr_lpis > (1 << 16) - 8192 and self.guest.its_driver != "bulk":
            yield (
                f"devices: {nr_lpis} vectors exceed the 57344 LPIs of 16 INTID bits"
                " (only guest.its_driver: bulk maps several vectors to one LPI)"
            )
        if nr_lpis > (1 << 16) - 8192 and self.kernel != "6.1":
            yield (
                f"kernel: {nr_lpis} vectors exceed the 57344 LPIs, and a bulk guest maps the"
                " surplus onto LPIs in use, which only kernel 6.1 accepts (7.3's"
                " vgic_its_map_lpi fails a second MAPTI onto a mapped LPI); expected"
                " kernel: '6.1'"
            )

    def _impossible_churn(self) -> Iterator[str]:
        """Churn the guest could not do: every device is up after boot; events run in time
        order (the file's order at equal times), each before the workload ends."""
        end = self.workload.duration_ms
        names = {d.name for d in self.devices}
        present = {name: "since boot" for name in names}
        removed: dict[str, str] = {}
        churn = self.workload.churn
        for i in sorted(range(len(churn)), key=lambda i: churn[i].at_ms):
            event = churn[i]
            at = f"{event.at_ms:g} ms"
            if event.at_ms >= end:
                yield (
                    f"workload.churn[{i}].at_ms: expected a time before workload.duration_ms"
                    f" ({end:g}), got {event.at_ms:g}"
                )
                continue
            if event.device not in names:
                continue
            if event.action == "add" and event.device in present:
                yield (
                    f"workload.churn[{i}].action: cannot add {event.device!r} at {at}, it is"
                    f" already present ({present[event.device]}); expected remove"
                )
            elif event.action == "remove" and event.device not in present:
                yield (
                    f"workload.churn[{i}].action: cannot remove {event.device!r} at {at}, it"
                    f" is not present ({removed[event.device]}); expected add"
                )
            elif event.action == "add":
                present[event.device] = f"added by workload.churn[{i}] at {at}"
                removed.pop(event.device)
            else:
                removed[event.device] = f"removed by workload.churn[{i}] at {at}"
                present.pop(event.device)

    def events_estimate(self) -> float:
        """About how many events a run simulates, in MSIs: MSIs, affinity moves (MOVE_COST
        each) and the polls of a read-everything host (on both machines, POLL_COST each);
        EVENT_BUDGET bounds it."""
        seconds = self.workload.duration_ms / 1000.0
        msis = sum(d.rate_hz for d in self.devices) * seconds
        moves = self.workload.affinity_moves_per_s * seconds * MOVE_COST
        polls = sum(
            2 * POLL_COST * self.workload.duration_ms / b.period_ms
            for b in self.host.behaviours
            if b.kind == "read-everything"
        )
        return msis + moves + polls


class ScenarioError(Exception):
    """A scenario file that cannot be used: one line per mistake, each naming file, line
    and field (``errors``; the message joins them)."""

    def __init__(self, errors: str | list[str]) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


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
                        if isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
                            continue  # (a collection as a key is pushed like a value)
                    else:
                        top[2] = True  # this node is the value; a key comes next
                elif top is not None:
                    top[1] += 1
                if isinstance(event, yaml.MappingStartEvent):
                    stack.append(["map", None, True])
                elif isinstance(event, yaml.SequenceStartEvent):
                    stack.append(["seq", -1])
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent) and stack:
                stack.pop()
    except yaml.YAMLError:
        pass
    return tuple(frame[1] for frame in stack if frame[1] is not None and frame[1] != -1)


MAX_DEPTH = 64  # nesting of YAML collections; a scenario needs 4
MAX_NODES = 100_000  # YAML values, counting each alias as what it expands to


def _too_deep(text: str) -> tuple[int, tuple[Any, ...]] | None:
    """``(line, key path)`` where nesting first passes MAX_DEPTH (the parser is iterative;
    the composer and pydantic recurse)."""
    depth = 0
    starts = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
    try:
        for event in yaml.parse(text):
            if isinstance(event, starts):
                depth += 1
                if depth > MAX_DEPTH:
                    path = _path_at_yaml_error(text[: event.start_mark.index])
                    return event.start_mark.line + 1, path
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return None  # compose reports it
    return None


def _expanded_size(root: yaml.Node) -> int:
    """How many values the document holds once every alias is expanded (memoised by node:
    an alias is the node it names, shared)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key not in sizes:
            sizes[key] = 1  # a recursive alias counts once
            if isinstance(node, yaml.MappingNode):
                sizes[key] = 1 + sum(size(k) + size(v) for k, v in node.value)
            elif isinstance(node, yaml.SequenceNode):
                sizes[key] = 1 + sum(size(item) for item in node.value)
        return min(sizes[key], MAX_NODES + 1)

    return size(root)


def _duplicate_keys(node: yaml.Node) -> list[tuple]:
    """``(loc, line, first_line)`` of every key given twice in one mapping. Each node is
    visited once (an alias repeats a node, not its mistakes), so aliases cost nothing."""
    found: list[tuple] = []
    visited: set[int] = set()
    todo: list[tuple[yaml.Node, tuple[Any, ...]]] = [(node, ())]
    while todo:
        node, loc = todo.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[object, int] = {}
            for key, value in node.value:
                if key.value in seen:
                    found.append(((*loc, key.value), key.start_mark.line + 1, seen[key.value]))
                seen.setdefault(key.value, key.start_mark.line + 1)
                todo.append((value, (*loc, key.value)))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend((item, (*loc, i)) for i, item in enumerate(node.value))
    return found


def _path_of_mark(root: yaml.Node, mark: Any) -> tuple[Any, ...]:
    """The key path of the node that starts at ``mark`` (a constructor error's node)."""
    todo: list[tuple[yaml.Node, tuple[Any, ...]]] = [(root, ())]
    visited: set[int] = set()
    while todo:
        node, loc = todo.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if node.start_mark.index == mark.index:
            return loc
        if isinstance(node, yaml.MappingNode):
            todo.extend((v, (*loc, k.value)) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            todo.extend((item, (*loc, i)) for i, item in enumerate(node.value))
    return ()


def scenario_path(name: str | Path) -> Path:
    """A scenario file: ``name`` if it exists, else the bundled scenario of that name
    (``small-vm`` or ``small-vm.yaml``, as ``pkvm-sim scenarios`` lists them)."""
    path = Path(name)
    if path.exists() or len(path.parts) != 1:
        return path
    bundled = BUNDLED / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    return bundled if bundled.is_file() else path


def _read(path: Path) -> str:
    if path.is_dir():
        raise ScenarioError(f"{path}: is a directory; expected a scenario YAML file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ScenarioError(
            f"{path}:{line}: (top level): not UTF-8 text: byte {raw[exc.start]:#04x} at"
            f" column {column}; expected a UTF-8 YAML file"
        ) from None


def _pydantic_error(path: Path, root: yaml.Node | None, err: dict) -> list[tuple[int, str]]:
    """``(line, message)`` for one pydantic error (a cross-field one may hold several)."""
    # Drop pydantic's own location parts: the root marker and union tags (a host
    # behaviour's kind), which are not keys in the file.
    loc = tuple(k for k in err["loc"] if k != "__root__" and k not in BEHAVIOUR_KINDS)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "union_tag_invalid":
        tag = err["ctx"]["tag"]
        msg = f"unknown behaviour kind {tag!r}; expected one of {_kinds()}"
        loc = (*loc, "kind")
    elif err["type"] == "union_tag_not_found":
        msg = f"expected a 'kind', one of {_kinds()}"
    elif err["type"] == "too_short" and loc == ("proposals",):
        msg = "expected at least one proposal (leave the field out for every one)"
    if not loc and ": " in msg:
        # Cross-field checks name their field first: "workload.churn[1].device: ...",
        # one per line.
        out = []
        for line in msg.splitlines():
            head, _, text = line.partition(": ")
            field = {"loc": _parse_field(head), "msg": text} if text else {"msg": line}
            out += _pydantic_error(path, root, {**err, "loc": (), **field})
        return out
    node = _node_at(root, loc) if root is not None else None
    line = node.start_mark.line + 1 if node is not None else 1
    got = ""
    value = err.get("input")
    if (
        "input" in err
        and not isinstance(value, dict | list)
        and "got" not in msg
        and not err["type"].startswith("union_tag")
    ):
        got = f", got {value!r}"
    return [(line, f"{path}:{line}: {_field_name(loc)}: {msg}{got}")]


def _cross_field_despite(data: dict, errors: list[dict]) -> list[dict]:
    """The cross-field mistakes of a file whose fields failed too: validated again with
    each bad value left out, its default standing in. Nothing if a bad value has no
    default, or sits in a list (leaving it out would renumber the rest); a mistake that
    names a field in error is dropped (it may be the default's, not the file's)."""
    patched = copy.deepcopy(data)
    named = []
    for err in errors:
        loc = tuple(k for k in err["loc"] if k not in BEHAVIOUR_KINDS)
        parent = patched
        for key in loc[:-1]:
            if isinstance(parent, dict):
                parent = parent.get(key)
            elif isinstance(parent, list) and isinstance(key, int) and key < len(parent):
                parent = parent[key]
            else:
                parent = None
        if not loc or not isinstance(parent, dict) or loc[-1] not in parent:
            return []
        del parent[loc[-1]]
        named.append(_field_name(loc))
    try:
        Scenario.model_validate(patched)
    except ValidationError as exc:
        again = exc.errors(include_url=False)
        if any(e["loc"] for e in again):
            return []  # a bad value without a default: the fields must be fixed first
        lines = [
            line
            for e in again
            for line in e["msg"].removeprefix("Value error, ").splitlines()
            if not any(name in line for name in named)
        ]
        return [{**again[0], "msg": line} for line in lines]
    return []


def _kinds() -> str:
    return ", ".join(repr(k) for k in ("honest", *ATTACKS))


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file, or raise :class:`ScenarioError` naming every
    mistake in it; a bundled scenario may be named as ``pkvm-sim scenarios`` lists it."""
    path = scenario_path(path)
    text = _read(path)
    deep = _too_deep(text)
    if deep:
        line, loc = deep
        raise ScenarioError(
            f"{path}:{line}: {_field_name(loc[:4])}{'...' if len(loc) > 4 else ''}: nested"
            f" deeper than {MAX_DEPTH} levels; expected a scenario (4 levels at most)"
        )
    root = None
    try:
        root = yaml.compose(text)
        if root is not None and _expanded_size(root) > MAX_NODES:
            raise ScenarioError(
                f"{path}:1: (top level): more than {MAX_NODES:,} values once its aliases are"
                " expanded (an alias bomb?); expected a scenario"
            )
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, yaml.constructor.ConstructorError) and root is not None and mark:
            loc = _path_of_mark(root, mark)  # a tag: the document parsed
        else:
            loc = _path_at_yaml_error(text)
        raise ScenarioError(
            f"{path}{where}: {_field_name(loc)}: not valid YAML: {problem}"
        ) from None
    if not isinstance(data, dict):
        line = root.start_mark.line + 1 if root is not None else 1
        got = "nothing (an empty file)" if data is None else type(data).__name__
        raise ScenarioError(
            f"{path}:{line}: (top level): expected a mapping of scenario fields, got {got}"
        )
    problems = [
        (line, f"{path}:{line}: {_field_name(loc)}: duplicate key, first given on line {first}")
        for loc, line, first in _duplicate_keys(root)
    ]
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        for err in errors + _cross_field_despite(data, errors):
            problems += _pydantic_error(path, root, err)
    if problems:
        raise ScenarioError([m for _, m in sorted(problems, key=lambda p: p[0])])
    if scenario.guest.its_driver == "replay":  # the capture it plays: sim/actors/replay.py
        from sim.actors.replay import bind_scenario

        scenario = bind_scenario(scenario, path, lambda at: _node_at(root, at).start_mark.line + 1)
    return scenario


def check_unique_names(paths: list[str | Path], scenarios: list[Scenario]) -> None:
    """Refuse two scenarios of one name in one run of several (their cells would merge)."""
    seen: dict[str, str] = {}
    errors = []
    for path, scenario in zip(paths, scenarios, strict=True):
        where = str(scenario_path(path))
        if scenario.name in seen:
            errors.append(
                f"{where}: name: {scenario.name!r} is also the name of {seen[scenario.name]};"
                " expected each scenario under its own name"
            )
        seen.setdefault(scenario.name, where)
    if errors:
        raise ScenarioError(errors)


# ---- every behaviour, built-in and plugin --------------------------------------------------

# The plugins' behaviour specs (sim/registry.py), after the built-ins; loaded last so that
# a plugin module may import anything above.
ATTACK_SPECS = (
    *ATTACK_SPECS,
    *(
        cls.spec
        for cls in plugin_behaviours(frozenset({"honest", *map(spec_kind, ATTACK_SPECS)})).values()
    ),
)
ATTACKS: tuple[str, ...] = tuple(spec_kind(cls) for cls in ATTACK_SPECS)
BEHAVIOUR_KINDS = frozenset({"honest", *ATTACKS})
BehaviourSpec = Annotated[Union[(Honest, *ATTACK_SPECS)], Field(discriminator="kind")]
HostSpec.model_rebuild()
Scenario.model_rebuild()
