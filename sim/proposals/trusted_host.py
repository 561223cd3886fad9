"""trusted-host: a non-protected VM, as KVM runs it today. The cost floor."""

from sim.proposals.base import Proposal


class TrustedHost(Proposal):
    name = "trusted-host"
    summary = "non-protected VM: the host reads and writes all guest memory (today's KVM)"
    protected = False
