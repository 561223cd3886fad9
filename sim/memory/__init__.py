"""Physical memory, pKVM page ownership, guest labels and the access check."""

from sim.memory.access import (
    AccessRecord,
    Initiator,
    IOMMUDomain,
    MemorySystem,
    Perm,
    Stage2Fault,
)
from sim.memory.labels import Label, LabelKind, LabelMap
from sim.memory.ownership import (
    HOST,
    HYP,
    OwnershipChange,
    OwnershipError,
    PageOwnership,
    PageState,
    Transition,
)
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE, page_span, pfn

__all__ = [
    "HOST",
    "HYP",
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "AccessRecord",
    "IOMMUDomain",
    "Initiator",
    "Label",
    "LabelKind",
    "LabelMap",
    "MemorySystem",
    "OwnershipChange",
    "OwnershipError",
    "PageOwnership",
    "PageState",
    "Perm",
    "Stage2Fault",
    "Transition",
    "page_span",
    "pfn",
]
