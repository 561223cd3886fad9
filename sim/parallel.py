"""Independent simulations in worker processes, merged in a fixed order.

A :class:`Job` is one unit of work: a module-level function and its arguments (a spawned
worker imports the function by name and unpickles the arguments, so both must be
picklable). :func:`run_jobs` runs a list of them, ``workers`` at a time, and returns their
results in the order of the list, whatever order they finish in: the same jobs give the
same results, byte for byte, on one core or many. A job kind is any such function, so a
new kind of cell (another seed, another host) is a new job, not a new runner.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Job:
    fn: Callable[..., Any]  # a module-level function (spawn-safe)
    args: tuple = ()
    cost: float = 1.0  # expected run time, relative: the costliest start first


def default_workers() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def call(fn: Callable[..., Any], args: tuple) -> Any:
    """``fn(*args)`` with the cyclic garbage collector paused until it returns.

    A job builds a world of millions of objects, held in reference cycles, and drops it
    when it returns. Collecting while it runs (after the run itself, which pauses the
    collector, sim.run.gc_paused) rescans the live world and promotes it, so that a later,
    older collection scans it again to free it; paused to the end, the world is garbage
    by the first collection, which frees it in one pass."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return fn(*args)
    finally:
        if enabled:
            gc.enable()


# What this process handles for its workers: Ctrl-C and SIGTERM end them all (cli.py).
_HELD = {signal.SIGINT, signal.SIGTERM}


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` spawned processes (sharing nothing with this one: no forked threads or
    state) that leave SIGINT and SIGTERM to this process. Submit the first jobs, which
    start them, inside :func:`signals_held`; end them with :func:`stop_workers`."""
    ctx = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_signals)


def _worker_signals() -> None:
    """In a worker, once started: a Ctrl-C to the process group is the parent's to handle
    (ignored here), and the signals it was started with held are let through."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while worker processes start. One arriving mid-start would
    stop this process halfway through handing a worker its start-up data, and the worker
    would die printing its own traceback; held, it is raised here once they have started.
    The workers inherit the mask, and hold both until :func:`_worker_signals`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """End ``pool``'s workers now, not after their current jobs (SIGKILL: a worker still
    starting holds SIGTERM), then wait for the pool's manager thread, which sees them gone
    at once. Left running, it would close its wake-up pipe while the interpreter's exit
    writes to it (Python 3.11 checks the pipe, then writes, unlocked), printing a "Bad
    file descriptor" traceback after the one line the command prints."""
    for process in list((pool._processes or {}).values()):
        process.kill()
    pool.shutdown(wait=True, cancel_futures=True)


_kept: dict[int, ProcessPoolExecutor] | None = None  # workers -> pool, in workers_kept()


@contextmanager
def workers_kept() -> Iterator[None]:
    """Inside, :func:`run_jobs` keeps its worker processes for the next call rather than
    ending them, one pool per number of workers: a command that runs its jobs in phases
    (compare: the runs, the replay twins, the kernel events, the cost ranges, the charts)
    starts its workers once, not once a phase. Each job still gets only its arguments
    (:func:`call`). Left by an exception, the workers are ended at once."""
    global _kept
    if _kept is not None:  # (nested: the outer one keeps them)
        yield
        return
    _kept = {}
    try:
        yield
    except BaseException:
        for pool in _kept.values():
            stop_workers(pool)
        raise
    else:
        for pool in _kept.values():
            pool.shutdown(wait=True)
    finally:
        _kept = None


def _pool(workers: int, nr_jobs: int) -> ProcessPoolExecutor:
    """A pool for ``nr_jobs`` jobs on ``workers`` processes: a kept one (as many as
    ``workers``, whatever later calls bring) or one of its own (no more than the jobs)."""
    if _kept is None:
        return worker_pool(min(workers, nr_jobs))
    if workers not in _kept:
        _kept[workers] = worker_pool(workers)
    return _kept[workers]


def run_jobs(
    jobs: Sequence[Job], workers: int | None = None, advance: Callable[[], None] = lambda: None
) -> list[Any]:
    """``[job.fn(*job.args) for job in jobs]``, ``workers`` processes at a time.

    With one worker (or one job) everything runs here, in this process. Otherwise a
    pool of spawned processes runs them, costliest first; ``advance()`` is called here
    as each finishes. A job's exception is raised here, after the pool is shut down."""
    workers = default_workers() if workers is None else workers
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for job in jobs:
            out.append(call(job.fn, job.args))
            advance()
        return out
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i].cost)  # stable: ties by index
    results: list[Any] = [None] * len(jobs)
    pool = _pool(workers, len(jobs))
    try:
        # At most a few jobs queued per worker: the pool hands each to the next free one.
        pending: dict[Future, int] = {}
        todo = iter(order)
        with signals_held():  # the first submissions start the workers
            for i in todo:
                pending[pool.submit(call, jobs[i].fn, jobs[i].args)] = i
                if len(pending) >= 4 * workers:
                    break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                results[pending.pop(future)] = future.result()
                advance()
                nxt = next(todo, None)
                if nxt is not None:
                    pending[pool.submit(call, jobs[nxt].fn, jobs[nxt].args)] = nxt
    except BaseException:  # interrupted, or a job failed
        stop_workers(pool)
        if _kept is not None:
            _kept.pop(workers, None)
        raise
    if _kept is None:
        pool.shutdown(wait=True)
    return results
