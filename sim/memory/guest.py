"""A guest's physical address space as one initiator sees it.

KVM reaches guest memory with ``kvm_read_guest()`` / ``kvm_write_guest()``: an address
outside every memslot fails with ``-EFAULT``; inside one, the access is an ordinary
memory access by the host and so passes the stage-2 check (under pKVM a protected guest's
page faults). The guest itself reaches the same bytes through its own stage-2. Both go
through :class:`~sim.memory.access.MemorySystem`; this class only adds the memslot bound.
The guest's IPA equals the physical address (a simplification; see ``ownership``).
"""

from __future__ import annotations

from sim.memory.access import Initiator, MemorySystem


class NotGuestMemory(Exception):
    """A guest physical address outside the guest's RAM (no memslot covers it)."""


class GuestMemory:
    def __init__(self, memory: MemorySystem, who: Initiator, ram_base: int, ram_size: int):
        self.memory = memory
        self.who = who
        self.ram_base = ram_base
        self.ram_size = ram_size
        self.ram_end = ram_base + ram_size

    def visible(self, gpa: int, length: int = 1) -> bool:
        """``kvm_is_visible_gfn()``: every byte lies in guest RAM."""
        return self.ram_base <= gpa and gpa + length <= self.ram_base + self.ram_size

    def _bound(self, gpa: int, length: int) -> None:
        if not self.visible(gpa, length):
            raise NotGuestMemory(f"{self.who.name}: GPA {gpa:#x}+{length:#x} is not guest RAM")

    def read(self, gpa: int, length: int) -> bytes:
        if not self.ram_base <= gpa <= self.ram_end - length:
            self._bound(gpa, length)
        return self.memory.read(self.who, gpa, length)

    def write(self, gpa: int, data: bytes) -> None:
        if not self.ram_base <= gpa <= self.ram_end - len(data):
            self._bound(gpa, len(data))
        self.memory.write(self.who, gpa, data)

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, value.to_bytes(8, "little"))
