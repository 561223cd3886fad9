"""ITS and redistributor register fields, as KVM sanitises and reads them.

From include/linux/irqchip/arm-gic-v3.h, arch/arm64/kvm/vgic/vgic-its.c and
vgic-mmio-v3.c (the same in both kernels). Cacheability and shareability have no effect
on the model, but KVM sanitises them on every write and a read returns the sanitised
value, so they are kept exactly as KVM keeps them (``sanitise_*``).
"""

from __future__ import annotations

SZ_4K = 0x1000
SZ_64K = 0x10000

# MMIO offsets in the ITS control frame.
GITS_CTLR = 0x0000
GITS_IIDR = 0x0004
GITS_TYPER = 0x0008
GITS_CBASER = 0x0080
GITS_CWRITER = 0x0088
GITS_CREADR = 0x0090
GITS_BASER0 = 0x0100  # device table
GITS_BASER1 = 0x0108  # collection table

GITS_CTLR_ENABLE = 1 << 0
GITS_CTLR_QUIESCENT = 1 << 31

# Memory attributes (GIC_BASER_CACHE_* / GIC_BASER_*Shareable)
GIC_BASER_CACHE_nCnB = 0
GIC_BASER_CACHE_SameAsInner = 0
GIC_BASER_CACHE_nC = 1
GIC_BASER_CACHE_RaWb = 3
GIC_BASER_CACHE_RaWaWb = 7
GIC_BASER_NonShareable = 0
GIC_BASER_InnerShareable = 1
GIC_BASER_OuterShareable = 2
# Field shifts: GITS_BASER<n> and GITS_CBASER share them; GICR_PROPBASER / PENDBASER
# put inner cacheability at [9:7] and outer at [58:56].
GITS_SHAREABILITY_SHIFT = 10
GITS_INNER_CACHEABILITY_SHIFT = 59
GITS_OUTER_CACHEABILITY_SHIFT = 53
GICR_SHAREABILITY_SHIFT = 10
GICR_INNER_CACHEABILITY_SHIFT = 7
GICR_OUTER_CACHEABILITY_SHIFT = 56

# GITS_BASER<n>
GITS_BASER_VALID = 1 << 63
GITS_BASER_INDIRECT = 1 << 62
GITS_BASER_TYPE_SHIFT = 56
GITS_BASER_TYPE_DEVICE = 1
GITS_BASER_TYPE_COLLECTION = 4
GITS_BASER_ENTRY_SIZE_SHIFT = 48
GITS_BASER_PAGE_SIZE_64K = 2 << 8
GITS_BASER_PAGE_SIZE_MASK = 3 << 8
GITS_BASER_RO_MASK = (0x1F << 48) | (0x7 << 56)
GITS_LVL1_ENTRY_SIZE = 8
GITS_BASER_NR_REGS = 8

# GITS_CBASER
GITS_CBASER_VALID = 1 << 63

# GITS_TYPER fields KVM reports
GITS_TYPER_PLPIS = 1 << 0
GITS_TYPER_ITT_ENTRY_SIZE_SHIFT = 4
GITS_TYPER_IDBITS_SHIFT = 8
GITS_TYPER_DEVBITS_SHIFT = 13

# GITS_IIDR
GITS_IIDR_REV_SHIFT = 12
PRODUCT_ID_KVM = 0x4B
IMPLEMENTER_ARM = 0x43B

# Redistributor LPI registers
GICR_CTLR_ENABLE_LPIS = 1 << 0
GICR_CTLR_CES = 1 << 1
GICR_CTLR_IR = 1 << 2
GICR_PROPBASER_IDBITS_MASK = 0x1F
GICR_PENDBASER_PTZ = 1 << 62

ITS_CMD_SIZE = 32
GIC_LPI_OFFSET = 8192
INTERRUPT_ID_BITS_ITS = 16
COLLECTION_NOT_MAPPED = 0xFFFF_FFFF


def genmask(hi: int, lo: int) -> int:
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


# Address fields, computed once (the accessors below run on every command)
_PA_47_16 = genmask(47, 16)
_PA_51_12 = genmask(51, 12)
_PA_51_16 = genmask(51, 16)
_CMD_OFFSET_MASK = genmask(19, 5)

# vgic-mmio-v3.c: PROPBASER_RES0_MASK, PENDBASER_RES0_MASK
PROPBASER_RES0_MASK = genmask(63, 59) | genmask(55, 52) | genmask(6, 5)
PENDBASER_RES0_MASK = (1 << 63) | genmask(61, 59) | genmask(55, 52) | genmask(15, 12) | 0x7F


def _sanitise_shareability(field: int) -> int:
    """``vgic_sanitise_shareability``: outer shareable becomes inner shareable."""
    return GIC_BASER_InnerShareable if field == GIC_BASER_OuterShareable else field


def _sanitise_inner_cacheability(field: int) -> int:
    """``vgic_sanitise_inner_cacheability``: no inner non-cacheable mapping."""
    return GIC_BASER_CACHE_RaWb if field in (GIC_BASER_CACHE_nCnB, GIC_BASER_CACHE_nC) else field


def _sanitise_outer_cacheability(field: int) -> int:
    """``vgic_sanitise_outer_cacheability``: non-cacheable or same-as-inner only."""
    if field in (GIC_BASER_CACHE_SameAsInner, GIC_BASER_CACHE_nC):
        return field
    return GIC_BASER_CACHE_SameAsInner


def _sanitise_attrs(reg: int, shr: int, inner: int, outer: int) -> int:
    """``vgic_sanitise_field`` for shareability (2 bits), inner and outer cacheability."""
    for shift, width, fn in (
        (shr, 2, _sanitise_shareability),
        (inner, 3, _sanitise_inner_cacheability),
        (outer, 3, _sanitise_outer_cacheability),
    ):
        mask = ((1 << width) - 1) << shift
        reg = (reg & ~mask) | fn((reg & mask) >> shift) << shift
    return reg


def sanitise_its_baser(reg: int) -> int:
    """``vgic_sanitise_its_baser``: memory attributes, and the page size forced to 64K."""
    reg = _sanitise_attrs(
        reg, GITS_SHAREABILITY_SHIFT, GITS_INNER_CACHEABILITY_SHIFT, GITS_OUTER_CACHEABILITY_SHIFT
    )
    return (reg & ~GITS_BASER_PAGE_SIZE_MASK) | GITS_BASER_PAGE_SIZE_64K


def sanitise_its_cbaser(reg: int) -> int:
    """``vgic_sanitise_its_cbaser``: memory attributes, the address 64K aligned."""
    reg = _sanitise_attrs(
        reg, GITS_SHAREABILITY_SHIFT, GITS_INNER_CACHEABILITY_SHIFT, GITS_OUTER_CACHEABILITY_SHIFT
    )
    return reg & ~genmask(15, 12)


def sanitise_propbaser(reg: int) -> int:
    """``vgic_sanitise_propbaser`` (vgic-mmio-v3.c)."""
    reg = _sanitise_attrs(
        reg, GICR_SHAREABILITY_SHIFT, GICR_INNER_CACHEABILITY_SHIFT, GICR_OUTER_CACHEABILITY_SHIFT
    )
    return reg & ~PROPBASER_RES0_MASK


def sanitise_pendbaser(reg: int) -> int:
    """``vgic_sanitise_pendbaser`` (vgic-mmio-v3.c); PTZ is kept (and reads as 0)."""
    reg = _sanitise_attrs(
        reg, GICR_SHAREABILITY_SHIFT, GICR_INNER_CACHEABILITY_SHIFT, GICR_OUTER_CACHEABILITY_SHIFT
    )
    return reg & ~PENDBASER_RES0_MASK


# INITIAL_BASER_VALUE (vgic-its.c), INITIAL_PROPBASER_VALUE (vgic-its.c) and
# INITIAL_PENDBASER_VALUE (vgic-v3.c): RaWb, outer same as inner, inner shareable.
INITIAL_BASER_VALUE = (
    GIC_BASER_CACHE_RaWb << GITS_INNER_CACHEABILITY_SHIFT
    | GIC_BASER_CACHE_SameAsInner << GITS_OUTER_CACHEABILITY_SHIFT
    | GIC_BASER_InnerShareable << GITS_SHAREABILITY_SHIFT
    | GITS_BASER_PAGE_SIZE_64K
)
INITIAL_PROPBASER_VALUE = INITIAL_PENDBASER_VALUE = (
    GIC_BASER_CACHE_RaWb << GICR_INNER_CACHEABILITY_SHIFT
    | GIC_BASER_CACHE_SameAsInner << GICR_OUTER_CACHEABILITY_SHIFT
    | GIC_BASER_InnerShareable << GICR_SHAREABILITY_SHIFT
)
# What Linux asks for (irq-gic-v3-its.c, both kernels): its_alloc_tables() passes
# GITS_BASER_RaWaWb | GITS_BASER_InnerShareable to its_setup_baser(); its_probe_one()
# writes GITS_CBASER_RaWaWb | GITS_CBASER_InnerShareable; its_cpu_init_lpis() writes
# GICR_PROPBASER / GICR_PENDBASER InnerShareable | RaWaWb, PENDBASER without PTZ.
LINUX_ITS_ATTRS = (
    GIC_BASER_CACHE_RaWaWb << GITS_INNER_CACHEABILITY_SHIFT
    | GIC_BASER_InnerShareable << GITS_SHAREABILITY_SHIFT
)
LINUX_GICR_ATTRS = (
    GIC_BASER_CACHE_RaWaWb << GICR_INNER_CACHEABILITY_SHIFT
    | GIC_BASER_InnerShareable << GICR_SHAREABILITY_SHIFT
)


def baser_addr(baser: int) -> int:
    """``GITS_BASER_ADDR_48_to_52``: PA[47:16] in place, PA[51:48] from bits [15:12]."""
    return (baser & _PA_47_16) | (((baser >> 12) & 0xF) << 48)


def baser_nr_pages(baser: int) -> int:
    """``GITS_BASER_NR_PAGES``: Size[7:0] + 1 pages of 64 KiB (KVM forces 64K pages)."""
    return (baser & 0xFF) + 1


def baser_entry_size(baser: int) -> int:
    return ((baser >> GITS_BASER_ENTRY_SIZE_SHIFT) & 0x1F) + 1


def baser_type(baser: int) -> int:
    return (baser >> GITS_BASER_TYPE_SHIFT) & 0x7


def make_baser(
    addr: int,
    size: int,
    *,
    indirect: bool = False,
    valid: bool = True,
    attrs: int = LINUX_ITS_ATTRS,
) -> int:
    """A guest's GITS_BASER value for a table of ``size`` bytes at ``addr`` (64K pages),
    with Linux's memory attributes unless ``attrs`` says otherwise."""
    if addr % SZ_64K or size % SZ_64K or not 0 < size <= 256 * SZ_64K:
        raise ValueError("a BASER table is 1..256 pages of 64 KiB, 64 KiB aligned")
    value = (addr & genmask(47, 16)) | ((addr >> 48) & 0xF) << 12
    value |= GITS_BASER_PAGE_SIZE_64K | (size // SZ_64K - 1) | attrs
    if indirect:
        value |= GITS_BASER_INDIRECT
    if valid:
        value |= GITS_BASER_VALID
    return value


def cbaser_addr(cbaser: int) -> int:
    """``GITS_CBASER_ADDRESS``: PA[51:12]; KVM has already cleared [15:12] on write."""
    return cbaser & _PA_51_12


def cbaser_size(cbaser: int) -> int:
    """``ITS_CMD_BUFFER_SIZE``: (Size[7:0] + 1) * 4 KiB."""
    return ((cbaser & 0xFF) + 1) * SZ_4K


def make_cbaser(addr: int, size: int, *, valid: bool = True, attrs: int = LINUX_ITS_ATTRS) -> int:
    """A guest's GITS_CBASER value, with Linux's memory attributes by default."""
    if addr % SZ_64K or size % SZ_4K or not 0 < size <= 256 * SZ_4K:
        raise ValueError("the command queue is 1..256 pages of 4 KiB, 64 KiB aligned")
    valid_bit = GITS_CBASER_VALID if valid else 0
    return (addr & genmask(51, 12)) | (size // SZ_4K - 1) | valid_bit | attrs


def cmd_offset(reg: int) -> int:
    """``ITS_CMD_OFFSET``: CWRITER / CREADR keep bits [19:5]."""
    return reg & _CMD_OFFSET_MASK


def propbaser_addr(propbaser: int) -> int:
    return propbaser & _PA_51_12


def max_lpis_propbaser(propbaser: int) -> int:
    """One past the largest LPI INTID KVM accepts: ``1 << min(IDbits + 1, 16)``."""
    nr_idbits = (propbaser & GICR_PROPBASER_IDBITS_MASK) + 1
    return 1 << min(nr_idbits, INTERRUPT_ID_BITS_ITS)


def make_propbaser(addr: int, id_bits: int, *, attrs: int = LINUX_GICR_ATTRS) -> int:
    return (addr & genmask(51, 12)) | ((id_bits - 1) & GICR_PROPBASER_IDBITS_MASK) | attrs


def pendbaser_addr(pendbaser: int) -> int:
    return pendbaser & _PA_51_16


def make_pendbaser(addr: int, *, ptz: bool = True, attrs: int = LINUX_GICR_ATTRS) -> int:
    return (addr & genmask(51, 16)) | (GICR_PENDBASER_PTZ if ptz else 0) | attrs
