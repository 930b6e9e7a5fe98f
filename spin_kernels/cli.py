"""The ``spin`` command: train, eval, compress, info, demo, analyze, family, bench, kernels-report.

Each command family lives in its own module and adds its subcommands through ``register(subparsers)``;
this file only assembles them.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute subcommands, in the order they appear in `spin --help`.
COMMAND_MODULES = ("spin_kernels.train.cli", "spin_kernels.analysis.cli", "spin_kernels.perf_cli")


def build_parser(modules: tuple[str, ...] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """Return the ``spin`` argument parser with the command families of ``modules`` registered."""
    parser = argparse.ArgumentParser(prog="spin", description="SPIN weight-shared vision networks: "
                                     "train, evaluate, compress, analyse and benchmark.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None, modules: tuple[str, ...] = COMMAND_MODULES) -> int:
    """Entry point of the ``spin`` console script (``modules``: which command families to offer)."""
    parser = build_parser(modules)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
