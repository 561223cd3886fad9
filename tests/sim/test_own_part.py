"""What each proposal adds, separated from the guest ITS driver's own sharing."""

from pathlib import Path

import pytest

from sim.actors.lowvisor import part_of
from sim.matrix import with_attack
from sim.run import run
from sim.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


@pytest.fixture(scope="module")
def churn():
    scenario = with_attack(load_scenario(SCENARIOS / "device-churn-reuse.yaml"), None)
    return {p: run(scenario, p).costs for p in scenario.proposals}


def test_part_of_names_the_driver_and_its_reshare_on_the_destination():
    assert part_of("driver: its_alloc_pages its-itt") == "driver"
    assert part_of("migration: as on src, driver: itt_pool refill") == "driver"
    assert part_of("migration: as on src, enlightened guest: ITT page") == "proposal"
    assert part_of("snooped MAPD device 0x8 at queue slot 0x40") == "proposal"
    assert part_of("host claim: ITT of device 0x8") == "proposal"


def test_driver_only_proposals_add_no_hypercall_and_no_invalidation(churn):
    # userspace-serialization leaves the guest's sharing as the driver does it.
    c = churn["userspace-serialization"]
    assert c.hypercalls > 100 and c.hypercalls_by_proposal == 0
    assert c.tlb_invalidations_by_proposal == 0 and c.proposal_el2_us == 0
    assert c.driver_el2_us > 0
    assert churn["trusted-host"].hypercalls == 0  # a normal VM shares nothing


def test_each_proposal_part_is_counted_at_its_source(churn):
    claims = churn["share-host-claims"]
    # The host's SHARE/UNSHARE_GUEST_PAGE calls are the proposal's, MEM_SHARE the driver's.
    host_calls = sum(n for call, n in claims.hypercalls_by_call.items() if call.startswith("host"))
    assert host_calls > 0 and claims.hypercalls_by_proposal == host_calls
    assert claims.tlb_invalidations_by_proposal == claims.tlb_invalidations > 0
    enlightened = churn["share-enlightened-guest"]
    driver_calls = churn["userspace-serialization"].hypercalls
    assert enlightened.hypercalls - enlightened.hypercalls_by_proposal == driver_calls
    # The snooping EL2 makes no hypercall but parses commands and shares ITT pages itself.
    snoop = churn["share-cmdq-snoop"]
    assert snoop.hypercalls_by_proposal == 0 and snoop.proposal_el2_us > 0
    # Behind the IOMMU the driver shares nothing; every map is the proposal's, and its
    # invalidations are the IOMMU's, not the stage-2's.
    gated = churn["iommu-gated-its"]
    assert gated.hypercalls == gated.hypercalls_by_proposal > 0
    assert gated.iotlb_invalidations > 0 and gated.tlb_invalidations == 0
    assert gated.driver_el2_us == 0
