"""Benchmarks: what a simulated event costs, how fast the ITS saves and restores, and how a
full migration grows with the number of mapped ITEs.

Every figure here is measured, never asserted: the numbers depend on the machine. Events
are counted with SimPy's own event-id counter (``Environment._eid``, bumped once per
scheduled event), which costs nothing while the simulation runs; a run goes until no
event is left, so every scheduled event was processed.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
import platform
import random
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import simpy

# 16 INTID bits leave INTIDs 8192..65535 for LPIs: a Linux guest maps one per vector.
MAX_ITES = (1 << 16) - 8192
MAX_VECTORS = 2048  # DeviceSpec.vectors' upper bound
MAX_BENCH_ITES = 4_000_000  # ~390 bytes an ITE at 1M: about 1.6 GiB a run at this cap
DEFAULT_SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (200, 1_000)
# The proposals the 1M-ITE target was set for (issue 15): the six there were then.
FIRST_SIX = (
    "trusted-host",
    "share-host-claims",
    "share-enlightened-guest",
    "share-cmdq-snoop",
    "userspace-serialization",
    "iommu-gated-its",
)


def events_scheduled(env: simpy.Environment) -> int:
    """How many events ``env`` has scheduled so far (its next event id)."""
    eid = env._eid  # itertools.count: reading it advances it, which no one else sees
    return next(eid)


# ---- (a) bare SimPy on pkvm-sim's event pattern ------------------------------------------

# Bare SimPy and pkvm-sim are each timed this many times, alternately, and the best of
# each kept: the machine's noise comes and goes over seconds (with three rounds, two
# bench runs half an hour apart read 2.6x and 2.9x).
RATIO_ROUNDS = 7

# What event_kind() tells apart, with the words perf.md uses for each.
EVENT_KINDS = {
    "timeout": "timeouts",
    "event": "plain events",
    "resource": "resource requests and releases",
    "process": "process starts and ends",
}


def event_kind(event: simpy.Event) -> str:
    """What a scheduled SimPy event is: a ``timeout``, a plain ``event`` (succeeded by
    code), a ``resource`` request or release, or a ``process`` starting or ending."""
    if isinstance(event, simpy.Timeout):
        return "timeout"
    if isinstance(event, simpy.resources.base.Put | simpy.resources.base.Get):
        return "resource"
    if isinstance(event, simpy.Process | simpy.events.Initialize):
        return "process"
    return "event"


@contextmanager
def counting_events(
    mix: Counter, also: Callable[[simpy.Event], None] | None = None
) -> Iterator[None]:
    """Count every event any Environment schedules, by :func:`event_kind`, into ``mix``
    (wraps ``Environment.schedule`` for the duration: untimed runs only); ``also(event)``,
    if given, is called for each as well."""
    schedule = simpy.Environment.schedule

    def counted(env, event, priority=simpy.events.NORMAL, delay=0):
        mix[event_kind(event)] += 1
        if also is not None:
            also(event)
        schedule(env, event, priority, delay)

    simpy.Environment.schedule = counted
    try:
        yield
    finally:
        simpy.Environment.schedule = schedule


def bare_simpy(mix: dict[str, int], runs: int, events: int = 400_000, seed: int = 1) -> dict:
    """pkvm-sim's event pattern with no model behind it: as many processes as a run has,
    and timeouts, plain events and resource requests and releases in the proportions
    ``mix`` counted over ``runs`` runs (:func:`counting_events`). Each process alternates
    exponential timeouts (MSIs, charged work), a share of them inside a request of a
    capacity-1 resource (the vCPUs), with plain events succeeded at once (a signalled
    completion); the shares are spread evenly, not drawn."""
    timeouts = max(1, mix.get("timeout", 0))
    per_event = mix.get("event", 0) / timeouts  # plain events per timeout
    per_request = mix.get("resource", 0) / 2 / timeouts  # request-release pairs per timeout
    nr_actors = max(1, round(mix.get("process", 0) / 2 / max(1, runs)))
    steps = max(1, round(events / nr_actors / (1 + per_event + 2 * per_request)))
    env = simpy.Environment()
    vcpus = simpy.Resource(env, capacity=1)
    rng = random.Random(seed)

    def actor(rate: float):
        in_request = in_event = 0.0
        for _ in range(steps):
            delay = rng.expovariate(rate)
            in_request += per_request
            if in_request >= 1.0:
                in_request -= 1.0
                with vcpus.request() as req:
                    yield req
                    yield env.timeout(delay)
            else:
                yield env.timeout(delay)
            in_event += per_event
            if in_event >= 1.0:
                in_event -= 1.0
                done = env.event()
                done.succeed()
                yield done

    for a in range(nr_actors):
        env.process(actor(1e-3 * (a + 1)))
    start = time.perf_counter()
    env.run()
    wall = time.perf_counter() - start
    counted = events_scheduled(env)
    return {
        "events": counted,
        "wall_s": wall,
        "events_per_s": counted / wall,
        "processes": nr_actors,
        "mix": {kind: mix.get(kind, 0) for kind in EVENT_KINDS},
    }


# ---- (a2) the same ratio in instructions ---------------------------------------------------

# Valgrind's cachegrind counts the instructions a process executes exactly, whatever else
# the machine is doing; with the hash seed fixed the count repeats to a few hundred
# instructions in billions. It also runs them through a model of this machine's level-1
# caches (the sizes the CPU reports), which counts the misses: where an event's time goes
# beyond its instructions.
VALGRIND = ("valgrind", "--tool=cachegrind", "--cachegrind-out-file=/dev/null")
COUNTERS = {"instructions": "I", "i1_misses": "I1", "d1_misses": "D1"}  # cachegrind's names
BARE_COUNTED_EVENTS = 100_000  # bare SimPy's events per counted round (its cost is flat)


def _cachegrind(code: str, *flags: str) -> str:
    """What cachegrind prints (its stderr) for a fresh interpreter running ``code``;
    RuntimeError, with its last lines, if valgrind fails."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [*VALGRIND, *flags, sys.executable, "-c", code], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"valgrind exit {done.returncode}: {_tail(done.stderr)}")
    return done.stderr


def _tail(stderr: str) -> str:
    return " / ".join(stderr.strip().splitlines()[-3:])


def counted(code: str) -> dict[str, int]:
    """Instructions, and level-1 instruction- and data-cache misses, of a fresh
    interpreter running ``code`` under cachegrind."""
    stderr = _cachegrind(code)
    found = {
        key: re.search(rf"^==\d+== {name}\s+(?:refs|misses):\s+([\d,]+)", stderr, re.M)
        for key, name in COUNTERS.items()
    }
    if not all(found.values()):
        raise RuntimeError(f"valgrind exit 0: {_tail(stderr)}")
    return {key: int(m.group(1).replace(",", "")) for key, m in found.items()}


def cache_model() -> str:
    """The level-1 caches cachegrind models on this machine (it reads their geometry from
    the CPU), e.g. "I1 32,768 B 8-way, D1 49,152 B 12-way"."""
    stderr = _cachegrind("pass", "-v")
    found = re.findall(r"^==\d+==\s+(I1|D1): ([\d,]+ B), (\d+-way)", stderr, re.M)
    if len(found) != 2:
        raise RuntimeError(f"valgrind exit 0: {_tail(stderr)}")
    return ", ".join(" ".join(cache) for cache in found)


def simulate_rounds(path: str, rounds: int) -> None:
    """``simulate()`` the scenario at ``path`` under each of its proposals, ``rounds``
    times: what :func:`simulated_events` times, for a counted child process."""
    from sim.run import simulate
    from sim.scenario import load_scenario

    scenario = load_scenario(path)
    for _ in range(rounds):
        for proposal in scenario.proposals:
            simulate(scenario, proposal)


def instruction_ratio(
    path: str, mix: dict[str, int], runs: int, events: int, bare_events: int = BARE_COUNTED_EVENTS
) -> dict:
    """:data:`COUNTERS` per event of pkvm-sim on the scenario at ``path`` (``events`` a
    round: its proposals once each) and of bare SimPy on ``mix``, each one round's count:
    the difference between children running two rounds and one, so that start-up, imports
    and the first run's warm-up cancel. The four children run at once: a count does not
    move with the load."""
    from concurrent.futures import ThreadPoolExecutor

    bare_counted = bare_simpy(mix, runs, events=bare_events)["events"]

    def bare(rounds: int) -> str:
        call = f"bare_simpy({dict(mix)!r}, {runs}, events={bare_events})"
        return f"from sim.bench import bare_simpy\nfor _ in range({rounds}): {call}"

    def sim(rounds: int) -> str:
        return f"from sim.bench import simulate_rounds; simulate_rounds({path!r}, {rounds})"

    with ThreadPoolExecutor(max_workers=4) as pool:
        two, one, bare_two, bare_one = pool.map(counted, [sim(2), sim(1), bare(2), bare(1)])
    version = subprocess.run(["valgrind", "--version"], capture_output=True, text=True)
    result = {
        "simulated": {k: (two[k] - one[k]) / events for k in COUNTERS},
        "bare": {k: (bare_two[k] - bare_one[k]) / bare_counted for k in COUNTERS},
        "simulated_events": events,
        "bare_events": bare_counted,
        "valgrind": version.stdout.strip(),
        "caches": cache_model(),
    }
    result["ratio"] = result["simulated"]["instructions"] / result["bare"]["instructions"]
    return result


# ---- (b) pkvm-sim on a migration scenario ------------------------------------------------


def event_mix(
    scenario, proposals: list[str] | None = None, by_part: Counter | None = None
) -> Counter:
    """The SimPy events one run of ``scenario`` under each proposal schedules, by kind
    (untimed: counting costs time). ``by_part``, if given, also gets them by the
    :data:`RUN_PARTS` process that scheduled them ("build": before the run starts;
    "simpy": any other process)."""
    from sim.run import simulate

    mix: Counter = Counter()
    parts: dict[int, str] = {}  # id(top-level process's generator) -> part

    def tag(name: str, process):
        parts[id(process)] = name
        return process

    def count(event: simpy.Event) -> None:
        active = event.env.active_process
        by_part["build" if active is None else parts.get(id(active._generator), "simpy")] += 1

    with counting_events(mix, also=None if by_part is None else count):
        for proposal in proposals or scenario.proposals:
            parts.clear()
            simulate(scenario, proposal, wrap=tag)
    return mix


def simulated_events(scenario, proposals: list[str] | None = None) -> dict:
    """Simulate ``scenario`` under each proposal; events and wall time summed over them.

    Run after :func:`event_mix` (or another untimed run): the first run in a process also
    pays for imports and caches that no later run pays again, which is not the cost of an
    event."""
    from sim.run import collect, simulate

    events = 0
    wall = 0.0
    sim_wall = 0.0
    for proposal in proposals or scenario.proposals:
        start = time.perf_counter()
        world = simulate(scenario, proposal)
        mid = time.perf_counter()
        collect(world)
        wall += time.perf_counter() - start
        sim_wall += mid - start
        events += events_scheduled(world.env)
    return {
        "events": events,
        "wall_s": wall,
        "simulate_wall_s": sim_wall,
        "events_per_s": events / sim_wall,
    }


def without_msis(scenario):
    """``scenario`` with every device's MSI rate at 0: its runs without their MSI
    workloads (the guest's boot, devices and affinity moves, and the migration)."""
    devices = [d.model_copy(update={"rate_hz": 0}) for d in scenario.devices]
    return scenario.model_copy(update={"devices": devices})


# ---- (b2) where one run's time goes ----------------------------------------------------------

RUN_PARTS = {
    "build": "build: the world, both machines, VM creation, attacks, the auditor",
    "guest": "the guest's process: boot, ITS probe, device bring-up, affinity moves, and"
    " what KVM, EL2 and the audit do inside its traps",
    "msi": "the MSI workloads: Poisson MSIs through the vITS, both machines",
    "migration": "the migration: pause, the proposal's save and restore, EL2's import, resume",
    "simpy": "SimPy's scheduling and every other process (events, timeouts, resources)",
    "collect": "collect(): the result from ledger, histories and exposure",
}


def _timed(process, spent: dict[str, float], key: str):
    """Run generator ``process`` as a SimPy process, adding the time of each of its own
    steps (all it calls included) to ``spent[key]``."""
    value, error = None, None
    while True:
        start = time.perf_counter()
        try:
            event = process.send(value) if error is None else process.throw(error)
        except StopIteration as stop:
            spent[key] += time.perf_counter() - start
            return stop.value
        spent[key] += time.perf_counter() - start
        value, error = None, None
        try:
            value = yield event
        except BaseException as exc:  # a failed event or an interrupt: hand it on
            error = exc


def run_cost(
    scenario, proposals: list[str] | None = None, events_by_part: Counter | None = None
) -> dict:
    """The fixed cost of one run, averaged over ``proposals`` (default: the scenario's):
    wall time split as :data:`RUN_PARTS`, and the events each part scheduled over those
    runs (``events_by_part``, from :func:`event_mix`), per run."""
    from sim.run import collect, simulate

    proposals = proposals or list(scenario.proposals)
    spent = dict.fromkeys(RUN_PARTS, 0.0)
    total = 0.0
    for proposal in proposals:
        marks: list[float] = []

        def wrap(name: str, process, marks=marks):
            if not marks:
                marks.append(time.perf_counter())  # the world is built
            return _timed(process, spent, name)

        start = time.perf_counter()
        world = simulate(scenario, proposal, wrap=wrap)
        ran = time.perf_counter()
        collect(world)
        end = time.perf_counter()
        spent["build"] += marks[0] - start
        spent["collect"] += end - ran
        total += end - start
        spent["simpy"] += ran - marks[0]  # less the processes' own steps, below
    spent["simpy"] -= spent["guest"] + spent["msi"] + spent["migration"]
    n = len(proposals)
    return {
        "runs": n,
        "run_s": total / n,
        "parts_s": {k: v / n for k, v in spent.items()},
        "events": {k: (events_by_part or {}).get(k, 0) / n for k in RUN_PARTS},
    }


# ---- (b3) compare on one core and on many -------------------------------------------------


def compare_speed(scenarios: list[str], jobs: int) -> dict:
    """``pkvm-sim compare`` over ``scenarios`` with ``--jobs 1`` and ``--jobs N``, each a
    fresh process (start-up included): wall times and whether the outputs are the same
    bytes."""
    import tempfile
    from pathlib import Path

    walls, cpus, trees = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="pkvm-sim-bench-") as tmp:
        for n in dict.fromkeys((1, jobs)):
            out = Path(tmp) / f"jobs{n}"
            argv = [sys.executable, "-m", "sim.cli", "compare", *scenarios]
            argv += ["--name", "set", "--jobs", str(n), "--out", str(out)]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            walls[n] = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus[n] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            trees[n] = {
                p.relative_to(out).as_posix(): p.read_bytes()
                for p in sorted(out.rglob("*"))
                if p.is_file()
            }
    return {
        "scenarios": len(scenarios),
        "jobs": jobs,
        "wall_1_s": walls[1],
        "wall_n_s": walls[jobs],
        "cpu_1_s": cpus[1],  # CPU time of the run and its workers
        "cpu_n_s": cpus[jobs],
        "speedup": walls[1] / walls[jobs],
        "files": len(trees[1]),
        "identical": trees[1] == trees[jobs],
    }


# ---- (c) ITS save and restore -------------------------------------------------------------


ITS_SIZES = (10_000, 100_000, 1_000_000)


def its_save_restore(ites: int, per_device: int = MAX_VECTORS) -> dict:
    """Map ``ites`` ITEs on a non-protected vITS, SAVE_TABLES, copy the RAM, RESTORE_TABLES.

    16 INTID bits give 57,344 LPIs; beyond that the ITEs share LPIs, which only kernel 6.1
    accepts (its vgic_add_lpi hands the refcounted LPI to every ITE; 7.3 fails the second
    MAPTI with -EEXIST; a Linux guest never does it), so this runs the 6.1 model: the
    tables and their walk, the things measured here, are as large as the ITE count says.
    """
    from sim.its import MAPD, MAPTI, VirtualITS
    from sim.its import regs as r
    from sim.its.vits import QEMU_VIRT_RAM_BASE

    src = VirtualITS(two_level_device_table=True, kernel="6.1")
    assert src.layout is not None
    itt = src.layout.free_base
    bits = max(1, (per_device - 1).bit_length())
    itt_bytes = max(256, (1 << bits) * 8)
    nr_devices = -(-ites // per_device)
    start = time.perf_counter()
    mapped = 0
    for dev in range(nr_devices):
        device_id = dev * 8
        assert src.execute(MAPD(device_id, bits - 1, itt, True).encode()) is None
        for ev in range(min(per_device, ites - mapped)):
            intid = 8192 + mapped % MAX_ITES
            assert src.execute(MAPTI(device_id, ev, intid, ev % 4).encode()) is None
            mapped += 1
        itt += itt_bytes
    map_wall = time.perf_counter() - start
    entries = ites + nr_devices + len(src.collections)  # ITEs, DTEs, CTEs

    start = time.perf_counter()
    assert src.save_tables() is None
    save_wall = time.perf_counter() - start

    dst = VirtualITS(probe=False, kernel="6.1")
    chunk = 1 << 20  # copy guest RAM as a VMM does; dst RAM starts zeroed
    for addr in range(QEMU_VIRT_RAM_BASE, itt, chunk):
        n = min(chunk, itt - addr)
        data = src.read_guest(addr, n)
        if data != bytes(n):
            dst.write_guest(addr, data)
    regs = src.get_regs()
    dst.set_regs(regs)
    start = time.perf_counter()
    err = dst.restore_tables()
    restore_wall = time.perf_counter() - start
    dst.mmio_write(r.GITS_CTLR, regs["GITS_CTLR"])
    ok = err is None and dst.mappings() == src.mappings()
    return {
        "ites": ites,
        "entries": entries,
        "map_commands_per_s": (ites + nr_devices) / map_wall,
        "save_s": save_wall,
        "restore_s": restore_wall,
        "save_entries_per_s": entries / save_wall,
        "restore_entries_per_s": entries / restore_wall,
        "restored_ok": ok,
    }


# ---- (d) full migrations by size ----------------------------------------------------------


def scaling_scenario(ites: int, *, driver: str = "bulk", seed: int = 1):
    """A protected VM with ``ites`` mapped vectors over as few devices as the schema allows.

    The ``bulk`` guest driver batches its commands and, past 57,344 vectors, maps the rest
    onto LPIs already in use, which only kernel 6.1's KVM accepts: a bulk scenario runs
    the 6.1 model (``kernel: "6.1"``) at every size. ``linux`` is the Linux command
    pattern, one LPI per vector, on the default kernel (7.3).
    """
    from sim.scenario import Scenario

    top = MAX_ITES if driver == "linux" else MAX_BENCH_ITES
    if not 1 <= ites <= top:
        raise ValueError(f"ITEs: expected 1..{top} with the {driver} guest driver, got {ites}")
    devices = []
    left = ites
    while left:
        vectors = min(MAX_VECTORS, left)
        i = len(devices)
        devices.append(
            {"name": f"dev{i}", "device_id": 8 * i, "vectors": vectors, "rate_hz": 1000.0}
        )
        left -= vectors
    return Scenario.model_validate(
        {
            "name": f"bench-{ites}-ites",
            "question": f"How does a migration with {ites} mapped ITEs cost in wall time?",
            "seed": seed,
            "guest": {"ram_mib": 4096, "vcpus": 4, "its_driver": driver},
            "kernel": "6.1" if driver == "bulk" else "7.3",
            "devices": devices,
            "workload": {"duration_ms": 2.0, "affinity_moves_per_s": 500.0},
            "migration": {"at_ms": 1.0},
        }
    )


@dataclass
class Point:
    ites: int
    driver: str
    proposal: str
    wall_s: float
    events: int
    peak_rss_mib: float
    translations_ok: bool
    expected_translations: int


def _point(ites: int, driver: str, proposal: str) -> dict:
    """One full migration in a fresh process: wall time, events, peak RSS."""
    from sim.run import collect, simulate

    scenario = scaling_scenario(ites, driver=driver)
    start = time.perf_counter()
    world = simulate(scenario, proposal)
    result = collect(world)
    wall = time.perf_counter() - start
    rss = peak_rss_mib()
    k = result.correctness
    return asdict(
        Point(
            ites=ites,
            driver=driver,
            proposal=proposal,
            wall_s=wall,
            events=events_scheduled(world.env),
            peak_rss_mib=rss,
            translations_ok=k.translations_preserved and not k.its_errors,
            expected_translations=k.expected_translations,
        )
    )


def _point_alone(ites: int, driver: str, proposal: str) -> dict:
    """:func:`_point` in a process that ends after it: the collector stays off. Resumed,
    it would scan the live world only to keep it (a quarter of a second at 1M ITEs) or,
    once the world is dropped, walk it to free what the process's exit frees anyway."""
    gc.disable()
    return _point(ites, driver, proposal)


def peak_rss_mib() -> float:
    """This process's peak resident set: VmHWM, which starts afresh at exec (ru_maxrss
    carries the parent's peak across fork and exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def growth_exponent(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) on log(x): y ~ x^k."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


@dataclass
class Bench:
    machine: str
    bare: dict
    simulated: dict
    simulated_scenario: str
    its: list[dict]  # one per size
    points: list[dict] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    batch_wall: dict[int, float] = field(default_factory=dict)  # size -> its batch's wall
    six_wall: float | None = None  # the FIRST_SIX at the largest size, as a batch of their own
    jobs: int = 1
    driver: str = "bulk"
    run_cost: dict | None = None  # run_cost() of the simulated scenario
    compare: dict | None = None  # compare_speed()
    compare_what: str = ""  # which scenarios the compare ran
    load: float | None = None  # 1-minute load average when the run started
    round_ratios: list[float] = field(default_factory=list)  # each round's, back to back
    instructions: dict | None = None  # instruction_ratio(), if valgrind could count
    instructions_missing: str = ""  # why not, if not
    quiet: dict | None = None  # simulated_events() of without_msis(the scenario)

    @property
    def ratio(self) -> float:
        """Wall time per simulated event over bare SimPy's."""
        return self.bare["events_per_s"] / self.simulated["events_per_s"]


# Where each migration point runs: a fresh child of a fork server that has imported
# pkvm-sim and nothing else, gone once measured (os._exit: no interpreter teardown), so a
# point's batch pays no interpreter start, imports or exit-time collection per run; a
# spawned interpreter where there is no fork server (not on Unix).
POINT_START = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _point_context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context(POINT_START)
    if POINT_START == "forkserver":
        ctx.set_forkserver_preload(["__main__", "sim.bench", "sim.run"])
    return ctx


def run_points(
    sizes: list[int],
    proposals: list[str],
    driver: str,
    jobs: int,
    progress=None,
    expected: dict[str, float] | None = None,
) -> tuple[list[dict], dict[int, float]]:
    """Every (size, proposal) in a fresh process, ``jobs`` at a time; a size's proposals
    run together, the longest first (by ``expected`` wall times, then by the previous
    size's: a batch of unequal runs on few cores ends sooner so). Returns the points in
    ``proposals`` order and, per size, the wall time of its batch."""
    ctx = _point_context()
    points: list[dict] = []
    batch_wall: dict[int, float] = {}
    for ites in sizes:
        guess = expected or {}
        order = sorted(proposals, key=lambda p: -guess.get(p, 0.0))  # stable: ties in order
        start = time.perf_counter()
        done: dict[str, dict] = {}
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, max_tasks_per_child=1) as pool:
            futures = {p: pool.submit(_point_alone, ites, driver, p) for p in order}
            for p in proposals:
                done[p] = futures[p].result()
                if progress is not None:
                    progress(done[p])
        batch_wall[ites] = time.perf_counter() - start
        points += [done[p] for p in proposals]
        expected = {p: pt["wall_s"] for p, pt in done.items()}
    return points, batch_wall


def machine_line() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {mem:.1f} GiB RAM, "
        f"Python {platform.python_version()}, SimPy {simpy.__version__}"
    )


# ---- perf.md ------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.3g}"


def its_growth(its: list[dict]) -> list[str]:
    xs = [x["ites"] for x in its]
    save = growth_exponent(xs, [x["save_s"] for x in its])
    restore = growth_exponent(xs, [x["restore_s"] for x in its])
    if save is None or restore is None:
        return []
    return [
        f"Growth exponent k in wall ~ ITEs^k from {xs[0]:,} to {xs[-1]:,} ITEs:"
        f" SAVE_TABLES k = {save:.2f}, RESTORE_TABLES k = {restore:.2f}. Past"
        f" {MAX_ITES:,} ITEs most restored ITEs find their LPI already there (vgic_add_lpi"
        " then reads no property or pending byte), so restore's k understates the cost of"
        " distinct LPIs."
    ]


def _workload(b: Bench) -> list[str]:
    if b.driver == "linux":
        return [
            "The guest is the Linux ITS driver: MAPTI + SYNC and INV + SYNC per vector, one"
            " CWRITER write each, one LPI per vector, so at most"
            f" {MAX_ITES:,} ITEs (16 INTID bits).",
        ]
    return [
        f"The guest runs the synthetic `bulk` ITS driver (`guest.its_driver: bulk`): per"
        f" device the property bytes first, then its MAPTIs, an INV per LPI it maps first and"
        " a SYNC per collection, as many commands per CWRITER write as the 64 KiB queue holds."
        f" A VM has {MAX_ITES:,} LPIs (16 INTID bits); past that the driver maps vectors"
        " onto LPIs in use, which only kernel 6.1's KVM allows (it refcounts the LPI; 7.3"
        " fails such a MAPTI with -EEXIST; a Linux guest never sends one), so these runs"
        ' model kernel 6.1 (`kernel: "6.1"`); the driver moves an LPI by a MOVI for each'
        " of its ITEs. The tables KVM saves and restores, and the translations checked, are"
        " as large as the ITE count says. Devices have"
        f" {MAX_VECTORS:,} vectors each (the last one the remainder), 4 vCPUs, 4 GiB.",
    ]


def _spread(b: Bench) -> list[str]:
    """How far the ratio moves from round to round: the machine, not the code."""
    if len(b.round_ratios) < 2:
        return []
    rs = sorted(b.round_ratios)
    return [
        f"Round by round (bare SimPy, then pkvm-sim, back to back) the ratio read"
        f" {rs[0]:.1f}x to {rs[-1]:.1f}x (median {rs[len(rs) // 2]:.1f}x): the same code,"
        " timed on a machine whose speed comes and goes.",
        "",
    ]


def msi_share(bare: dict, simulated: dict, quiet: dict) -> tuple[float, float, float]:
    """``(rest, msi, room)`` from the three timings: the runs without their MSIs in bare
    SimPy's time for all the full runs' events; each MSI event against a bare-SimPy one;
    and what a 2x ratio would leave each MSI event."""
    per_bare = 1 / bare["events_per_s"]  # s per bare-SimPy event
    events, msi_events = simulated["events"], simulated["events"] - quiet["events"]
    quiet_s = quiet["simulate_wall_s"]
    rest = quiet_s / (events * per_bare)
    msi = (simulated["simulate_wall_s"] - quiet_s) / (msi_events * per_bare)
    return rest, msi, (2 - rest) * events / msi_events


def _without_msis(b: Bench) -> list[str]:
    """What the ratio leaves the MSI workloads once the rest of the runs is paid for."""
    if b.quiet is None:
        return []
    rest, msi, room = msi_share(b.bare, b.simulated, b.quiet)
    events, quiet_events = b.simulated["events"], b.quiet["events"]
    msi_events, quiet_s = events - quiet_events, b.quiet["simulate_wall_s"]
    if msi <= 0:  # the full runs were no slower than these: noise, on a short run
        verdict = "This run's noise hides what they cost: it timed the full runs no slower."
    elif room <= 0:
        verdict = "The rest of the runs alone is past 2x: no cost of the MSI events reaches it."
    else:
        verdict = f"At most 2x overall would leave each of those {room:.2f}x a bare-SimPy event" + (
            ", less than bare SimPy's own: out of reach while the rest of the runs does its work."
            if room < 1
            else "."
        )
    return [
        f"Without their MSI workloads (every device's `rate_hz` 0) the same runs schedule"
        f" {quiet_events:,} events: the guest's boot, its devices and affinity moves and the"
        " migration, most of them a trap, a hypercall or a page-state change with its"
        f" checks, audit and exposure accounting. They take {quiet_s:.3f} s (best of"
        f" {RATIO_ROUNDS}, in the same rounds), **{rest:.2f}x** bare SimPy's time for all"
        f" {events:,} events of the full runs. The MSI workloads add {msi_events:,} events"
        f" ({msi_events / events:.0%} of them)"
        + (f", at {msi:.2f}x a bare-SimPy event each. " if msi > 0 else ". ")
        + verdict,
        "",
    ]


def _instructions(b: Bench) -> list[str]:
    """The ratio in instructions, which the machine's load does not move, and the cache
    misses that make an instruction of one dearer than one of the other."""
    if b.instructions is None:
        if not b.instructions_missing:
            return []
        return [f"In instructions: not measured ({b.instructions_missing}).", ""]
    x = b.instructions
    sim, bare = x["simulated"], x["bare"]

    def misses(k: str) -> str:
        return f"{sim[k]:,.1f} | {bare[k]:,.1f}"

    sim_misses = sim["i1_misses"] + sim["d1_misses"]
    bare_misses = bare["i1_misses"] + bare["d1_misses"]
    missed = sim_misses / bare_misses

    return [
        f"In instructions, which no load moves: **{x['ratio']:.2f}x**, counted by"
        f" {x['valgrind']} (cachegrind), each side in a fresh interpreter with"
        " PYTHONHASHSEED=0, a round's count the difference between a child running two"
        " rounds and one (start-up, imports and the first run's warm-up cancel):",
        "",
        f"| per event | pkvm-sim, `{b.simulated_scenario}` | bare SimPy |",
        "|---|---:|---:|",
        f"| instructions | {sim['instructions']:,.0f} | {bare['instructions']:,.0f} |",
        f"| level-1 instruction-cache misses | {misses('i1_misses')} |",
        f"| level-1 data-cache misses | {misses('d1_misses')} |",
        f"| events counted | {x['simulated_events']:,} | {x['bare_events']:,} |",
        "",
        f"The misses are cachegrind's model of this machine's level-1 caches"
        f" ({x['caches']}), a count, not a clock: at each one an event waits on the next"
        " level, which the wall-time ratio includes and the instruction ratio does not. A"
        f" `{b.simulated_scenario}` event misses them {missed:.2f}x as often as a bare-SimPy"
        f" one ({sim_misses:,.1f} against {bare_misses:,.1f}), "
        + (
            "more than its instructions: the misses take the wall-time ratio past the"
            " instruction ratio."
            if missed > x["ratio"]
            else "no more than its instructions: the misses do not take the wall-time ratio"
            " past the instruction ratio."
        ),
        "",
    ]


def _pattern(b: Bench) -> list[str]:
    """What the bare-SimPy pattern is, from the mix it was given."""
    mix = b.bare.get("mix")
    if not mix:
        return []
    total = sum(mix.values()) or 1
    share = ", ".join(
        f"{100 * mix[kind] / total:.1f}% {what}" for kind, what in EVENT_KINDS.items()
    )
    return [
        f"The bare pattern is `{b.simulated_scenario}`'s own, counted in an untimed pass over"
        f" its proposals ({sum(mix.values()):,} events: {share}): {b.bare['processes']}"
        " processes, as many as a run has, each alternating exponential timeouts, a share of"
        " them inside a request of a capacity-1 resource, with plain events succeeded at"
        " once, in those proportions.",
        "",
    ]


def _run_cost(b: Bench) -> list[str]:
    if b.run_cost is None:
        return []
    c = b.run_cost
    parts = c["parts_s"]
    events = c["events"]
    whole = sum(parts.values()) or 1.0
    return [
        "## The fixed cost of one run",
        "",
        f"One run of `{b.simulated_scenario}` (build, simulate, collect), the mean over its"
        f" {c['runs']} proposals: **{c['run_s'] * 1000:.1f} ms**. Where it goes (each"
        " process's own steps, with everything they call, timed as SimPy runs them):",
        "",
        "| part | ms | share | events | us per event |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {RUN_PARTS[k]} | {v * 1000:.2f} | {100 * v / whole:.0f}% |"
            f" {events[k]:,.0f} | {_per_event(k, v, events[k])} |"
            for k, v in parts.items()
        ],
        "",
        "*events* are those the part scheduled (SimPy's count, per run, from the untimed"
        " pass; SimPy's row counts those of any other process, and its time is SimPy's work"
        " on every event); *us per event* is a process's own steps over its own events. The MSI"
        " workloads schedule most events and each costs little: an arrival is a timeout"
        " (an MSI workload runs on both machines for the whole run, and where the VM is not,"
        " or while it is paused, an arrival is only that and a check), an injection another."
        " The guest's and the migration's events are few and dear: each carries a trap, a"
        " hypercall or a page-state change, with the ownership check, the audit and the"
        " exposure accounting it sets off. The cost per event above is their mean.",
        "",
    ]


def _per_event(part: str, seconds: float, events: float) -> str:
    """A process's own time per event it scheduled, in us (the processes only)."""
    if part not in ("guest", "msi", "migration") or not events:
        return ""
    return f"{seconds * 1e6 / events:.2f}"


def _compare(b: Bench) -> list[str]:
    if b.compare is None:
        return []
    c = b.compare
    n = c["jobs"]
    return [
        "## `compare` on one core and on many",
        "",
        f"`pkvm-sim compare` over {b.compare_what} ({c['scenarios']} scenarios), each a fresh"
        " process, start-up and report writing included:",
        "",
        f"| `--jobs 1` s | `--jobs {n}` s | speed-up | CPU s, `--jobs 1` | CPU s, `--jobs {n}`"
        " | output files | same bytes |",
        "|---:|---:|---:|---:|---:|---:|---|",
        f"| {c['wall_1_s']:.1f} | {c['wall_n_s']:.1f} | **{c['speedup']:.2f}x** |"
        f" {c['cpu_1_s']:.1f} | {c['cpu_n_s']:.1f} |"
        f" {c['files']} | {'yes' if c['identical'] else 'NO'} |",
        "",
        "CPU s is the user and system time of the command and its worker processes: the"
        " work, which the wall time divides among the cores the machine gives the run.",
        "",
        "Targets: at least 1.8x on 2 cores; the bundled compare (every scenario over 8"
        " seeds, every proposal, the attack matrices and the cost-range section) within 60 s"
        " on 2 cores; the same bytes for any `--jobs`. Each honest run, each attack cell,"
        " each cost point and each chart is a job"
        " (sim/parallel.py), run in spawned worker processes, started once for every"
        " phase of the command, and merged in a fixed order; the speed-up is bounded by the"
        " cores the machine gives the run.",
        "",
    ]


def render(b: Bench, command: str) -> str:
    from sim.scenario import ALL_PROPOSALS

    lines = [
        "# pkvm-sim performance",
        "",
        f"Measured by `{command}` on {b.machine}. One run; wall-clock figures vary"
        " from run to run and machine to machine, ratios less so."
        + (
            f" Load average when the run started: {b.load:.1f} (other work on the machine"
            " takes cores from this run)."
            if b.load is not None
            else ""
        ),
        "",
        "## Simulated events against bare SimPy",
        "",
        "| what | events | wall s | events/s |",
        "|---|---:|---:|---:|",
        f"| bare SimPy, same event pattern | {b.bare['events']:,} | {b.bare['wall_s']:.3f}"
        f" | {_fmt(b.bare['events_per_s'])} |",
        f"| pkvm-sim, `{b.simulated_scenario}`, every proposal | {b.simulated['events']:,}"
        f" | {b.simulated['simulate_wall_s']:.3f} | {_fmt(b.simulated['events_per_s'])} |",
        "",
        f"Cost of a simulated event relative to bare SimPy: **{b.ratio:.1f}x** (target: at"
        " most 2x). pkvm-sim's wall time is `simulate()` (building the world and running it"
        " to the end), without `collect()`, after one untimed run; events are SimPy's own"
        f" count of scheduled events; each figure is the best of {RATIO_ROUNDS}, measured"
        " alternately.",
        "",
        *_spread(b),
        *_without_msis(b),
        *_instructions(b),
        *_pattern(b),
        *_run_cost(b),
        *_compare(b),
        "## ITS save and restore",
        "",
        "On a non-protected vITS with a two-level device table: map the ITEs through the"
        " command queue, SAVE_TABLES, copy guest RAM, RESTORE_TABLES, compare every"
        f" translation. Beyond {MAX_ITES:,} ITEs the ITEs share LPIs (16 INTID bits; KVM"
        " refcounts an LPI several ITEs map, a Linux guest would not).",
        "",
        "| ITEs | table entries | SAVE_TABLES s | entries/s | RESTORE_TABLES s | entries/s"
        " | map commands/s | restored = source |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
        *[
            f"| {x['ites']:,} ITEs | {x['entries']:,} | {x['save_s']:.4f}"
            f" | {_fmt(x['save_entries_per_s'])} | {x['restore_s']:.4f}"
            f" | {_fmt(x['restore_entries_per_s'])} | {_fmt(x['map_commands_per_s'])}"
            f" | {'yes' if x['restored_ok'] else 'NO'} |"
            for x in b.its
        ],
        "",
        *its_growth(b.its),
        "",
        "## Full migration by mapped ITEs",
        "",
        *_workload(b),
        "",
    ]
    proposals = [p for p in ALL_PROPOSALS if any(pt["proposal"] == p for pt in b.points)]
    by = {(pt["ites"], pt["proposal"]): pt for pt in b.points}
    cores = f"{b.jobs} {'core' if b.jobs == 1 else 'cores'}"
    lines += [
        "| ITEs | "
        + " | ".join(f"`{p}` s" for p in proposals)
        + f" | sum s | all on {cores} s | peak MiB |",
        "|---:|" + "---:|" * (len(proposals) + 3),
    ]
    totals = []
    for ites in b.sizes:
        row = [by[(ites, p)] for p in proposals]
        total = sum(pt["wall_s"] for pt in row)
        totals.append(total)
        peak = max(pt["peak_rss_mib"] for pt in row)
        broken = "" if all(pt["translations_ok"] for pt in row) else " (translations BROKEN)"
        lines.append(
            f"| {ites:,}{broken} | "
            + " | ".join(f"{pt['wall_s']:.2f}" for pt in row)
            + f" | {total:.2f} | {b.batch_wall[ites]:.2f} | {peak:.0f} |"
        )
    fit_sizes = [s for s in b.sizes if s >= 10_000] or b.sizes
    lines += [
        "",
        "Each proposal's time is one run (guest boot, device bring-up, MSIs, affinity moves,"
        " the migration, the checks) in a fresh process, "
        + (
            "forked from a server that has imported pkvm-sim and nothing more, and gone"
            " once measured (no interpreter start, imports or teardown per run)"
            if POINT_START == "forkserver"
            else "a spawned interpreter"
        )
        + f"; *sum* is what they cost one after another, *all on {cores}* the wall time of"
        f" running them {b.jobs} at a time, the longest (at the size before) first (process"
        " start-up included); peak memory is the largest run's peak RSS (interpreter and"
        " imports included).",
        "",
        "Fitted growth exponent k in wall ~ ITEs^k (least squares on log-log):",
        "",
    ]
    fit_from = f"{min(fit_sizes):,} to {max(fit_sizes):,} ITEs"
    for name, ys_of in [("sum of all proposals", None), *[(f"`{p}`", p) for p in proposals]]:
        ys = [
            totals[b.sizes.index(s)] if ys_of is None else by[(s, ys_of)]["wall_s"]
            for s in fit_sizes
        ]
        k = growth_exponent([float(s) for s in fit_sizes], ys)
        shown = f"{k:.2f}" if k is not None else "n/a (one point)"
        lines.append(f"- {name}, {fit_from}: k = {shown}")
    if len(b.sizes) >= 2:
        lo, hi = b.sizes[-2], b.sizes[-1]
        marginal = (totals[-1] - totals[-2]) / (hi - lo) / len(proposals) * 1e6
        lines += [
            "",
            f"From {lo:,} to {hi:,} ITEs each further ITE cost {marginal:.1f} us of"
            " wall time per proposal.",
        ]
        if b.driver == "bulk" and hi > MAX_ITES:
            lines[-1] += (
                " An ITE whose LPI is new costs more (KVM reads its property and pending"
                " bytes, the guest sends an INV) than one that shares an LPI, and only the"
                f" first {MAX_ITES:,} are new, so wall time grows more slowly than the ITE"
                " count from there."
            )
    top = max(b.sizes)
    peak = max(by[(top, p)]["peak_rss_mib"] for p in proposals)
    concurrent = min(b.jobs, len(proposals))
    lines += [
        "",
        "Targets: the first six proposals (`" + "`, `".join(FIRST_SIX) + "`) at"
        " 1,000,000 ITEs within 30 s on 2 cores and 1 GiB per run; k at most 1.1 from 10k"
        " ITEs up. Measured at"
        f" {top:,} ITEs:"
        + (
            f" the first six {b.six_wall:.1f} s on {cores} (a batch of their own);"
            if b.six_wall is not None
            else ""
        )
        + f" {len(proposals)} proposal{'s' if len(proposals) > 1 else ''}"
        f" {b.batch_wall[top]:.1f} s on {cores} ({totals[-1]:.1f} s one after another);"
        f" {concurrent} at once peaked at most {concurrent} x {peak:.0f} ="
        f" {concurrent * peak:.0f} MiB.",
        "",
        "## Reproduce",
        "",
        "```sh",
        command,
        "```",
        "",
    ]
    return "\n".join(lines)


def main_point() -> None:
    """One point, for profiling: ``python -m sim.bench ITES PROPOSAL [bulk|linux]``."""
    ites, proposal, *driver = sys.argv[1:]
    print(_point(int(ites), driver[0] if driver else "bulk", proposal))


if __name__ == "__main__":  # pragma: no cover
    main_point()
