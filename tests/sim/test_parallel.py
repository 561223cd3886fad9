"""sim.parallel and `compare --jobs`: the same results in the same order on any number of
processes."""

from __future__ import annotations

import os
import signal

import pytest

from sim.cli import main
from sim.parallel import Job, default_workers, run_jobs, signals_held, stop_workers, worker_pool


def square_plus(x: int, y: int = 0) -> int:
    return x * x + y + os.getpid() * 0  # runs in a worker; the pid does not leak out


def fail_on(x: int) -> int:
    if x == 3:
        raise ValueError(f"job {x} failed")
    return x


def test_run_jobs_keeps_the_job_order_on_any_number_of_workers():
    jobs = [Job(square_plus, (i, 1), cost=float(i % 5)) for i in range(23)]
    expected = [i * i + 1 for i in range(23)]
    ticks = []
    assert run_jobs(jobs, 1, lambda: ticks.append(1)) == expected
    assert len(ticks) == 23
    assert run_jobs(jobs, 2, lambda: ticks.append(2)) == expected
    assert ticks.count(2) == 23
    assert default_workers() >= 1


def test_a_failing_job_raises_its_error_here():
    with pytest.raises(ValueError, match="job 3 failed"):
        run_jobs([Job(fail_on, (i,)) for i in range(6)], 2)
    with pytest.raises(ValueError, match="job 3 failed"):
        run_jobs([Job(fail_on, (i,)) for i in range(6)], 1)


def test_compare_writes_the_same_bytes_with_one_or_two_jobs(tmp_path, scenarios_dir):
    trees = []
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        argv = [
            "compare",
            str(scenarios_dir / "small-vm.yaml"),
            str(scenarios_dir / "dma-attack.yaml"),
        ]
        assert main([*argv, "--jobs", str(jobs), "--out", str(out), "--name", "x"]) == 0
        trees.append({p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    assert len(trees[0]) >= 8
    assert trees[0] == trees[1]


def test_compare_refuses_jobs_below_one(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--jobs", "0"])
    assert exc.value.code == 2
    assert "--jobs: expected at least 1, got 0" in capsys.readouterr().err


@pytest.fixture
def scenarios_dir():
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "scenarios"


def _signal_state() -> tuple[bool, list[int]]:
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN, sorted(int(s) for s in blocked)


def test_a_signal_while_workers_start_is_held_then_raised():
    reached = False
    with pytest.raises(KeyboardInterrupt), signals_held():
        os.kill(os.getpid(), signal.SIGINT)
        reached = True  # held: not raised mid-start
    assert reached
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the mask is restored


def test_workers_leave_ctrl_c_to_the_parent_and_hold_nothing():
    pool = worker_pool(1)
    try:
        with signals_held():
            future = pool.submit(_signal_state)
        assert future.result() == (True, [])
        workers = list(pool._processes.values())
    finally:
        stop_workers(pool)
    assert len(workers) == 1 and not workers[0].is_alive()


def worker_pid(_: int) -> int:
    return os.getpid()


def test_kept_workers_serve_every_phase_and_end_with_it():
    from sim import parallel

    phases = [[Job(worker_pid, (i,)) for i in range(6)] for _ in range(3)]
    with parallel.workers_kept():
        pids = [set(run_jobs(jobs, 2)) for jobs in phases]
        (pool,) = parallel._kept.values()
        workers = list(pool._processes.values())
    assert pids[0] == pids[1] == pids[2] and os.getpid() not in pids[0]
    assert len(workers) == 2 and not any(w.is_alive() for w in workers)
    assert parallel._kept is None
    # without it, each call starts workers of its own
    assert set(run_jobs(phases[0], 2)).isdisjoint(run_jobs(phases[1], 2))


def test_kept_workers_end_at_once_when_a_phase_fails():
    from sim import parallel

    with pytest.raises(ValueError, match="job 3 failed"), parallel.workers_kept():
        run_jobs([Job(worker_pid, (i,)) for i in range(4)], 2)
        (pool,) = parallel._kept.values()
        workers = list(pool._processes.values())
        run_jobs([Job(fail_on, (i,)) for i in range(6)], 2)
    assert not any(w.is_alive() for w in workers)
    assert parallel._kept is None
