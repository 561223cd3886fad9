"""A sweep that loses its cluster says what was lost and how to resume; the cells that
finished are kept and not run again."""

from __future__ import annotations

import pytest

from sim.cli import main
from sim.scenario import load_scenario
from sim.sweep import CellCache, DaskLost, parse_vary, run_sweep

VARIES = ["guest.secret_density=0,0.5", "devices[0].vectors=3,7"]


def _varies():
    return [parse_vary(v) for v in VARIES]


def test_a_rerun_runs_only_the_cells_the_cache_lacks(tiny, tmp_path, monkeypatch):
    import sim.sweep

    scenario = load_scenario(tiny)
    cache = CellCache(tmp_path / "cells")
    first = run_sweep(scenario, _varies(), jobs=1, cache=cache)
    assert len(list(cache.directory.iterdir())) == len(first.rows) == 8
    # Drop three cells, as if the run had been lost before they finished.
    for path in sorted(cache.directory.iterdir())[:3]:
        path.unlink()
    calls = []
    real = sim.sweep.run_cell
    monkeypatch.setattr(sim.sweep, "run_cell", lambda s, p: calls.append(p) or real(s, p))
    again = run_sweep(scenario, _varies(), jobs=1, cache=cache)
    assert len(calls) == 3
    assert again.rows == first.rows
    # A changed scenario is a different cell: nothing reused.
    changed = scenario.model_copy(update={"seed": 99})
    calls.clear()
    run_sweep(changed, _varies(), jobs=1, cache=cache)
    assert len(calls) == 8


def test_the_cli_keeps_cells_between_runs_unless_told_not_to(tiny, tmp_path, own_cache, capsys):
    argv = ["sweep", str(tiny), "--vary", VARIES[0], "--jobs", "1", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    cells = own_cache / "pkvm-sim" / "sweep"
    assert len(list(cells.iterdir())) == 4
    assert main([*argv, "--no-cache", "--json", str(tmp_path / "s.json")]) == 0
    assert len(list(cells.iterdir())) == 4


def _cluster():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    )
    return distributed, cluster


def test_every_worker_gone_times_out_with_what_was_lost_and_resumes(tiny, tmp_path):
    distributed, cluster = _cluster()
    scenario = load_scenario(tiny)
    cache = CellCache(tmp_path / "cells")
    with cluster, distributed.Client(cluster) as client:

        def progress(total):
            done = []

            def tick():
                done.append(1)
                if len(done) == 1:  # the first cell finished: every worker goes
                    cluster.scale(0)

            return tick

        with pytest.raises(DaskLost) as exc:
            run_sweep(
                scenario,
                _varies(),
                dask=client,
                cache=cache,
                progress=progress,
                dask_worker_timeout=1.0,
            )
        message = str(exc.value)
        kept = len(list(cache.directory.iterdir()))
        assert 1 <= kept < 8
        assert f"no Dask worker alive at {cluster.scheduler_address} for 1 s" in message
        assert (
            f"{8 - kept} of 8 cells lost, the {kept} finished are kept in {cache.directory}"
            in message
        )
        assert "run the same command again" in message
        cluster.scale(1)
        resumed = run_sweep(scenario, _varies(), dask=client, cache=cache)
    assert resumed.rows == run_sweep(scenario, _varies(), jobs=1).rows


def test_a_dead_scheduler_is_a_message_not_a_dask_traceback(tiny, tmp_path, capsys):
    distributed, cluster = _cluster()
    scenario = load_scenario(tiny)
    cache = CellCache(tmp_path / "cells")
    with cluster, distributed.Client(cluster) as client:

        def progress(total):
            def tick():
                if cluster.status.name == "running":
                    cluster.close()

            return tick

        with pytest.raises(DaskLost) as exc:
            run_sweep(scenario, _varies(), dask=client, cache=cache, progress=progress)
    message = str(exc.value)
    assert "lost the Dask scheduler at" in message or "cancelled the sweep" in message
    assert "cells lost, the" in message and "kept in" in message


def test_a_sweep_writes_its_provenance(tiny, tmp_path, capsys):
    import json

    out = tmp_path / "o"
    assert main(["sweep", str(tiny), "--vary", VARIES[0], "--jobs", "1", "--out", str(out)]) == 0
    data = json.loads((out / "provenance.json").read_text())
    assert data["vary"] == [VARIES[0]] and data["seeds"] == 1
    assert data["scenarios"][0]["name"] == "tiny" and "tiny" in data["cost_model"]
