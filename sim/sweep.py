"""Parameter sweeps: a scenario's fields varied over a cross product, every cell one run.

A cell is (variant, seed, proposal). Cells run in-process, on a local process pool, or on
a Dask distributed cluster; every cell is a pure function of its scenario and proposal
(the world draws from streams seeded by the scenario), and results are sorted by cell
key, so the table is the same whatever ran it and in whatever order.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import re
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


def _local(todo: list[tuple[Cell, Scenario]], jobs: int, tick: Progress) -> list[dict]:
    if jobs == 1:
        out = []
        for cell, scenario in todo:
            out.append(run_cell(scenario, cell.proposal))
            tick()
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # Spawned workers share nothing with this process (no forked threads or state).
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {
            pool.submit(run_cell, scenario, cell.proposal): i
            for i, (cell, scenario) in enumerate(todo)
        }
        results: list[dict | None] = [None] * len(todo)
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            tick()
    return results  # type: ignore[return-value]


def _dask(todo: list[tuple[Cell, Scenario]], address: Any, tick: Progress) -> list[dict]:
    try:
        from distributed import Client, as_completed
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
    try:
        futures = client.map(
            run_cell,
            [scenario for _, scenario in todo],
            [cell.proposal for cell, _ in todo],
            key=[f"pkvm-sim-cell-{i}-{os.getpid()}" for i in range(len(todo))],
            pure=False,
        )
        for _ in as_completed(futures):
            tick()
        return client.gather(futures)
    finally:
        if own:
            client.close()


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
) -> Sweep:
    """Run every cell; ``progress(total)`` returns a tick called as each cell finishes."""
    if seeds < 1:
        raise SweepError(f"--seeds: expected at least 1, got {seeds}")
    vs = variants(base, varies)
    todo = cells(vs, seeds)
    tick = progress(len(todo)) if progress else (lambda: None)
    if dask is not None:
        metrics = _dask(todo, dask, tick)
    else:
        metrics = _local(todo, min(jobs or os.cpu_count() or 1, len(todo)) or 1, tick)
    by_variant = {v.index: v for v in vs}
    rows = []
    for (cell, scenario), m in sorted(
        zip(todo, metrics, strict=True), key=lambda pair: pair[0][0].key
    ):
        row: dict[str, Any] = {"scenario": scenario.name}
        row.update(dict(by_variant[cell.variant].values))
        row.update({"seed": cell.seed, "proposal": cell.proposal})
        row.update(m)
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
    ("exposure.peak_exposed_bytes", "peak exposed bytes (symlog)", True),
]


def _slug(field: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", field).strip("-")


def write_charts(sweep: Sweep, out: Path) -> list[Path]:
    """Per varied field: each metric against it, a line per proposal (mean over seeds and
    the other varied fields)."""
    import matplotlib as mpl
    from matplotlib.figure import Figure

    from sim.report.charts import COLOURS, STYLE

    paths = []
    proposals = [p for p in ALL_PROPOSALS if any(r["proposal"] == p for r in sweep.rows)]
    for field in sweep.fields:
        xs = list(dict.fromkeys(r[field] for r in sweep.rows))
        numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
        xs = sorted(xs) if numeric else xs
        pos = xs if numeric else list(range(len(xs)))
        with mpl.rc_context(STYLE):
            fig = Figure(figsize=(8, 2.0 * len(CHART_METRICS) + 1.4), layout="constrained")
            axes = fig.subplots(len(CHART_METRICS), 1, squeeze=False, sharex=True)[:, 0]
            for ax, (metric, label, log) in zip(axes, CHART_METRICS, strict=True):
                for proposal in proposals:
                    ys = []
                    for x in xs:
                        vals = [
                            r[metric]
                            for r in sweep.rows
                            if r["proposal"] == proposal and r[field] == x
                        ]
                        ys.append(sum(vals) / len(vals) if vals else math.nan)
                    colour = COLOURS[ALL_PROPOSALS.index(proposal) % len(COLOURS)]
                    ax.plot(pos, ys, marker="o", ms=3, label=proposal, color=colour)
                ax.set_ylabel(label)
                if log:
                    ax.set_yscale("symlog", linthresh=1)
            if not numeric:
                axes[-1].set_xticks(pos, [str(x) for x in xs])
            axes[-1].set_xlabel(field)
            fig.suptitle(f"{sweep.rows[0]['scenario']}: metrics against {field}")
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=7)
            path = out / f"vs-{_slug(field)}.png"
            fig.savefig(path, metadata={"Software": None})
        paths.append(path)
    return paths


def write_all(sweep: Sweep, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(sweep, out / "sweep.csv")
    write_parquet(sweep, out / "sweep.parquet")
    return [out / "sweep.csv", out / "sweep.parquet", *write_charts(sweep, out)]


def varies_from(args: Iterable[str]) -> list[Vary]:
    return [parse_vary(a) for a in args]
