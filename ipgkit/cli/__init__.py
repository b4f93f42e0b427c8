"""The ``ipgkit`` command: ``ipgkit <subcommand> --help`` documents each one.

One module per stage registers its subcommands; flags that set a config come from the config
dataclass itself (:mod:`ipgkit.cli.flags`), so defaults and help cannot drift from the library.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from . import attribution, demo, experiments, models, training

STAGES = (models, attribution, training, experiments, demo)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand (each stage's module adds its own)."""
    parser = argparse.ArgumentParser(prog="ipgkit", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        stage.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``ipgkit`` with ``argv``; input errors print one line and return 2."""
    args = build_parser().parse_args(argv)
    from ipgkit.errors import IpgkitError

    try:
        return args.run(args)
    except IpgkitError as error:
        print(f"ipgkit {args.command}: error: {error}", file=sys.stderr)
        return 2
