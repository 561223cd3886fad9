"""The migration proposals, each a module behind :class:`sim.proposals.base.Proposal`."""

from sim.proposals.base import Payload, Proposal
from sim.proposals.iommu_gated_its import IOMMUGatedITS
from sim.proposals.itt_ubuf import ITTUbuf
from sim.proposals.share_cmdq_shadow import ShareCmdqShadow
from sim.proposals.share_cmdq_snoop import ShareCmdqSnoop
from sim.proposals.share_enlightened_guest import ShareEnlightenedGuest
from sim.proposals.share_host_claims import ShareHostClaims
from sim.proposals.trusted_host import TrustedHost
from sim.proposals.userspace_serialization import UserspaceSerialization
from sim.registry import plugin_proposals

PROPOSALS: dict[str, type[Proposal]] = {
    cls.name: cls
    for cls in (
        TrustedHost,
        ShareHostClaims,
        ShareEnlightenedGuest,
        ShareCmdqSnoop,
        UserspaceSerialization,
        IOMMUGatedITS,
        ShareCmdqShadow,
        ITTUbuf,
    )
}
# Then every installed plugin's (entry points "pkvm_sim.proposals", sim/registry.py).
PROPOSALS.update(plugin_proposals(frozenset(PROPOSALS)))


def make_proposal(name: str) -> Proposal:
    try:
        return PROPOSALS[name]()
    except KeyError:
        raise ValueError(
            f"unknown proposal {name!r}; expected one of {', '.join(PROPOSALS)}"
        ) from None


__all__ = ["PROPOSALS", "Payload", "Proposal", "make_proposal"]
