"""``run --trace FILE``: one simulated run as Chrome trace-event JSON (opens in Perfetto,
ui.perfetto.dev, or chrome://tracing), to be read like a ``perf`` or QEMU trace.

One process per machine (``src``, ``dst``) and one for the VMM's migration phases; one
thread (track) per actor on each machine. What is on them, all from what the run
recorded (nothing is re-simulated):

- ``cpu``: every charged CPU span inside the migration pause (``World.trace``);
- ``migration``: the VMM's phases, save, transfer, import, restore (``World.trace``);
- ``hypercall``: each hypercall EL2 took, on the lowvisor's track (``Lowvisor.hypercall_log``);
- ``share`` / ``ownership``: each page-state transition EL2 applied, share and unshare
  apart from the rest (``PageOwnership.history``);
- ``fault``: each denied access, on the faulting initiator's track (``MemorySystem.faults``);
- ``its-command``: each command KVM took from a guest queue, decoded, with its error
  (``CommandLog``), on KVM's track.

Timestamps are simulated microseconds, the trace format's unit.
"""

from __future__ import annotations

from typing import Any

from sim.memory.ownership import Transition

SHARES = (Transition.GUEST_SHARE_HOST, Transition.GUEST_UNSHARE_HOST)
MIGRATION = "migration"


class _Tracks:
    """Integer pid/tid for names, with the metadata events that name them."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.tids: dict[tuple[str, str], int] = {}
        self.meta: list[dict[str, Any]] = []

    def pid(self, process: str) -> int:
        if process not in self.pids:
            pid = self.pids[process] = len(self.pids) + 1
            self.meta.append(
                {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": process}}
            )
            self.meta.append(
                {
                    "ph": "M",
                    "name": "process_sort_index",
                    "pid": pid,
                    "tid": 0,
                    "args": {"sort_index": pid},
                }
            )
        return self.pids[process]

    def at(self, process: str, actor: str) -> dict[str, int]:
        pid = self.pid(process)
        key = (process, actor)
        if key not in self.tids:
            tid = self.tids[key] = len(self.tids) + 1
            self.meta.append(
                {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": actor}}
            )
        return {"pid": pid, "tid": self.tids[key]}


def _machine_of(actor: str, machines: list[str], default: str) -> str:
    head = actor.split(".", 1)[0]
    return head if head in machines else default


class Trace:
    """The trace of one or more finished runs; with several, each run's processes are
    named ``PROPOSAL: src`` and so on."""

    def __init__(self) -> None:
        self.tracks = _Tracks()
        self.events: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []

    def add(self, world, prefix: str = "") -> None:
        """Every recorded event of ``world``, its processes prefixed by ``prefix``."""
        self.events += _events(world, self.tracks, prefix)
        self.runs.append(
            {
                "scenario": world.scenario.name,
                "proposal": world.proposal.name,
                "seed": world.scenario.seed,
                "process_prefix": prefix,
            }
        )

    def document(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """The JSON object format: events (metadata first), time unit, what produced it."""
        events = sorted(self.events, key=lambda e: (e["ts"], e["pid"], e["tid"]))
        return {
            "traceEvents": self.tracks.meta + events,
            "displayTimeUnit": "ns",
            "otherData": {"runs": self.runs, "provenance": provenance},
        }


def trace_events(world) -> list[dict[str, Any]]:
    """One run's trace events, metadata first."""
    trace = Trace()
    trace.add(world)
    return trace.document({})["traceEvents"]


def _events(world, tracks: _Tracks, prefix: str) -> list[dict[str, Any]]:
    names = list(world.machines)
    for name in names:
        tracks.pid(prefix + name)
    events: list[dict[str, Any]] = []

    def instant(process: str, actor: str, cat: str, name: str, ts: float, **args: Any) -> None:
        where = tracks.at(prefix + process, actor)
        events.append(
            {"ph": "i", "s": "t", "cat": cat, "name": name, "ts": ts, **where, "args": args}
        )

    for span in world.trace:
        if span.lane == MIGRATION:
            where, cat = tracks.at(prefix + MIGRATION, "VMM phases"), MIGRATION
        else:
            machine = _machine_of(span.lane, names, names[0])
            where, cat = tracks.at(prefix + machine, span.lane), span.what
        events.append(
            {
                "ph": "X",
                "cat": cat,
                "name": span.what,
                "ts": span.start,
                "dur": span.end - span.start,
                **where,
            }
        )
    for name, machine in world.machines.items():
        lowvisor = machine.lowvisor
        for time, call in lowvisor.hypercall_log:
            instant(name, lowvisor.name, "hypercall", call, time)
        for change in machine.memory.ownership.history:
            cat = "share" if change.transition in SHARES else "ownership"
            instant(
                name,
                lowvisor.name,
                cat,
                change.transition.name,
                change.time,
                first_pfn=hex(change.first_pfn),
                nr_pages=change.nr_pages,
                cause=change.cause,
            )
        for fault in machine.memory.faults:
            rec = fault.record
            instant(
                name,
                rec.actor,
                "fault",
                f"{'write' if rec.write else 'read'} fault",
                rec.time,
                addr=hex(rec.addr),
                length=rec.length,
                reason=fault.reason,
            )
        its = machine.host.its
        kvm = its.kvm.who.name
        for rec in its.command_log:
            what = (
                type(rec.command).__name__
                if rec.command is not None
                else ("unreadable slot" if rec.raw is None else "undecodable command")
            )
            args: dict[str, Any] = {"creadr": hex(rec.offset)}
            if rec.raw is not None:
                args["raw"] = rec.raw.hex()
            if rec.error is not None:
                args["error"] = str(rec.error)
            if rec.detail:
                args["detail"] = rec.detail
            instant(name, kvm, "its-command", what, rec.time, **args)
    return events
