"""The ``tune`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tune.recipes._version import __version__
from tune.recipes.discovery import installed_recipes


def _cmd_ls(args: argparse.Namespace) -> int:
    recipes = installed_recipes()
    if not recipes:
        print("No recipes installed.")
        return 0
    width = max(len(r.name) for r in recipes)
    print(f"{'RECIPE'.ljust(width)}  PROVIDED BY")
    for r in recipes:
        print(f"{r.name.ljust(width)}  {r.distribution} ({r.target})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tune`` command."""
    parser = argparse.ArgumentParser(
        prog="tune",
        description="tune: PyTorch-native post-training for large language models.",
    )
    parser.add_argument("--version", action="version", version=f"tune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    ls = sub.add_parser("ls", help="list installed recipes")
    ls.set_defaults(func=_cmd_ls)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tune`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
