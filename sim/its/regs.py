"""ITS and redistributor register fields, as KVM sanitises and reads them.

From include/linux/irqchip/arm-gic-v3.h and arch/arm64/kvm/vgic/vgic-its.c. Only the
fields KVM acts on are modelled; cacheability and shareability are carried but ignored.
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

# GITS_BASER<n>
GITS_BASER_VALID = 1 << 63
GITS_BASER_INDIRECT = 1 << 62
GITS_BASER_TYPE_SHIFT = 56
GITS_BASER_TYPE_DEVICE = 1
GITS_BASER_TYPE_COLLECTION = 4
GITS_BASER_ENTRY_SIZE_SHIFT = 48
GITS_BASER_PAGE_SIZE_64K = 2 << 8
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
GICR_PROPBASER_IDBITS_MASK = 0x1F
GICR_PENDBASER_PTZ = 1 << 62

ITS_CMD_SIZE = 32
GIC_LPI_OFFSET = 8192
INTERRUPT_ID_BITS_ITS = 16
COLLECTION_NOT_MAPPED = 0xFFFF_FFFF


def genmask(hi: int, lo: int) -> int:
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


def baser_addr(baser: int) -> int:
    """``GITS_BASER_ADDR_48_to_52``: PA[47:16] in place, PA[51:48] from bits [15:12]."""
    return (baser & genmask(47, 16)) | (((baser >> 12) & 0xF) << 48)


def baser_nr_pages(baser: int) -> int:
    """``GITS_BASER_NR_PAGES``: Size[7:0] + 1 pages of 64 KiB (KVM forces 64K pages)."""
    return (baser & 0xFF) + 1


def baser_entry_size(baser: int) -> int:
    return ((baser >> GITS_BASER_ENTRY_SIZE_SHIFT) & 0x1F) + 1


def baser_type(baser: int) -> int:
    return (baser >> GITS_BASER_TYPE_SHIFT) & 0x7


def make_baser(addr: int, size: int, *, indirect: bool = False, valid: bool = True) -> int:
    """A guest's GITS_BASER value for a table of ``size`` bytes at ``addr`` (64K pages)."""
    if addr % SZ_64K or size % SZ_64K or not 0 < size <= 256 * SZ_64K:
        raise ValueError("a BASER table is 1..256 pages of 64 KiB, 64 KiB aligned")
    value = (addr & genmask(47, 16)) | ((addr >> 48) & 0xF) << 12
    value |= GITS_BASER_PAGE_SIZE_64K | (size // SZ_64K - 1)
    if indirect:
        value |= GITS_BASER_INDIRECT
    if valid:
        value |= GITS_BASER_VALID
    return value


def cbaser_addr(cbaser: int) -> int:
    """``GITS_CBASER_ADDRESS``: PA[51:12]; KVM has already cleared [15:12] on write."""
    return cbaser & genmask(51, 12)


def cbaser_size(cbaser: int) -> int:
    """``ITS_CMD_BUFFER_SIZE``: (Size[7:0] + 1) * 4 KiB."""
    return ((cbaser & 0xFF) + 1) * SZ_4K


def make_cbaser(addr: int, size: int, *, valid: bool = True) -> int:
    if addr % SZ_64K or size % SZ_4K or not 0 < size <= 256 * SZ_4K:
        raise ValueError("the command queue is 1..256 pages of 4 KiB, 64 KiB aligned")
    return (addr & genmask(51, 12)) | (size // SZ_4K - 1) | (GITS_CBASER_VALID if valid else 0)


def cmd_offset(reg: int) -> int:
    """``ITS_CMD_OFFSET``: CWRITER / CREADR keep bits [19:5]."""
    return reg & genmask(19, 5)


def propbaser_addr(propbaser: int) -> int:
    return propbaser & genmask(51, 12)


def max_lpis_propbaser(propbaser: int) -> int:
    """One past the largest LPI INTID KVM accepts: ``1 << min(IDbits + 1, 16)``."""
    nr_idbits = (propbaser & GICR_PROPBASER_IDBITS_MASK) + 1
    return 1 << min(nr_idbits, INTERRUPT_ID_BITS_ITS)


def make_propbaser(addr: int, id_bits: int) -> int:
    return (addr & genmask(51, 12)) | ((id_bits - 1) & GICR_PROPBASER_IDBITS_MASK)


def pendbaser_addr(pendbaser: int) -> int:
    return pendbaser & genmask(51, 16)


def make_pendbaser(addr: int, *, ptz: bool = True) -> int:
    return (addr & genmask(51, 16)) | (GICR_PENDBASER_PTZ if ptz else 0)
