"""The cost model: every default names its source and why it was chosen.

Costs are in microseconds unless the field name says otherwise. A scenario overrides
any field under ``costs:``; an unknown name or a negative value is an error. Figures
marked "estimate" are the ones a sensitivity sweep should vary.
"""

from __future__ import annotations

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


def cited(default: float, unit: str, source: str, why: str) -> Any:
    """A cost field: ``default`` in ``unit``, with its source and a one-line rationale."""
    return Field(
        default=default, ge=0, description=why, json_schema_extra={"unit": unit, "source": source}
    )


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
        "estimate (sweep 0.3-3): an EL2-handled trap is a few hundred cycles (Dall et al., ISCA"
        " 2016, Xen ARM path; table not verified here) plus pKVM's state checks and stage-2 update",
        "a protected guest's MEM_SHARE / MEM_UNSHARE, handled at EL2 without visiting the host",
    )
    host_hvc_us: float = cited(
        0.5,
        "us",
        "estimate (sweep 0.2-2): the same exception round trip from the nVHE host, no world switch",
        "a host hypercall to EL2 (one page per call, as mem_protect.c takes them)",
    )
    tlbi_us: float = cited(
        1.0,
        "us",
        "estimate (sweep 0.1-5): TLBI IPAS2E1IS + DSB ISH + TLBI VMALLE1IS + DSB ISH, broadcast",
        "one stage-2 invalidation per valid-to-invalid leaf change (mem_protect.c, v7.1)",
    )
    s2_update_us: float = cited(
        0.25,
        "us",
        "estimate: EL2 walks the stage-2, checks both sides' state and rewrites the leaf and"
        " the hyp_page state, a few hundred cycles per page",
        "EL2 work of one page-state transition, on top of any hypercall and TLB invalidation",
    )
    el2_trap_entry_us: float = cited(
        0.5,
        "us",
        "estimate: exception entry, ESR decode and vCPU context save before EL2 handles a trap",
        "time between a guest's MMIO write trapping and EL2 acting on it",
    )
    mmio_trap_us: float = cited(
        3.0,
        "us",
        "estimate: Dall et al., ISCA 2016 put a KVM ARM interrupt-controller trap at thousands"
        " of cycles (table not verified here); 3 us is ~7,000 cycles at 2.4 GHz",
        "a guest ITS register write traps to EL2, which forwards it to the host's vITS",
    )
    its_cmd_us: float = cited(
        0.5,
        "us",
        "estimate: one vgic_its_handle_command() under its_lock, list walks and an allocation",
        "host CPU to emulate one 32-byte command once the trap has been taken",
    )
    guest_entry_us: float = cited(
        0.05,
        "us",
        "estimate: kvm_write_guest()/kvm_read_guest() of 8 bytes, a uaccess and a memslot lookup",
        "per DTE/ITE/CTE KVM writes or reads in guest memory during save and restore",
    )
    ioctl_us: float = cited(
        1.0,
        "us",
        "measured 0.35 us for a KVM device-fd ioctl on this machine (x86); 1 us for arm64 plus"
        " kvm->lock and kvm_trylock_all_vcpus (estimate, sweep 0.3-10)",
        "one KVM_{GET,SET}_DEVICE_ATTR round trip from the VMM",
    )
    memcpy_gbps: float = cited(
        10.0,
        "GB/s",
        "measured: memoryview copies of 4 KiB ran at 9.5 GB/s on this machine (sweep 5-30)",
        "copying serialized state between kernel and VMM buffers",
    )
    el2_seal_gbps: float = cited(
        2.0,
        "GB/s",
        "estimate (sweep 0.5-10): AES-GCM on one core with the Armv8 Cryptographic"
        " Extensions, a few GB/s; no pKVM figure exists (upstream migrates no protected VM)",
        "EL2 encrypts and authenticates each guest-private page the save dirtied before the"
        " host may send it",
    )
    network_gbps: float = cited(
        10.0,
        "Gb/s",
        "common 10 GbE migration link; QEMU's own default cap is MAX_THROTTLE, 128 MiB/s",
        "migration stream bandwidth during stop-and-copy",
    )
    el2_cmd_parse_us: float = cited(
        0.1,
        "us",
        "estimate: decode one 32-byte command at EL2 and look up its DeviceID",
        "share-cmdq-snoop parses every new command on each CWRITER trap",
    )
    el2_fixmap_us: float = cited(
        1.2,
        "us",
        "estimate from commit c353fde17d8f (May 2025): guest cache maintenance over a PMD"
        " through a 4K fixmap ~700 us against ~100 us with a PMD fixmap, 'mostly due to TLBI"
        " on hyp_fixmap_unmap': (700 - 100) / 512 pages = ~1.2 us per 4K map and unmap",
        "share-cmdq-shadow maps each guest queue page it copies from on a CWRITER trap",
    )
    el2_creadr_poll_us: float = cited(
        0.5,
        "us",
        "estimate (sweep 0.05-1): its_emulate.c submit_single_cmd() reads GITS_CREADR after"
        " each command (readq_relaxed of the ITS, a device read of a few hundred ns); the vITS"
        " variant reads the CREADR KVM publishes in a host page shared with EL2",
        "share-cmdq-shadow polls CREADR once per command it forwarded, as the series does",
    )
    iommu_map_us: float = cited(
        1.0,
        "us",
        "estimate: one SMMU page-table update by EL2, same order as a stage-2 update",
        "iommu-gated-its maps each table page for the ITS",
    )
    msi_inject_us: float = cited(
        2.0,
        "us",
        "estimate: irqfd -> vgic_its_inject_cached_translation -> kick vCPU",
        "host CPU to deliver one MSI through the vITS",
    )
    other_downtime_ms: float = cited(
        30.0,
        "ms",
        "estimate: final dirty-RAM round and every other device, one tenth of QEMU's 300 ms budget",
        "stop-and-copy work that is not the ITS, to express the ITS share of downtime",
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
                }
            )
        return rows
