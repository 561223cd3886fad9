"""guest.kernel guests of either generation, any device mix, churn and affinity moves:
every run completes and an honest host keeps the ITS correct under every proposal."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.run import run
from sim.scenario import ALL_PROPOSALS, Scenario


@st.composite
def kernel_scenarios(draw) -> Scenario:
    n = draw(st.integers(1, 4))
    devices = []
    for i in range(n):
        vectors = draw(st.sampled_from([1, 2, 3, 5, 17, 64]))
        devices.append(
            {
                "name": f"d{i}",
                "device_id": 8 * (i + 1),
                "vectors": vectors,
                "rate_hz": 400.0,
                "msix_table_size": vectors + draw(st.sampled_from([0, 1, 62])),
                "managed_vectors": draw(st.integers(0, vectors)),
                "probe_vectors": draw(st.sampled_from([None, 1])),
                "frees_at_shutdown": draw(st.booleans()),
            }
        )
    churn = [
        {"at_ms": draw(st.floats(0.0, 10.0)), "device": f"d{draw(st.integers(0, n - 1))}",
         "action": draw(st.sampled_from(["remove", "add"]))}
        for _ in range(draw(st.integers(0, 3)))
    ]  # fmt: skip
    return Scenario.model_validate(
        {
            "name": "kernel-guest",
            "question": "does it run?",
            "seed": draw(st.integers(0, 999)),
            "guest": {
                "ram_mib": 128,
                "vcpus": draw(st.integers(1, 4)),
                "allocator": draw(st.sampled_from(["linux-kzalloc", "linux-shared-pool"])),
                "kernel": draw(st.sampled_from(["6.1", "7.3"])),
                "power_off": draw(st.booleans()),
            },
            "devices": devices,
            "workload": {
                "duration_ms": 12.0,
                "affinity_moves_per_s": draw(st.sampled_from([0.0, 400.0])),
                "churn": churn,
            },
            "migration": {"at_ms": draw(st.floats(1.0, 11.0))},
        }
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=kernel_scenarios())
def test_kernel_guests_run_correctly_under_every_proposal(scenario):
    for proposal in ALL_PROPOSALS:
        c = run(scenario, proposal).correctness
        assert c.its_correct, (proposal, c.command_failures, c.mismatches, c.its_errors)
        assert c.kvm_faults == 0, proposal
