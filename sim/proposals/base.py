"""The interface every migration proposal implements, and the KVM ABI steps they share.

A proposal is a strategy over the same world: hooks where the guest allocates ITS
memory, where EL2 sees a guest MMIO trap, and the save / restore halves of migration.
Nothing outside a proposal's module knows its name; every figure in a result comes from
what the actors did.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from sim.costs import CostModel

if TYPE_CHECKING:
    from sim.actors.guest import Guest
    from sim.memory.access import Initiator
    from sim.world import Machine, World


@dataclass
class Payload:
    """What the source hands the destination for the ITS, besides guest RAM."""

    regs: dict[str, int]
    blob: bytes = b""  # a serialized vITS, for proposals that keep it out of guest memory
    pages: list[int] = field(default_factory=list)  # pages a host claimed on the source


class Proposal:
    name: ClassVar[str]
    summary: ClassVar[str]
    protected: ClassVar[bool] = True  # False: a normal VM, the host sees everything
    el2_loc_cost: ClassVar[str | None] = None  # CostModel field: EL2 lines it adds
    # Where the EL2-lines figure comes from: every figure is an estimate (no proposal is
    # merged code); a proposal adding none says why.
    el2_lines_source: ClassVar[str] = "none: no EL2 code beyond mainline pKVM"
    guest_shares_tables: ClassVar[bool] = True  # mainline Linux shares its ITS tables
    guest_shares_cmdq: ClassVar[bool] = True  # False: the driver keeps its queue private
    host_claims: ClassVar[bool] = False  # EL2 offers the host a "share this guest page" call
    its_behind_iommu: ClassVar[bool] = False  # the ITS's DMA is checked by an IOMMU domain
    # KVM zeroes the DTE on MAPD V=0 and the ITE on DISCARD while it runs the queue
    # (real 6.1.192 and 7.3.4 do); False: this proposal's KVM keeps them out of guest memory.
    kvm_clears_entries: ClassVar[bool] = True
    # The ITE of DISCARD alone (None: as kvm_clears_entries): False for a KVM whose ITTs
    # are out of guest memory while its device table is in it (itt-ubuf).
    kvm_clears_ites: ClassVar[bool | None] = None

    @classmethod
    def el2_lines(cls, costs: CostModel) -> float:
        """The EL2 lines this proposal adds: an estimate (``el2_lines_source`` says whence)."""
        return getattr(costs, cls.el2_loc_cost) if cls.el2_loc_cost else 0.0

    @classmethod
    def el2_lines_note(cls, costs: CostModel) -> str:
        """``"<lines>, an estimate (<source>)"`` for the report: the cited cost's source
        where the proposal adds code, else why it adds none."""
        source = cls.el2_lines_source
        if cls.el2_loc_cost:
            source = CostModel.model_fields[cls.el2_loc_cost].json_schema_extra["source"]
        return f"{cls.el2_lines(costs):.0f}, an estimate ({source})"

    # ---- hooks (default: nothing) ------------------------------------------------------

    def its_initiator(self, machine: Machine) -> Initiator | None:
        """Who performs KVM's vITS accesses to guest memory (None: the host CPU)."""
        return None

    def after_probe(self, guest: Guest) -> Generator:
        yield from ()

    def on_table_alloc(self, guest: Guest, addr: int, size: int) -> Generator:
        yield from ()

    def on_itt_alloc(self, guest: Guest, addr: int, size: int) -> Generator:
        yield from ()

    def on_itt_free(self, guest: Guest, addr: int, size: int) -> Generator:
        yield from ()

    def before_mmio(self, machine: Machine, offset: int, val: int) -> Generator:
        """EL2 sees a guest ITS register write first; returning an int hands the host that
        value instead (None: the guest's own)."""
        yield from ()

    def after_mmio(self, machine: Machine, offset: int, val: int) -> Generator:
        """The host has handled (or deferred) the trapped write; EL2 returns to the guest."""
        yield from ()

    def before_process(self, machine: Machine, offset: int, val: int) -> Generator:
        """The host is about to run the command queue (a GITS_CWRITER write)."""
        yield from ()

    def after_process(self, machine: Machine) -> Generator:
        """EL2 regains control after the host has run the command queue."""
        yield from ()

    # ---- migration ------------------------------------------------------------------------

    def save(self, world: World) -> Generator[object, object, Payload]:
        return (yield from kvm_save_tables(world, world.src))

    def restore(self, world: World, payload: Payload) -> Generator:
        yield from kvm_restore_tables(world, world.dst, payload)


def _its_entries(machine: Machine) -> int:
    its = machine.host.its
    return len(its.devices) + sum(len(d.ites) for d in its.devices.values()) + len(its.collections)


def kvm_save_tables(world: World, machine: Machine) -> Generator[object, object, Payload]:
    """KVM_DEV_ARM_ITS_SAVE_TABLES and SAVE_PENDING_TABLES: state into guest memory."""
    host = machine.host
    costs = world.costs
    error = host.its.save_tables()
    if error is not None:
        world.its_errors.append(f"{machine.name} SAVE_TABLES: {error}")
    error = host.its.save_pending_tables()
    if error is not None:
        world.its_errors.append(f"{machine.name} SAVE_PENDING_TABLES: {error}")
    cost = 2 * costs.ioctl_us + _its_entries(machine) * costs.guest_entry_us
    yield world.charge(host.name, cost)
    return Payload(regs=host.its_regs())


def kvm_restore_tables(world: World, machine: Machine, payload: Payload) -> Generator:
    """Registers, then KVM_DEV_ARM_ITS_RESTORE_TABLES, then GITS_CTLR."""
    host = machine.host
    yield from host.restore_regs(payload.regs)
    error = host.its.restore_tables()
    if error is not None:
        world.its_errors.append(f"{machine.name} RESTORE_TABLES: {error}")
    cost = world.costs.ioctl_us + _its_entries(machine) * world.costs.guest_entry_us
    yield world.charge(host.name, cost)
    host.enable_its(payload.regs)


TRAP_HOOKS = ("before_mmio", "after_mmio", "before_process", "after_process")


def hooks_of(proposal: Proposal) -> frozenset[str]:
    """The trap-path hooks (:data:`TRAP_HOOKS`) ``proposal`` replaces. The base class's
    yield nothing and return None, so a caller may skip those (one generator fewer per
    trap) and behave the same."""
    return frozenset(
        name
        for name in TRAP_HOOKS
        if name in getattr(proposal, "__dict__", ())  # (a plugin's class may use __slots__)
        or getattr(type(proposal), name) is not getattr(Proposal, name)
    )
