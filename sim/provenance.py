"""What produced an output: tool version, git commit, cost model and scenarios as loaded.

Every JSON output carries :func:`provenance` under ``"provenance"``; charts and tables
name the cost model with :func:`describe_costs`.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

from sim.costs import CostModel

PACKAGE = Path(__file__).resolve().parent


def version() -> str:
    """The installed distribution's version (``sim.__version__`` where it exists)."""
    import sim

    own = getattr(sim, "__version__", None)
    if own:
        return str(own)
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("pkvm-sim")
    except PackageNotFoundError:
        return "unknown"


@functools.cache
def git_commit() -> str | None:
    """HEAD of the checkout this package runs from, or None (installed copy, no git)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(PACKAGE), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    # A copy installed into a virtualenv inside some checkout is not that checkout.
    if len(out) != 2 or Path(out[0]).resolve() != PACKAGE.parent:
        return None
    return out[1]


def provenance(scenarios: list | None = None, overrides: list[str] | None = None) -> dict:
    """Tool, version, commit; each scenario as loaded and its resolved cost model."""
    scenarios = scenarios or []
    return {
        "tool": "pkvm-sim",
        "version": version(),
        "git_commit": git_commit(),
        "overrides": list(overrides or []),
        "scenarios": [s.model_dump(mode="json") for s in scenarios],
        "cost_model": {s.name: s.costs.model_dump(mode="json") for s in scenarios},
    }


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe_overrides(overrides: dict[str, Any]) -> list[str]:
    """``["tlbi_us = 2 us (default 1)", ...]`` for the fields a scenario overrides."""
    fields = CostModel.model_fields
    out = []
    for name, value in sorted(overrides.items()):
        field = fields.get(name)
        extra = field.json_schema_extra if field is not None else None
        unit = extra.get("unit", "") if isinstance(extra, dict) else ""
        default = f" (default {_number(field.default)})" if field is not None else ""
        out.append(f"{name} = {_number(value)}{' ' + unit if unit else ''}{default}")
    return out


def describe_costs(overrides: dict[str, Any]) -> str:
    """The cost model in words: the defaults, and any field a scenario overrides."""
    if not overrides:
        return "sim/costs.py defaults"
    return "sim/costs.py defaults except " + ", ".join(describe_overrides(overrides))


@functools.cache
def code_hash() -> str:
    """SHA-256 over the package's Python sources: what a cached result depends on."""
    import hashlib

    digest = hashlib.sha256(version().encode())
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
