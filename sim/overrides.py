"""``--set FIELD=VALUE``: one field of a loaded scenario replaced, then the whole scenario
validated again by the same model a file goes through (an error names the override).

FIELD is a dotted path as ``sweep --vary`` takes it (guest.vcpus, costs.tlbi_us,
devices[0].vectors); VALUE is read as a YAML scalar (2 -> int, 0.5 -> float, true ->
bool, anything else a string).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sim.scenario import Scenario
from sim.sweep import SweepError, Vary, _check_path, _parse_value, _set, _validate, parse_path


class OverrideError(Exception):
    """A bad --set; the message names the override and what was expected."""


@dataclass(frozen=True)
class Override:
    text: str  # as given, for messages and provenance
    field: str
    path: tuple[str | int, ...]
    value: Any


def parse_override(text: str) -> Override:
    field, sep, value = text.partition("=")
    field = field.strip()
    if not sep or not field or not value.strip():
        raise OverrideError(f"--set {text!r}: expected FIELD=VALUE, e.g. guest.vcpus=4")
    try:
        path = parse_path(field)
    except SweepError as exc:
        raise OverrideError(f"--set {text!r}: {exc}") from None
    return Override(text, field, path, _parse_value(value.strip()))


def apply_overrides(scenario: Scenario, overrides: list[Override], where: str) -> Scenario:
    """``scenario`` with every override applied, validated as a whole."""
    if not overrides:
        return scenario
    data = scenario.model_dump(mode="json")
    for o in overrides:
        try:
            _check_path(data, Vary(o.field, o.path, (o.value,)))
        except SweepError as exc:
            message = str(exc).removeprefix(f"--vary {o.field}: ")
            raise OverrideError(f"{where}: --set {o.text}: {message}") from None
        _set(data, o.path, o.value)
    what = "--set " + ", ".join(o.text for o in overrides)
    try:
        return _validate(data, what)
    except SweepError as exc:
        raise OverrideError(f"{where}: {exc}") from None
