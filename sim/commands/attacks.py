"""`pkvm-sim attacks`: every registered host behaviour, built-in or plugin, with its
parameters, as `audit --attack KIND:PARAM=VALUE` and a scenario's host.behaviours take them."""

from __future__ import annotations

import argparse

from sim.commands.common import add_json_argument, check_json


def register(sub) -> None:
    p = sub.add_parser(
        "attacks",
        help="list every host behaviour (built-in and plugins) with its parameters",
        epilog="examples:\n  pkvm-sim attacks\n"
        "  pkvm-sim audit small-vm --attack read-everything:period_ms=2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_json_argument(p, "the list")
    p.set_defaults(func=main)


def rows() -> list[dict]:
    from sim.registry import BEHAVIOUR_GROUP, parameters, source
    from sim.scenario import ATTACK_SPECS, ATTACKS

    return [
        {
            "kind": kind,
            "summary": " ".join((spec.__doc__ or "").split("\n\n")[0].split()).replace("``", ""),
            "parameters": parameters(spec),
            "source": source(BEHAVIOUR_GROUP, kind),
        }
        for kind, spec in zip(ATTACKS, ATTACK_SPECS, strict=True)
    ]


def main(args: argparse.Namespace) -> int:
    from sim.commands.console import table
    from sim.registry import describe_parameter

    check_json(args)
    data = rows()
    table(
        None,
        ["attack", "what the host does", "parameters", "from"],
        [
            [
                r["kind"],
                r["summary"],
                ", ".join(describe_parameter(p) for p in r["parameters"]) or "none",
                r["source"],
            ]
            for r in data
        ],
    )
    if args.json:
        from sim.output import write_json
        from sim.provenance import provenance

        write_json(args.json, {"provenance": provenance(), "attacks": data})
    return 0
