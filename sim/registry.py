"""Plugins: proposals and host behaviours from other installed packages, found by entry point.

A package extends pkvm-sim without forking it by declaring entry points
(importlib.metadata); the entry point's name is the name scenarios use::

    [project.entry-points."pkvm_sim.proposals"]
    my-proposal = "my_pkg.proposal:MyProposal"  # a sim.proposals.base.Proposal subclass

    [project.entry-points."pkvm_sim.behaviours"]
    my-attack = "my_pkg.attack:MyAttack"  # a sim.attacks.Behaviour subclass

A proposal class sets ``name`` (the entry point's name) and ``summary``. A behaviour class
sets ``kind`` (the entry point's name) and ``spec``: the pydantic model of its entry in a
scenario's ``host.behaviours``, a :class:`Spec` with ``kind: Literal["my-attack"]`` and its
parameters, each with a default and bounds (one docstring line: what the host does); each
instance's ``self.spec`` is then the validated entry, as for the built-ins.

Built-ins stay where they are (``sim.proposals.PROPOSALS``, ``sim.scenario.ATTACK_SPECS``
and the classes in ``sim.attacks``); plugins are loaded once, when ``sim.proposals`` and
``sim.scenario`` are first imported, and merged after them. A plugin that fails to load,
or clashes with a name already taken, is left out and named in :func:`plugin_errors`
(the command line prints each as a warning).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic import BaseModel, ConfigDict

PROPOSAL_GROUP = "pkvm_sim.proposals"
BEHAVIOUR_GROUP = "pkvm_sim.behaviours"


class Spec(BaseModel):
    """The base of a behaviour's scenario entry: unknown keys refused, values frozen, every
    float finite (as every scenario field)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Plugin:
    """Where a registered name comes from: the distribution and its entry point."""

    name: str
    group: str
    value: str  # "module:attribute"
    dist: str  # "name version" of the distribution that declared it

    def describe(self) -> str:
        return f"{self.dist} ({self.value})"


_errors: list[str] = []
_sources: dict[tuple[str, str], Plugin] = {}


def plugin_errors() -> list[str]:
    """One line per plugin left out, and why."""
    return list(_errors)


def source(group: str, name: str) -> str:
    """``built-in``, or the distribution and entry point a plugin name comes from."""
    plugin = _sources.get((group, name))
    return plugin.describe() if plugin else "built-in"


def _entry_points(group: str) -> list[EntryPoint]:
    return sorted(entry_points(group=group), key=lambda ep: (ep.name, ep.value))


def _dist(ep: EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else "(unknown distribution)"


def _load(ep: EntryPoint, group: str) -> Any | None:
    try:
        return ep.load()
    except Exception as exc:  # a third party's import error: leave the plugin out
        _errors.append(
            f"plugin {ep.name!r} ({group} = {ep.value!r}, from {_dist(ep)}) failed to load:"
            f" {type(exc).__name__}: {exc}"
        )
        return None


def _refuse(ep: EntryPoint, group: str, why: str) -> None:
    _errors.append(f"plugin {ep.name!r} ({group} = {ep.value!r}, from {_dist(ep)}): {why}")


def _once(load):
    """Load a group once; later calls (whatever ``taken`` they pass) get the first result."""
    done: dict[str, dict[str, type]] = {}

    @functools.wraps(load)
    def wrapper(taken: frozenset[str]) -> dict[str, type]:
        if "out" not in done:
            done["out"] = load(taken)
        return done["out"]

    return wrapper


@_once
def plugin_proposals(taken: frozenset[str]) -> dict[str, type]:
    """Every plugin's :class:`~sim.proposals.base.Proposal` subclass by name; ``taken``:
    the built-in names, which a plugin cannot replace."""
    from sim.proposals.base import Proposal

    out: dict[str, type] = {}
    for ep in _entry_points(PROPOSAL_GROUP):
        cls = _load(ep, PROPOSAL_GROUP)
        if cls is None:
            continue
        if not (isinstance(cls, type) and issubclass(cls, Proposal)):
            _refuse(ep, PROPOSAL_GROUP, "expected a subclass of sim.proposals.base.Proposal")
        elif getattr(cls, "name", None) != ep.name:
            _refuse(
                ep,
                PROPOSAL_GROUP,
                f"the class's name is {getattr(cls, 'name', None)!r}; expected {ep.name!r},"
                " the entry point's name",
            )
        elif not isinstance(getattr(cls, "summary", None), str):
            _refuse(ep, PROPOSAL_GROUP, "expected a one-line 'summary' string on the class")
        elif ep.name in taken or ep.name in out:
            _refuse(ep, PROPOSAL_GROUP, f"the name {ep.name!r} is already taken")
        else:
            out[ep.name] = cls
            _sources[PROPOSAL_GROUP, ep.name] = Plugin(ep.name, PROPOSAL_GROUP, ep.value, _dist(ep))
    return out


def spec_kind(spec: type[BaseModel]) -> str | None:
    """The one value of a spec's ``kind: Literal[...]`` field, or None."""
    field = spec.model_fields.get("kind")
    args = getattr(field.annotation, "__args__", ()) if field is not None else ()
    return args[0] if len(args) == 1 and isinstance(args[0], str) else None


@_once
def plugin_behaviours(taken: frozenset[str]) -> dict[str, type]:
    """Every plugin's :class:`~sim.attacks.Behaviour` subclass by kind (each carries its
    ``spec``); ``taken``: the built-in kinds, which a plugin cannot replace."""
    eps = _entry_points(BEHAVIOUR_GROUP)
    if not eps:  # (sim.attacks imports the whole model: only when a plugin needs it)
        return {}
    from sim.attacks import Behaviour

    out: dict[str, type] = {}
    for ep in eps:
        cls = _load(ep, BEHAVIOUR_GROUP)
        if cls is None:
            continue
        spec = getattr(cls, "spec", None)
        if not (isinstance(cls, type) and issubclass(cls, Behaviour)):
            _refuse(ep, BEHAVIOUR_GROUP, "expected a subclass of sim.attacks.Behaviour")
        elif getattr(cls, "kind", None) != ep.name:
            _refuse(
                ep,
                BEHAVIOUR_GROUP,
                f"the class's kind is {getattr(cls, 'kind', None)!r}; expected {ep.name!r},"
                " the entry point's name",
            )
        elif not (isinstance(spec, type) and issubclass(spec, Spec)):
            _refuse(ep, BEHAVIOUR_GROUP, "expected 'spec', a subclass of sim.registry.Spec")
        elif spec_kind(spec) != ep.name:
            _refuse(ep, BEHAVIOUR_GROUP, f"expected spec.kind: Literal[{ep.name!r}]")
        elif ep.name in taken or ep.name in out:
            _refuse(ep, BEHAVIOUR_GROUP, f"the kind {ep.name!r} is already taken")
        else:
            out[ep.name] = cls
            _sources[BEHAVIOUR_GROUP, ep.name] = Plugin(
                ep.name, BEHAVIOUR_GROUP, ep.value, _dist(ep)
            )
    return out


def parameters(spec: type[BaseModel]) -> list[dict[str, Any]]:
    """A behaviour spec's parameters: name, type, default and bounds (for listings)."""
    out = []
    for name, info in spec.model_fields.items():
        if name == "kind":
            continue
        bounds = {}
        for meta in info.metadata:
            for key in ("ge", "gt", "le", "lt"):
                if getattr(meta, key, None) is not None:
                    bounds[key] = getattr(meta, key)
        annotation = info.annotation
        out.append(
            {
                "name": name,
                "type": getattr(annotation, "__name__", str(annotation)),
                "default": None if info.is_required() else info.default,
                "required": info.is_required(),
                "bounds": bounds,
                "description": info.description,
            }
        )
    return out


def describe_parameter(p: dict[str, Any]) -> str:
    """``pages: int = 2 (1..64)``, as listings show a parameter."""
    text = f"{p['name']}: {p['type']}" + ("" if p["required"] else f" = {p['default']!r}")
    b = p["bounds"]
    low = f"{b['ge']}" if "ge" in b else (f">{b['gt']}" if "gt" in b else "")
    high = f"{b['le']}" if "le" in b else (f"<{b['lt']}" if "lt" in b else "")
    if low or high:
        text += f" ({low}..{high})"
    return text


__all__ = [
    "BEHAVIOUR_GROUP",
    "PROPOSAL_GROUP",
    "Plugin",
    "Spec",
    "parameters",
    "plugin_behaviours",
    "plugin_errors",
    "plugin_proposals",
    "source",
]
