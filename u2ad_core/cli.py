"""The ``u2ad`` command (also ``python -m u2ad_core``).

Each subcommand lives in the module that does the work: the module defines
``cli_register(subparsers)``, which adds its parser(s) and sets ``func`` to a callable
``func(args) -> int``. This file only lists the modules, so the work stays next to its code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from u2ad_core import __version__

__all__ = ["main", "build_parser"]

# module -> registers one or more subcommands (listed here in the order shown by --help)
COMMAND_MODULES = (
    "u2ad_core.book.build",  # book
    "u2ad_core.data.phantom",  # phantom
    "u2ad_core.data.preprocess",  # preprocess
    "u2ad_core.experiments.bench",  # bench mc
    "u2ad_core.method.train",  # pretrain, adapt
    "u2ad_core.method.infer",  # infer
    "u2ad_core.book.sweep",  # sweep
    "u2ad_core.experiments.budget",  # budget
    "u2ad_core.data.fetch",  # data fetch
    "u2ad_core.book.sitecheck",  # sitecheck
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="u2ad",
        description="U2AD: uncertainty-based unsupervised anomaly detection in spinal-cord MRI.",
    )
    parser.add_argument("--version", action="version", version=f"u2ad_core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a module that has not landed yet
            if exc.name == name:
                continue
            raise
        module.cli_register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
