"""The modelled twin of a replay scenario: the same guest, devices and workload, with the
``linux`` driver model of the capture's kernel generation in place of the capture."""

from __future__ import annotations

from sim.actors.replay import capture_of
from sim.scenario import Scenario


def modelled_twin(scenario: Scenario) -> Scenario:
    """``scenario`` (a replay) with ``its_driver: linux`` and ``guest.kernel`` set to the
    capture's generation; the devices' driver facts (``msix_table_size``,
    ``managed_vectors``, ``probe_vectors``, ``frees_at_shutdown``) drive the model."""
    gen = capture_of(scenario).kernel.generation
    guest = scenario.guest.model_copy(
        update={"its_driver": "linux", "capture": None, "kernel": gen}
    )
    return scenario.model_copy(update={"guest": guest, "name": f"{scenario.name}-model"})
