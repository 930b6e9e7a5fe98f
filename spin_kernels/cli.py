"""The ``spin`` command: train, eval, compress, info, demo, analyze, family, bench, kernels-report.

Each command family lives in its own module and adds its subcommands through ``register(subparsers)``;
this file assembles them and owns the one path every user error takes: a bad flag value, a missing or unusable
file, a dataset problem or a checkpoint that does not fit ends as one line on stderr,
``spin VERB: error: <what, naming the flag or file, and what was expected>``, and exit status 2 — never a traceback.
Exit status 0 is success; 143 / 130 mean ``spin train`` stopped at a checkpoint on SIGTERM / SIGINT (resumable).
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys

# Modules that contribute subcommands, in the order they appear in `spin --help`.
COMMAND_MODULES = ("spin_kernels.train.cli", "spin_kernels.analysis.cli", "spin_kernels.perf_cli")
USAGE_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``spin train``'s full usage is dozens of lines)."""

    def error(self, message: str):
        """Print ``PROG: error: MESSAGE (see PROG --help)`` and exit with status 2."""
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(modules: tuple[str, ...] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """Return the ``spin`` argument parser with the command families of ``modules`` registered."""
    parser = OneLineParser(prog="spin", description="SPIN weight-shared vision networks: "
                           "train, evaluate, compress, analyse and benchmark.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the input cannot be used" (flags, files, data, checkpoints), not a bug."""
    from .data import (
        DataError,  # the data package pulls in timm; imported only when a command runs
    )

    return (ValueError, OSError, DataError)


def one_line(error: BaseException) -> str:
    """The message of ``error`` as one line.

    An exception re-raised from a DataLoader worker carries the worker's whole traceback in its message; the
    user needs only its last line (the original message).
    """
    text = str(error).strip() or type(error).__name__
    if "Original Traceback" in text:
        last = text.splitlines()[-1]  # "package.module.DataError: the message"
        text = re.sub(rf"^[\w.]*\b{type(error).__name__}: ", "", last)
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def main(argv: list[str] | None = None, modules: tuple[str, ...] = COMMAND_MODULES) -> int:
    """Entry point of the ``spin`` console script (``modules``: which command families to offer)."""
    parser = build_parser(modules)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a flag error already printed as one line (2): a status, not an exit
        return int(e.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return USAGE_ERROR
    try:
        return int(args.func(args) or 0)
    except user_errors() as e:
        print(f"spin {args.command}: error: {one_line(e)}", file=sys.stderr, flush=True)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
