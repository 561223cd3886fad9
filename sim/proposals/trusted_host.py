"""trusted-host: a non-protected VM, as KVM runs it today. The cost floor.

KVM's writes while it runs the queue (the zeroed ITE of DISCARD, the zeroed DTE of
MAPD V=0) land as on any normal VM: the host reaches all guest memory.
"""

from sim.proposals.base import Proposal


class TrustedHost(Proposal):
    name = "trusted-host"
    summary = "non-protected VM: the host reads and writes all guest memory (today's KVM)"
    protected = False
    el2_lines_source = "none: today's KVM, no pKVM at all"
