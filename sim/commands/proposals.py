"""`pkvm-sim proposals`: every registered proposal, built-in or plugin, with its traits."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
    p.add_argument("--json", metavar="FILE", help="write the list as JSON ('-': stdout)")
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


def write_json(data: object, where: str) -> None:
    text = json.dumps(data, indent=2, default=str) + "\n"
    if where == "-":
        sys.stdout.write(text)
    else:
        Path(where).write_text(text)


def main(args: argparse.Namespace) -> int:
    from sim.commands.console import table

    data = rows()
    if args.json:
        write_json(data, args.json)
        return 0
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
    return 0
