"""Parameter sweeps: a scenario's fields varied over a cross product, every cell one run.

A cell is (variant, seed, proposal). Cells run in-process, on a local process pool, or on
a Dask distributed cluster; every cell is a pure function of its scenario and proposal
(the world draws from streams seeded by the scenario), and results are sorted by cell
key, so the table is the same whatever ran it and in whatever order.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sim.scenario import ALL_PROPOSALS, Scenario

Path_ = tuple[str | int, ...]
_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


class SweepError(Exception):
    """Bad sweep input; the message names the --vary argument, the field and what was
    expected."""


# ---- --vary FIELD=V1,V2,... ---------------------------------------------------------------


def parse_path(field: str) -> Path_:
    """``devices[0].vectors`` -> ("devices", 0, "vectors")."""
    out: list[str | int] = []
    for part in field.split("."):
        if not part:
            raise SweepError(f"{field}: expected a dotted field path like guest.vcpus")
        p = 0
        while p < len(part):
            m = _TOKEN.match(part, p)
            if m is None or (p and m.group(1)):
                raise SweepError(
                    f"{field}: expected a dotted field path like guest.vcpus or devices[0].vectors"
                )
            out.append(m.group(1) if m.group(1) else int(m.group(2)))
            p = m.end()
    return tuple(out)


def _parse_value(text: str) -> Any:
    """A value as YAML reads a scalar: 2 -> int, 0.5 -> float, true -> bool, else str."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, dict | list) or value is None else value


@dataclass(frozen=True)
class Vary:
    field: str
    path: Path_
    values: tuple[Any, ...]


def parse_vary(arg: str) -> Vary:
    field, sep, values = arg.partition("=")
    field = field.strip()
    if not sep or not field or not values.strip():
        raise SweepError(f"--vary {arg!r}: expected FIELD=V1,V2,...")
    if field == "seed":
        raise SweepError(f"--vary {arg!r}: seeds are swept with --seeds N")
    raw = [v.strip() for v in values.split(",")]
    if any(not v for v in raw):
        raise SweepError(f"--vary {arg!r}: expected FIELD=V1,V2,... with no empty value")
    try:
        path = parse_path(field)
    except SweepError as exc:
        raise SweepError(f"--vary {arg!r}: {exc}") from None
    return Vary(field, path, tuple(_parse_value(v) for v in raw))


def _get(data: Any, path: Path_) -> Any:
    for key in path:
        data = data[key]
    return data


def _check_path(base: dict, vary: Vary) -> None:
    node: Any = base
    done = ""
    for key in vary.path:
        where = done or "the scenario"
        if isinstance(key, int):
            if not isinstance(node, list):
                raise SweepError(f"--vary {vary.field}: {where} is not a list")
            if key >= len(node):
                raise SweepError(
                    f"--vary {vary.field}: {where} has {len(node)} entries (0..{len(node) - 1})"
                )
            done += f"[{key}]"
        else:
            if not isinstance(node, dict) or key not in node:
                fields = ", ".join(node) if isinstance(node, dict) else ""
                has = f" (it has: {fields})" if fields else ""
                raise SweepError(f"--vary {vary.field}: {where} has no field {key!r}{has}")
            done += f".{key}" if done else key
        node = node[key]
    if isinstance(node, dict | list):
        raise SweepError(f"--vary {vary.field}: expected a field holding one value")


def _set(data: dict, path: Path_, value: Any) -> None:
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _validate(data: dict, what: str) -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        got = ""
        if "input" in err and not isinstance(err["input"], dict | list):
            got = f", got {err['input']!r}"
        field = f"{loc.lstrip('.')}: " if loc else ""
        raise SweepError(f"{what}: {field}{msg}{got}") from None


# ---- cells ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    index: int
    values: tuple[tuple[str, Any], ...]  # (field, value as the scenario holds it)
    scenario: Scenario


@dataclass(frozen=True)
class Cell:
    variant: int
    seed: int
    proposal: str

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.variant, self.seed, ALL_PROPOSALS.index(self.proposal))


def variants(base: Scenario, varies: list[Vary]) -> list[Variant]:
    """Every combination of the varied values, each validated as a whole scenario."""
    data = base.model_dump(mode="json")
    for vary in varies:
        _check_path(data, vary)
    fields = [v.field for v in varies]
    if len(set(fields)) != len(fields):
        raise SweepError("--vary: each field at most once")
    out = []
    for index, combo in enumerate(itertools.product(*(v.values for v in varies))):
        d = base.model_dump(mode="json")
        for vary, value in zip(varies, combo, strict=True):
            _set(d, vary.path, value)
        what = "--vary " + ", ".join(
            f"{v.field}={value}" for v, value in zip(varies, combo, strict=True)
        )
        scenario = _validate(d, what)
        dumped = scenario.model_dump(mode="json")
        values = tuple((v.field, _get(dumped, v.path)) for v in varies)
        out.append(Variant(index, values, scenario))
    return out


def cells(variants_: list[Variant], seeds: int) -> list[tuple[Cell, Scenario]]:
    out = []
    for variant in variants_:
        for seed in range(variant.scenario.seed, variant.scenario.seed + seeds):
            scenario = variant.scenario.model_copy(update={"seed": seed})
            for proposal in variant.scenario.proposals:
                out.append((Cell(variant.index, seed, proposal), scenario))
    return out


def flatten(result) -> dict[str, Any]:
    """The scalar metrics of a RunResult as exposure.*, costs.*, correctness.* columns."""
    row: dict[str, Any] = {}
    data = result.model_dump(mode="json")
    for part in ("exposure", "costs", "correctness"):
        for key, value in data[part].items():
            if isinstance(value, bool | int | float | str):
                row[f"{part}.{key}"] = value
            elif part == "correctness" and isinstance(value, list | dict):
                row[f"{part}.{key}_count"] = len(value)
    return row


def run_cell(scenario: Scenario, proposal: str) -> dict[str, Any]:
    """One run; top-level so process pools and Dask workers can pickle it."""
    from sim.run import run

    return flatten(run(scenario, proposal))


# ---- executors ------------------------------------------------------------------------------

Progress = Callable[[], None]
Done = Callable[[int, dict], None]  # (index into todo, metrics) as each cell finishes

DASK_POLL_S = 1.0
DASK_WORKER_TIMEOUT_S = 60.0  # how long a sweep waits with no Dask worker alive


def _local(todo: list[tuple[Cell, Scenario]], jobs: int, done: Done) -> None:
    if jobs == 1:
        for i, (cell, scenario) in enumerate(todo):
            done(i, run_cell(scenario, cell.proposal))
        return
    from concurrent.futures import as_completed

    from sim.parallel import signals_held, stop_workers, worker_pool

    pool = worker_pool(jobs)
    try:
        with signals_held():  # the submissions start the workers
            futures = {
                pool.submit(run_cell, scenario, cell.proposal): i
                for i, (cell, scenario) in enumerate(todo)
            }
        for future in as_completed(futures):
            done(futures[future], future.result())
    except BaseException:
        # Interrupted (SIGINT, SIGTERM) or a cell failed: end the workers now rather than
        # let them finish the queue; the resource tracker ends with this process.
        stop_workers(pool)
        raise
    pool.shutdown()


class DaskLost(SweepError):
    """The cluster went away mid-sweep; the message says what was lost."""


def _dask(
    todo: list[tuple[Cell, Scenario]],
    address: Any,
    done: Done,
    worker_timeout: float = DASK_WORKER_TIMEOUT_S,
) -> None:
    try:
        from distributed import Client, wait
    except ImportError:
        raise SweepError(
            "--dask needs Dask distributed: pip install 'pkvm-sim[cluster]'"
            " (or 'dask[distributed]')"
        ) from None
    client = address if isinstance(address, Client) else None
    own = client is None
    if own:
        try:
            client = Client(address, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise SweepError(f"--dask {address}: cannot connect: {exc}") from None
    where = address if own else getattr(client.scheduler, "address", "the Dask scheduler")
    token = uuid.uuid4().hex

    def lost(exc: BaseException) -> DaskLost:
        return DaskLost(f"lost the Dask scheduler at {where}: {type(exc).__name__}: {exc}")

    try:
        futures = client.map(
            run_cell,
            [scenario for _, scenario in todo],
            [cell.proposal for cell, _ in todo],
            # Unique per sweep: a key the scheduler still holds from an earlier sweep on
            # the same client would hand back that sweep's result for another cell.
            key=[f"pkvm-sim-cell-{i}-{token}" for i in range(len(todo))],
            pure=False,
        )
        index = {f.key: i for i, f in enumerate(futures)}
        pending = set(futures)
        alone_since: float | None = None
        while pending:
            try:
                ready, pending = wait(pending, timeout=DASK_POLL_S, return_when="FIRST_COMPLETED")
            except TimeoutError:
                ready = set()
            except Exception as exc:  # the scheduler's comm closed
                raise lost(exc) from None
            for future in ready:
                if future.status == "cancelled":
                    raise DaskLost(f"the Dask scheduler at {where} cancelled the sweep's cells")
                if future.status == "error":
                    error = future.exception()
                    if type(error).__name__ == "KilledWorker":
                        raise DaskLost(f"a cell killed every worker it ran on at {where}: {error}")
                    raise error  # the cell itself failed: a bug, with its traceback
                try:
                    # Done, but its result lived on a worker that has since gone: Dask
                    # recomputes it when a worker comes back, so it is pending again.
                    result = future.result(timeout=DASK_POLL_S)
                except TimeoutError:
                    pending.add(future)
                    continue
                done(index[future.key], result)
            if not pending:
                break
            try:
                running = client.status == "running"
                workers = len(client.scheduler_info().get("workers", {})) if running else 0
            except Exception as exc:  # the scheduler is gone
                raise lost(exc) from None
            if not running:
                raise DaskLost(f"lost the Dask scheduler at {where} (client {client.status})")
            if workers:
                alone_since = None
            elif alone_since is None:
                alone_since = time.monotonic()
            elif time.monotonic() - alone_since > worker_timeout:
                raise DaskLost(f"no Dask worker alive at {where} for {worker_timeout:g} s")
    finally:
        if own:
            with contextlib.suppress(Exception):
                client.close(timeout=5)


# ---- the cache of finished cells ---------------------------------------------------------


class CellCache:
    """Finished cells on disk, one JSON file each, keyed by the cell's scenario, proposal
    and the simulator's code: a rerun after an interruption (or a lost cluster) runs only
    what is missing."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(scenario: Scenario, proposal: str) -> str:
        import hashlib

        from sim.provenance import code_hash

        text = f"{code_hash()}\n{proposal}\n{scenario.model_dump_json()}"
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, scenario: Scenario, proposal: str) -> dict | None:
        import json

        path = self.directory / f"{self.key(scenario, proposal)}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def put(self, scenario: Scenario, proposal: str, metrics: dict) -> None:
        import json

        from sim.output import write_text

        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.key(scenario, proposal)}.json"
        write_text(path, json.dumps(metrics, sort_keys=True), "sweep cache")


@dataclass
class Sweep:
    fields: list[str]
    rows: list[dict[str, Any]]


def run_sweep(
    base: Scenario,
    varies: list[Vary],
    *,
    seeds: int = 1,
    jobs: int | None = None,
    dask: Any = None,
    progress: Callable[[int], Progress] | None = None,
    cache: CellCache | None = None,
    dask_worker_timeout: float = DASK_WORKER_TIMEOUT_S,
) -> Sweep:
    """Run every cell; ``progress(total)`` returns a tick called as each cell finishes.

    With a ``cache``, cells found there are not run again, and each cell is stored as it
    finishes; if the run is lost midway (:class:`DaskLost`, an interrupt), what finished
    is kept for the next run.
    """
    if seeds < 1:
        raise SweepError(f"--seeds: expected at least 1, got {seeds}")
    vs = variants(base, varies)
    cells_ = cells(vs, seeds)
    tick = progress(len(cells_)) if progress else (lambda: None)
    metrics: list[dict | None] = [None] * len(cells_)
    if cache is not None:
        for i, (cell, scenario) in enumerate(cells_):
            metrics[i] = cache.get(scenario, cell.proposal)
            if metrics[i] is not None:
                tick()
    missing = [i for i, m in enumerate(metrics) if m is None]
    todo = [cells_[i] for i in missing]

    def done(j: int, m: dict) -> None:
        metrics[missing[j]] = m
        if cache is not None:
            cell, scenario = todo[j]
            cache.put(scenario, cell.proposal, m)
        tick()

    try:
        if not todo:
            pass
        elif dask is not None:
            _dask(todo, dask, done, dask_worker_timeout)
        else:
            _local(todo, min(jobs or os.cpu_count() or 1, len(todo)) or 1, done)
    except DaskLost as exc:
        have = sum(m is not None for m in metrics)
        kept = (
            f"the {have} finished are kept in {cache.directory}; start workers and run the"
            " same command again to run only the rest"
            if cache is not None
            else "nothing was kept (no cache); run again"
        )
        raise DaskLost(f"{exc}: {len(cells_) - have} of {len(cells_)} cells lost, {kept}") from None
    by_variant = {v.index: v for v in vs}
    rows = []
    for (cell, scenario), m in sorted(
        zip(cells_, metrics, strict=True), key=lambda pair: pair[0][0].key
    ):
        row: dict[str, Any] = {"scenario": scenario.name}
        row.update(dict(by_variant[cell.variant].values))
        row.update({"seed": cell.seed, "proposal": cell.proposal})
        row.update(m or {})
        rows.append(row)
    return Sweep([v.field for v in varies], rows)


# ---- output ---------------------------------------------------------------------------------


def write_csv(sweep: Sweep, path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(sweep.rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(sweep.rows)


PARQUET_MISSING = (
    "sweep.parquet needs pyarrow, in the sweep extra: pip install 'pkvm-sim[sweep]'"
    " (sweep.csv needs nothing more)"
)


def parquet_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


def write_parquet(sweep: Sweep, path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SweepError(PARQUET_MISSING) from None

    pq.write_table(pa.Table.from_pylist(sweep.rows), path)


CHART_METRICS = [
    ("costs.its_downtime_ms", "ITS downtime (ms)", False),
    ("costs.hypercalls", "hypercalls", False),
    ("costs.pages_shared", "pages shared", False),
    ("exposure.peak_exposed_bytes", "peak secret B exposed", True),  # drawn on a log scale
]


def _slug(field: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", field).strip("-")


def write_charts(sweep: Sweep, out: Path) -> list[Path]:
    """Per varied field: each metric against it per proposal, each point the mean over
    the seeds and the other varied fields, with the least to greatest run
    (sim/report/sweepchart.py; categorical fields as categories)."""
    from sim.report.sweepchart import figure

    paths = []
    for field in sweep.fields:
        fig = figure(sweep.rows, sweep.fields, field, CHART_METRICS)
        path = out / f"vs-{_slug(field)}.png"
        fig.savefig(path, metadata={"Software": None})
        paths.append(path)
    return paths


def write_all(sweep: Sweep, out: Path, provenance: dict | None = None) -> list[Path]:
    """The table and charts (and ``provenance.json``), built beside ``out`` and swapped
    in whole (sim/output.py)."""
    from sim.output import report_dir, write_json

    with report_dir(out, "--out") as staging:
        write_csv(sweep, staging / "sweep.csv")
        write_parquet(sweep, staging / "sweep.parquet")
        charts = write_charts(sweep, staging)
        if provenance is not None:
            write_json(staging / "provenance.json", provenance, "--out")
    names = ["sweep.csv", "sweep.parquet", *(c.name for c in charts)]
    return [out / name for name in [*names, *(["provenance.json"] if provenance else [])]]


def varies_from(args: Iterable[str]) -> list[Vary]:
    return [parse_vary(a) for a in args]
