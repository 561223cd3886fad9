"""Errors the virtual ITS reports: KVM's ``E_ITS_*`` codes and the errnos it returns.

Values of the ``E_ITS_*`` codes are those of include/linux/irqchip/arm-gic-v3.h. A command
handler in vgic-its.c returns one of these or a negative errno; the command queue
ignores the value and moves on, but the model keeps it for the caller and the audit.
"""

from __future__ import annotations

import enum


class ITSError(enum.StrEnum):
    E_ITS_MOVI_UNMAPPED_INTERRUPT = "E_ITS_MOVI_UNMAPPED_INTERRUPT"
    E_ITS_MOVI_UNMAPPED_COLLECTION = "E_ITS_MOVI_UNMAPPED_COLLECTION"
    E_ITS_INT_UNMAPPED_INTERRUPT = "E_ITS_INT_UNMAPPED_INTERRUPT"
    E_ITS_CLEAR_UNMAPPED_INTERRUPT = "E_ITS_CLEAR_UNMAPPED_INTERRUPT"
    E_ITS_MAPD_DEVICE_OOR = "E_ITS_MAPD_DEVICE_OOR"
    E_ITS_MAPD_ITTSIZE_OOR = "E_ITS_MAPD_ITTSIZE_OOR"
    E_ITS_MAPC_PROCNUM_OOR = "E_ITS_MAPC_PROCNUM_OOR"
    E_ITS_MAPC_COLLECTION_OOR = "E_ITS_MAPC_COLLECTION_OOR"
    E_ITS_MAPTI_UNMAPPED_DEVICE = "E_ITS_MAPTI_UNMAPPED_DEVICE"
    E_ITS_MAPTI_ID_OOR = "E_ITS_MAPTI_ID_OOR"
    E_ITS_MAPTI_PHYSICALID_OOR = "E_ITS_MAPTI_PHYSICALID_OOR"
    E_ITS_INV_UNMAPPED_INTERRUPT = "E_ITS_INV_UNMAPPED_INTERRUPT"
    E_ITS_INVALL_UNMAPPED_COLLECTION = "E_ITS_INVALL_UNMAPPED_COLLECTION"
    E_ITS_MOVALL_PROCNUM_OOR = "E_ITS_MOVALL_PROCNUM_OOR"
    E_ITS_DISCARD_UNMAPPED_INTERRUPT = "E_ITS_DISCARD_UNMAPPED_INTERRUPT"
    # Negative errnos returned by the same paths.
    EFAULT = "-EFAULT"  # guest memory outside every memslot, or the access faulted
    EINVAL = "-EINVAL"  # malformed table entry on restore
    EEXIST = "-EEXIST"  # duplicate collection on restore; 7.3: MAPTI onto a mapped LPI
    EBUSY = "-EBUSY"  # INT/MSI to a vCPU whose LPIs are disabled
    ENODEV = "-ENODEV"  # unknown command number (vgic_its_handle_command's default)
    ENXIO = "-ENXIO"  # the ITS is not enabled (KVM_SIGNAL_MSI)

    @property
    def code(self) -> int:
        """The numeric value KVM uses (``E_ITS_*`` constant or negative errno)."""
        return _CODES[self]


_CODES = {
    ITSError.E_ITS_MOVI_UNMAPPED_INTERRUPT: 0x010107,
    ITSError.E_ITS_MOVI_UNMAPPED_COLLECTION: 0x010109,
    ITSError.E_ITS_INT_UNMAPPED_INTERRUPT: 0x010307,
    ITSError.E_ITS_CLEAR_UNMAPPED_INTERRUPT: 0x010507,
    ITSError.E_ITS_MAPD_DEVICE_OOR: 0x010801,
    ITSError.E_ITS_MAPD_ITTSIZE_OOR: 0x010802,
    ITSError.E_ITS_MAPC_PROCNUM_OOR: 0x010902,
    ITSError.E_ITS_MAPC_COLLECTION_OOR: 0x010903,
    ITSError.E_ITS_MAPTI_UNMAPPED_DEVICE: 0x010A04,
    ITSError.E_ITS_MAPTI_ID_OOR: 0x010A05,
    ITSError.E_ITS_MAPTI_PHYSICALID_OOR: 0x010A06,
    ITSError.E_ITS_INV_UNMAPPED_INTERRUPT: 0x010C07,
    ITSError.E_ITS_INVALL_UNMAPPED_COLLECTION: 0x010D09,
    ITSError.E_ITS_MOVALL_PROCNUM_OOR: 0x010E01,
    ITSError.E_ITS_DISCARD_UNMAPPED_INTERRUPT: 0x010F07,
    ITSError.EFAULT: -14,
    ITSError.EINVAL: -22,
    ITSError.EEXIST: -17,
    ITSError.EBUSY: -16,
    ITSError.ENODEV: -19,
    ITSError.ENXIO: -6,
}


class ITSDisabledError(RuntimeError):
    """A command was queued while GITS_CTLR.Enabled = 0, so KVM did not process it."""
