"""Shared pieces of the command-line tests: a tiny scenario, and a small filesystem."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"

TINY = """\
name: tiny
question: Does a sweep run?
seed: 3
guest: {ram_mib: 256, vcpus: 2}
devices:
  - {name: net0, device_id: 8, vectors: 3, rate_hz: 2000}
  - {name: blk0, device_id: 16, vectors: 2, rate_hz: 500}
workload: {duration_ms: 4, affinity_moves_per_s: 200}
migration: {at_ms: 2}
proposals: [trusted-host, share-host-claims]
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch) -> Path:
    """Each test its own sweep cache (never the user's); matplotlib keeps its own."""
    import matplotlib

    cache = tmp_path / "cache"
    monkeypatch.setenv("MPLCONFIGDIR", os.environ.get("MPLCONFIGDIR") or matplotlib.get_cachedir())
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


@pytest.fixture
def small_fs(tmp_path: Path):
    """Mount a tmpfs of the given size (KiB) and yield its path; skip where we may not."""
    mounted: list[Path] = []

    def mount(kib: int, *options: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small filesystem needs root")
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        opts = ",".join([f"size={kib}k", *options])
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], check=False
        )
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount_ro(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
