"""`pkvm-sim sweep`: the cross product, the tidy table, the same results on every executor,
and clear errors on bad --vary input."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sim.cli import main
from sim.scenario import load_scenario
from sim.sweep import parse_vary, run_sweep
from tests.conftest import TINY

VARY = ["--vary", "guest.secret_density=0,0.5", "--vary", "devices[0].vectors=3,7"]
PROPOSALS = ["trusted-host", "share-host-claims"]
pytestmark = pytest.mark.usefixtures("own_cache")  # (tests/conftest.py)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_sweep_writes_one_row_per_cell_in_csv_parquet_and_charts(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", str(tiny), *VARY, "--seeds", "2", "--jobs", "1", "--out", str(out)]) == 0
    assert "16 runs (4 variants x 2 seeds" in capsys.readouterr().out
    rows = read_csv(out / "sweep.csv")
    assert len(rows) == 2 * 2 * 2 * 2
    cols = list(rows[0])
    assert cols[:5] == [
        "scenario",
        "guest.secret_density",
        "devices[0].vectors",
        "seed",
        "proposal",
    ]
    for metric in (
        "exposure.peak_exposed_bytes",
        "costs.its_downtime_ms",
        "costs.hypercalls",
        "correctness.translations_preserved",
    ):
        assert metric in cols
    cells = {
        (r["guest.secret_density"], r["devices[0].vectors"], r["seed"], r["proposal"]) for r in rows
    }
    assert cells == {
        (d, v, s, p)
        for d in ("0.0", "0.5")
        for v in ("3", "7")
        for s in ("3", "4")
        for p in PROPOSALS
    }
    assert all(r["correctness.translations_preserved"] == "True" for r in rows)
    # The varied field reaches the model: 7 vectors on net0 means 9 translations, not 5.
    assert {r["devices[0].vectors"]: r["correctness.expected_translations"] for r in rows} == {
        "3": "5",
        "7": "9",
    }
    table = pq.read_table(out / "sweep.parquet")
    assert table.num_rows == len(rows) and table.column_names == cols
    assert table.column("seed").to_pylist() == [int(r["seed"]) for r in rows]
    assert table.column("guest.secret_density").type == "double"
    for chart in ("vs-guest-secret-density.png", "vs-devices-0-vectors.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_is_the_same_in_process_and_on_two_workers(tiny, tmp_path, capsys):
    outs = []
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        argv = ["sweep", str(tiny), *VARY, "--jobs", jobs, "--out", str(out), "--no-cache"]
        assert main(argv) == 0
        outs.append(out)
    assert (outs[0] / "sweep.csv").read_text() == (outs[1] / "sweep.csv").read_text()
    assert pq.read_table(outs[0] / "sweep.parquet").equals(pq.read_table(outs[1] / "sweep.parquet"))


def test_sweep_on_a_dask_cluster_equals_the_local_run(tiny):
    distributed = pytest.importorskip("distributed")
    scenario = load_scenario(tiny)
    varies = [parse_vary("guest.allocator=linux-kzalloc,linux-shared-pool")]
    local = run_sweep(scenario, varies, seeds=2, jobs=1)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        remote = run_sweep(scenario, varies, seeds=2, dask=client)
        # The command line's path: a scheduler address, as a user with a cluster gives it.
        by_address = run_sweep(scenario, varies, seeds=2, dask=cluster.scheduler_address)
    assert len(local.rows) == 2 * 2 * 2
    assert remote.rows == local.rows
    assert by_address.rows == local.rows


@pytest.mark.parametrize(
    ("vary", "message"),
    [
        ("guest.secret_densty=0.1", "guest has no field 'secret_densty' (it has: ram_mib"),
        (
            "guest.secret_density=0.1,2",
            "guest.secret_density: Input should be less than or equal to 1, got 2",
        ),
        ("devices[0].vectors=x", "devices[0].vectors: Input should be a valid integer"),
        ("devices[4].vectors=3", "devices has 2 entries (0..1)"),
        ("guest.allocator=slab", "guest.allocator: Input should be 'linux-kzalloc' or"),
        ("migration.at_ms=9", "migration.at_ms: expected a time before workload.duration_ms"),
        ("guest", "expected FIELD=V1,V2,..."),
        ("guest=1", "expected a field holding one value"),
        ("seed=1,2", "seeds are swept with --seeds N"),
        ("guest..vcpus=2", "expected a dotted field path"),
    ],
)
def test_bad_vary_exits_2_naming_the_field_and_writes_nothing(
    tiny, tmp_path, capsys, vary, message
):
    out = tmp_path / "never"
    assert main(["sweep", str(tiny), "--vary", vary, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert str(tiny) in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "0"], "--seeds: expected at least 1"),
        (["--jobs", "0"], "--jobs: expected at least 1"),
        (["--jobs", "2", "--dask", "tcp://127.0.0.1:1"], "--jobs and --dask"),
    ],
)
def test_bad_options_exit_2(tiny, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["sweep", str(tiny), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_scenario_file_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(TINY.replace("vcpus: 2", "vcpus: 0"))
    with pytest.raises(SystemExit) as exc:
        main(["sweep", str(path), "--vary", "guest.vcpus=1,2", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert f"{path}:4: guest.vcpus" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
