"""`pkvm-sim proposals`: every registered proposal, built-in or plugin, with its traits."""

from __future__ import annotations

import argparse

from sim.commands.common import add_json_argument, check_json

# A proposal's class attributes that say what it is (sim/proposals/base.py).
TRAITS = (
    "protected",
    "guest_shares_tables",
    "host_claims",
    "its_behind_iommu",
    "kvm_clears_entries",
    "el2_loc_cost",
)


def register(sub) -> None:
    p = sub.add_parser(
        "proposals",
        help="list every proposal (built-in and plugins) with its summary and traits",
        epilog="examples:\n  pkvm-sim proposals\n  pkvm-sim proposals --json -",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_json_argument(p, "the list")
    p.set_defaults(func=main)


def rows() -> list[dict]:
    from sim.proposals import PROPOSALS
    from sim.registry import PROPOSAL_GROUP, source

    return [
        {
            "name": name,
            "summary": cls.summary,
            "source": source(PROPOSAL_GROUP, name),
            **{trait: getattr(cls, trait) for trait in TRAITS},
        }
        for name, cls in PROPOSALS.items()
    ]


def main(args: argparse.Namespace) -> int:
    from sim.commands.console import table

    check_json(args)
    data = rows()
    table(
        None,
        ["proposal", "summary", "traits", "from"],
        [
            [
                r["name"],
                r["summary"],
                ", ".join(t.replace("_", " ") for t in TRAITS if r[t] is True),
                r["source"],
            ]
            for r in data
        ],
    )
    if args.json:
        from sim.output import write_json
        from sim.provenance import provenance

        write_json(args.json, {"provenance": provenance(), "proposals": data})
    return 0
