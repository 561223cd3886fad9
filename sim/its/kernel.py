"""Which KVM the vITS model follows: the two kernels the oracle runs, and what differs.

Both are Debian builds whose sources are in ``linux-source-6.1`` / ``linux-source-7.3``
(``arch/arm64/kvm/vgic/vgic-its.c`` unless named otherwise). The saved table format (ABI
revision 0), the command encodings, the ``E_ITS_*`` checks and the register values are
the same in both; :class:`KernelBehaviour` lists every difference the model covers, each
with the function that explains it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class KernelGen(enum.StrEnum):
    """A kernel generation: ``"6.1"`` is Debian 6.1.192 (LPIs on a list, refcounted per
    ITE), ``"7.3"`` Debian 7.3.4 (current: LPIs in an xarray, one ITE per LPI)."""

    V6_1 = "6.1"
    V7_3 = "7.3"


DEFAULT_KERNEL = KernelGen.V7_3


@dataclass(frozen=True, slots=True)
class KernelBehaviour:
    """The behaviours that differ between the two kernels (True: 7.3's)."""

    # vgic_its_map_lpi(): an LPI is mapped by one ITE. 7.3's vgic_its_cmd_handle_mapi()
    # fails a second MAPTI/MAPI onto a mapped INTID with -EEXIST (freeing the new ITE and
    # a collection it created) and vgic_its_restore_ite() drops such an ITE; 6.1's
    # vgic_add_lpi() hands the existing vgic_irq to both ITEs (a shared, refcounted LPI).
    one_ite_per_lpi: bool
    # vgic_its_cmd_handle_mapc(): 6.1 checks the target against online_vcpus before
    # looking at V, so MAPC V=0 with an out-of-range target fails E_ITS_MAPC_PROCNUM_OOR
    # and keeps the collection; 7.3 frees the collection whatever the target.
    mapc_unmap_ignores_target: bool
    # compute_next_eventid_offset(): 7.3 points an ITE's `next` past ITEs without a
    # collection (vgic_its_save_ite() stores those as zero); 6.1 points at the next ITE.
    next_ite_skips_zeroed: bool
    # vgic_its_save_device_tables(): a device vgic_its_check_id() rejects (two-level
    # table whose level-1 entry the guest cleared) is skipped by 7.3 ("Don't fail a save
    # ..."), and compute_next_devid_offset() skips it too; 6.1 returns -EINVAL there,
    # before the collection table is written.
    save_skips_rejected_devices: bool
    # vgic_mmio_write_its_baser(): 7.3 frees the device (BASER0) or collection (BASER1)
    # list whenever the written value differs from the old one; 6.1 only when Valid is 0.
    baser_change_frees: bool
    # The LPI walks: 7.3 walks the dist->lpi_xa xarray (INTID order) and looks at every
    # LPI, filtering on the target vCPU after reading guest memory (vgic_its_invall(),
    # its_sync_lpi_pending_table()); 6.1 walks lpi_list_head (creation order) through
    # vgic_copy_lpi_list(), which keeps only the LPIs targeting that vCPU.
    # vgic_v3_save_pending_tables() (vgic-v3.c) walks the same structure.
    lpi_xarray: bool
    # KVM_CREATE_VM with KVM_VM_TYPE_ARM_PROTECTED (bit 31): 7.3's pKVM creates a
    # protected VM; 6.1's kvm_arm_setup_stage2() (reset.c) refuses any type bit outside
    # KVM_VM_TYPE_ARM_IPA_SIZE_MASK with -EINVAL, even with kvm-arm.mode=protected.
    protected_vm_type: bool


BEHAVIOUR: dict[KernelGen, KernelBehaviour] = {
    KernelGen.V6_1: KernelBehaviour(
        one_ite_per_lpi=False,
        mapc_unmap_ignores_target=False,
        next_ite_skips_zeroed=False,
        save_skips_rejected_devices=False,
        baser_change_frees=False,
        lpi_xarray=False,
        protected_vm_type=False,
    ),
    KernelGen.V7_3: KernelBehaviour(
        one_ite_per_lpi=True,
        mapc_unmap_ignores_target=True,
        next_ite_skips_zeroed=True,
        save_skips_rejected_devices=True,
        baser_change_frees=True,
        lpi_xarray=True,
        protected_vm_type=True,
    ),
}


def kernel_gen(value: KernelGen | str) -> KernelGen:
    """``value`` as a :class:`KernelGen`; an unknown one raises ``ValueError``."""
    try:
        return KernelGen(value)
    except ValueError:
        known = ", ".join(repr(k.value) for k in KernelGen)
        raise ValueError(f"kernel: expected one of {known}, got {value!r}") from None
