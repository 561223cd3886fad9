"""Shared by the tests: a tiny scenario, a sweep cache of a test's own, and Ctrl-C."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

# A shell starts a background job (`cmd &`, nohup) with SIGINT ignored, and Python then
# installs no KeyboardInterrupt handler; the interrupt tests need Ctrl-C to arrive, here and
# in the commands they start (exec resets a handled signal, not an ignored one).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch) -> Path:
    """Each test its own sweep cache (never the user's); matplotlib keeps its own."""
    import matplotlib

    cache = tmp_path / "cache"
    monkeypatch.setenv("MPLCONFIGDIR", os.environ.get("MPLCONFIGDIR") or matplotlib.get_cachedir())
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache
