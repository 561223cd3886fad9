"""Shared pieces of the command-line tests: paths, a small filesystem, each test its own
sweep cache (``tiny`` and ``own_cache`` are in tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"


@pytest.fixture(autouse=True)
def _own_cache(own_cache: Path) -> Path:
    """Every command-line test its own sweep cache (tests/conftest.py)."""
    return own_cache


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
