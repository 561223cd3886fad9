"""The virtual GICv3 ITS as KVM emulates it: commands, state, and the migration ABI."""

from sim.its.commands import (
    CLEAR,
    DISCARD,
    INT,
    INV,
    INVALL,
    MAPC,
    MAPD,
    MAPI,
    MAPTI,
    MOVALL,
    MOVI,
    SYNC,
    CommandDecodeError,
    ITSCommand,
    decode,
)
from sim.its.errors import ITSDisabledError, ITSError
from sim.its.kernel import DEFAULT_KERNEL, KernelGen
from sim.its.vits import ITSLayout, VirtualITS

__all__ = [
    "CLEAR",
    "DEFAULT_KERNEL",
    "DISCARD",
    "INT",
    "INV",
    "INVALL",
    "MAPC",
    "MAPD",
    "MAPI",
    "MAPTI",
    "MOVALL",
    "MOVI",
    "SYNC",
    "CommandDecodeError",
    "ITSCommand",
    "ITSDisabledError",
    "ITSError",
    "ITSLayout",
    "KernelGen",
    "VirtualITS",
    "decode",
]
