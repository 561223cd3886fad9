"""The cost model: every default names its source and why it was chosen.

Costs are in microseconds unless the field name says otherwise. A scenario overrides
any field under ``costs:``; an unknown name or a negative value is an error. Every
estimate carries a plausible range (``plausible=(low, high, source)``), which
``pkvm-sim sensitivity`` varies one at a time and jointly (sim/sensitivity.py). The EL2
line counts are estimates too but enter no simulation; they are not varied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# Each unit's bounds, beyond which a figure is a typo and a run would never end: (rate?,
# upper bound). A rate must be above zero (a copy at 0 GB/s never ends).
UNIT_BOUNDS: dict[str, tuple[bool, float]] = {
    "us": (False, 1e6),  # one second per operation
    "ms": (False, 600_000.0),  # as long as the longest workload
    "GB/s": (True, 10_000.0),
    "Gb/s": (True, 100_000.0),
    "lines": (False, 1e6),
}

# Dall, Li, Lim, Nieh, Koloventzos, "ARM Virtualization: Performance and Architectural
# Implications", ISCA 2016, microbenchmark table (cycles on a 2.4 GHz APM X-Gene; figures
# as recalled here, the table was not re-read for this model): hypercall 6,500 KVM ARM vs
# 376 Xen ARM; interrupt-controller trap 7,370 vs 1,356. At 2.4 GHz: 2.7 us / 0.16 us and
# 3.1 us / 0.57 us.
DALL_2016 = "Dall et al., ISCA 2016 (hypercall 376-6,500 cycles, GIC trap 1,356-7,370 at 2.4 GHz)"


def cited(
    default: float,
    unit: str,
    source: str,
    why: str,
    plausible: tuple[float, float, str] | None = None,
) -> Any:
    """A cost field: ``default`` in ``unit``, with its source and a one-line rationale.

    ``plausible`` is (low, high, source) for an estimate: the range the sensitivity
    analysis (``sim/sensitivity.py``) varies it over, and why that range.
    """
    extra: dict[str, Any] = {"unit": unit, "source": source}
    if plausible is not None:
        low, high, range_source = plausible
        assert 0 < low <= default <= high, f"{low} <= {default} <= {high}"
        extra |= {"low": low, "high": high, "range_source": range_source}
    return Field(default=default, ge=0, description=why, json_schema_extra=extra)


class CostModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _bounded(cls, value: float, info: ValidationInfo) -> float:
        """Every cost finite (allow_inf_nan) and within its unit's UNIT_BOUNDS."""
        unit = (cls.model_fields[info.field_name].json_schema_extra or {}).get("unit")
        rate, high = UNIT_BOUNDS.get(unit, (False, float("inf")))
        if rate and value <= 0:
            raise ValueError(f"expected a rate above 0 {unit}")
        if value > high:
            raise ValueError(f"expected at most {high:g} {unit}")
        return value

    guest_hvc_us: float = cited(
        1.0,
        "us",
        "estimate: an EL2-handled trap is a few hundred cycles (Dall et al., ISCA"
        " 2016, Xen ARM path; table not verified here) plus pKVM's state checks and stage-2 update",
        "a protected guest's MEM_SHARE / MEM_UNSHARE, handled at EL2 without visiting the host",
        plausible=(
            0.15,
            3.0,
            DALL_2016
            + ": low Xen ARM's EL2-handled hypercall (0.16 us), high KVM ARM's split-mode "
            "round trip (2.7 us) plus the share's checks",
        ),
    )
    host_hvc_us: float = cited(
        0.5,
        "us",
        "estimate: the same exception round trip from the nVHE host, no world switch",
        "a host hypercall to EL2 (one page per call, as mem_protect.c takes them)",
        plausible=(
            0.1,
            2.0,
            DALL_2016
            + ": low the bare EL2 round trip, high with host_mmu lock contention and pKVM's checks",
        ),
    )
    tlbi_us: float = cited(
        1.0,
        "us",
        "estimate: TLBI IPAS2E1IS + DSB ISH + TLBI VMALLE1IS + DSB ISH, broadcast",
        "one stage-2 invalidation per valid-to-invalid leaf change (mem_protect.c, v7.1)",
        plausible=(
            0.1,
            5.0,
            "local TLBI + DSB is ~100 ns; a broadcast DVM invalidation waits for every PE"
            " in the inner-shareable domain, microseconds on many-core servers (estimate)",
        ),
    )
    s2_update_us: float = cited(
        0.25,
        "us",
        "estimate: EL2 walks the stage-2, checks both sides' state and rewrites the leaf and"
        " the hyp_page state, a few hundred cycles per page",
        "EL2 work of one page-state transition, on top of any hypercall and TLB invalidation",
        plausible=(
            0.05,
            1.0,
            "100 cycles (leaf already cached) to ~2,400 cycles (4-level walk, hyp_page "
            "refcount, host and guest locks) at 2.4 GHz (estimate)",
        ),
    )
    el2_trap_entry_us: float = cited(
        0.5,
        "us",
        "estimate: exception entry, ESR decode and vCPU context save before EL2 handles a trap",
        "time between a guest's MMIO write trapping and EL2 acting on it",
        plausible=(
            0.1,
            1.5,
            DALL_2016 + ": an exception entry and context save is a fraction of the 376-cycle Xen "
            "hypercall up to half of KVM ARM's",
        ),
    )
    mmio_trap_us: float = cited(
        3.0,
        "us",
        "estimate: Dall et al., ISCA 2016 put a KVM ARM interrupt-controller trap at thousands"
        " of cycles (table not verified here); 3 us is ~7,000 cycles at 2.4 GHz",
        "a guest ITS register write traps to EL2, which forwards it to the host's vITS",
        plausible=(
            0.5,
            5.0,
            DALL_2016 + ": low Xen ARM's GIC trap (0.57 us), high KVM ARM's (3.1 us) plus pKVM's "
            "extra hop from EL2 to the host",
        ),
    )
    its_cmd_us: float = cited(
        0.5,
        "us",
        "estimate: one vgic_its_handle_command() under its_lock, list walks and an allocation",
        "host CPU to emulate one 32-byte command once the trap has been taken",
        plausible=(
            0.1,
            5.0,
            "a short command under its_lock (~100 ns) up to INV/MOVI/DISCARD walking the "
            "LPI list and the translation cache (estimate)",
        ),
    )
    guest_entry_us: float = cited(
        0.05,
        "us",
        "estimate: kvm_write_guest()/kvm_read_guest() of 8 bytes, a uaccess and a memslot lookup",
        "per DTE/ITE/CTE KVM writes or reads in guest memory during save and restore",
        plausible=(
            0.01,
            0.5,
            "an 8-byte copy_to_user into a cached memslot (~10 ns) up to a memslot "
            "search, a cold page and mark_page_dirty (estimate)",
        ),
    )
    ioctl_us: float = cited(
        1.0,
        "us",
        "measured 0.35 us for a KVM device-fd ioctl on this machine (x86); 1 us for arm64 plus"
        " kvm->lock and kvm_trylock_all_vcpus (estimate)",
        "one KVM_{GET,SET}_DEVICE_ATTR round trip from the VMM",
        plausible=(
            0.3,
            10.0,
            "low: 0.35 us measured for a device-fd ioctl here; high: "
            "kvm_trylock_all_vcpus taking every vCPU mutex of a large VM (estimate)",
        ),
    )
    memcpy_gbps: float = cited(
        10.0,
        "GB/s",
        "measured: memoryview copies of 4 KiB ran at 9.5 GB/s on this machine",
        "copying serialized state between kernel and VMM buffers",
        plausible=(
            5.0,
            30.0,
            "one arm64 core copies a few to tens of GB/s; 9.5 GB/s measured here for 4 "
            "KiB memoryview copies",
        ),
    )
    el2_seal_gbps: float = cited(
        2.0,
        "GB/s",
        "estimate: AES-GCM on one core with the Armv8 Cryptographic"
        " Extensions, a few GB/s; no pKVM figure exists (upstream migrates no protected VM)",
        "EL2 encrypts and authenticates each guest-private page the save dirtied before the"
        " host may send it",
        plausible=(
            0.5,
            10.0,
            "AES-GCM with the Armv8 Cryptographic Extensions: ~0.5 GB/s on small cores to"
            " ~10 GB/s on server cores (estimate, no pKVM figure exists)",
        ),
    )
    network_gbps: float = cited(
        10.0,
        "Gb/s",
        "common 10 GbE migration link; QEMU's own default cap is MAX_THROTTLE, 128 MiB/s",
        "migration stream bandwidth during stop-and-copy",
        plausible=(
            1.0,
            100.0,
            "low: QEMU's default MAX_THROTTLE cap, 128 MiB/s (~1.07 Gb/s, "
            "migration/options.c); high: a 100 GbE link",
        ),
    )
    el2_cmd_parse_us: float = cited(
        0.1,
        "us",
        "estimate: decode one 32-byte command at EL2 and look up its DeviceID",
        "share-cmdq-snoop parses every new command on each CWRITER trap",
        plausible=(
            0.02,
            0.5,
            "a 32-byte decode and a DeviceID lookup: tens of cycles to a hash-table miss "
            "(estimate)",
        ),
    )
    el2_fixmap_us: float = cited(
        1.2,
        "us",
        "estimate from commit c353fde17d8f (May 2025): guest cache maintenance over a PMD"
        " through a 4K fixmap ~700 us against ~100 us with a PMD fixmap, 'mostly due to TLBI"
        " on hyp_fixmap_unmap': (700 - 100) / 512 pages = ~1.2 us per 4K map and unmap",
        "share-cmdq-shadow maps each guest queue page it copies from on a CWRITER trap",
        plausible=(
            0.2,
            3.0,
            "the PMD-fixmap figure of the same commit (~100 us / 512 pages = 0.2 us) up to a"
            " broadcast TLBI per unmap on a many-core server (estimate)",
        ),
    )
    el2_creadr_poll_us: float = cited(
        0.5,
        "us",
        "estimate (sweep 0.05-1): its_emulate.c submit_single_cmd() reads GITS_CREADR after"
        " each command (readq_relaxed of the ITS, a device read of a few hundred ns); the vITS"
        " variant reads the CREADR KVM publishes in a host page shared with EL2",
        "share-cmdq-shadow polls CREADR once per command it forwarded, as the series does",
        plausible=(0.05, 1.0, "the sweep the estimate names: a shared-page load to a device read"),
    )
    iommu_map_us: float = cited(
        1.0,
        "us",
        "estimate: one SMMU page-table update by EL2, same order as a stage-2 update",
        "iommu-gated-its maps each table page for the ITS",
        plausible=(
            0.2,
            5.0,
            "an SMMUv3 page-table write, up to a CMD_TLBI + CMD_SYNC round trip through "
            "the command queue, microseconds (estimate)",
        ),
    )
    msi_inject_us: float = cited(
        2.0,
        "us",
        "estimate: irqfd -> vgic_its_inject_cached_translation -> kick vCPU",
        "host CPU to deliver one MSI through the vITS",
        plausible=(
            0.5,
            5.0,
            "irqfd wakeup and vgic_its_inject_cached_translation, up to an IPI kick of a "
            "running vCPU (estimate)",
        ),
    )
    other_downtime_ms: float = cited(
        30.0,
        "ms",
        "estimate: final dirty-RAM round and every other device, one tenth of QEMU's 300 ms budget",
        "stop-and-copy work that is not the ITS, to express the ITS share of downtime",
        plausible=(
            5.0,
            300.0,
            "low: an idle small VM's last dirty round; high: QEMU's whole default "
            "downtime budget, DEFAULT_MIGRATE_SET_DOWNTIME 300 ms",
        ),
    )
    downtime_budget_ms: float = cited(
        300.0,
        "ms",
        "QEMU migration/options.c: DEFAULT_MIGRATE_SET_DOWNTIME 300 (ms)",
        "the downtime a default QEMU migration aims for",
    )
    el2_loc_share_host_claims: float = cited(
        60,
        "lines",
        "estimate: one hypercall handler looping __pkvm_guest_share_host over host-named pages",
        "EL2 code the proposal adds (trusted computing base)",
    )
    el2_loc_share_cmdq_snoop: float = cited(
        350,
        "lines",
        "counted: vgic-its.c (v6.12) command decoders, MAPD/MAPC/MAPTI handlers, dispatch and"
        " queue walk are 346 lines; ~150 minimal, ~350 validating untrusted input",
        "EL2 code the proposal adds (trusted computing base)",
    )
    el2_loc_share_cmdq_shadow: float = cited(
        400,
        "lines",
        "estimate, counted by function in its_emulate.c of Sebastian Ene's series (March"
        " 2026; raspberry-vanilla/android_kernel_brcm_rpi 1904225b8f2d): the command-queue"
        " path (register dispatch, cbaser/cwriter_write, process_cmd, process_its_mapd,"
        " track_pfn*, get_num_itt_pages, submit_single_cmd, shadow-queue set-up and"
        " teardown) is ~400 lines; the vITS variant drops check_table_update and adds the"
        " forward to KVM",
        "EL2 code the proposal adds (trusted computing base)",
    )
    el2_loc_iommu_gated_its: float = cited(
        3000,
        "lines",
        "estimate: an EL2 SMMUv3 driver (Android's pKVM SMMU driver is several thousand lines)",
        "EL2 code the proposal adds (trusted computing base)",
    )

    @classmethod
    def table(cls) -> list[dict[str, Any]]:
        """Every parameter with its default, unit, source and rationale (for the report)."""
        rows = []
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra or {}
            rows.append(
                {
                    "name": name,
                    "default": info.default,
                    "unit": extra["unit"],
                    "source": extra["source"],
                    "why": info.description,
                    "low": extra.get("low"),
                    "high": extra.get("high"),
                    "range_source": extra.get("range_source"),
                }
            )
        return rows

    @classmethod
    def ranges(cls) -> dict[str, CostRange]:
        """Every estimate with its plausible range, in field order."""
        out = {}
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra or {}
            if "low" in extra:
                out[name] = CostRange(
                    name,
                    info.default,
                    extra["low"],
                    extra["high"],
                    extra["unit"],
                    extra["range_source"],
                )
        return out


@dataclass(frozen=True)
class CostRange:
    """An estimated cost's default and plausible range (low <= default <= high)."""

    name: str
    default: float
    low: float
    high: float
    unit: str
    source: str
