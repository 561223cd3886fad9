"""read-once: the host reads every guest page its stage-2 reaches, once, at ``at_ms``."""

from __future__ import annotations

from collections.abc import Generator
from typing import Annotated, Literal

from pydantic import Field

from sim.attacks import Behaviour
from sim.registry import Spec


class ReadOnceSpec(Spec):
    """Read every guest page the host's stage-2 reaches, once, at ``at_ms``."""

    kind: Literal["read-once"]
    at_ms: Annotated[float, Field(ge=0.0, le=600_000.0)] = 5.0


class ReadOnce(Behaviour):
    kind = "read-once"
    spec = ReadOnceSpec

    def start(self) -> None:
        self.world.env.process(self._read())

    def _read(self) -> Generator:
        yield self.world.env.timeout(self.spec.at_ms * 1000.0)
        self.loot(self.reachable_pages())
