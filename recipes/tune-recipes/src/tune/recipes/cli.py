"""The ``tune`` command line: one sub-command per module in ``tune.recipes.commands``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from tune.recipes._version import __version__
from tune.recipes.commands import cat, cp, download, ls, run, validate
from tune.recipes.config import ConfigError, ConfigValidationError

COMMANDS = (ls, cp, cat, validate, run, download)
# Mistakes a user fixes from the message alone: one clean error, no traceback.
USER_ERRORS = (
    ConfigError,
    ConfigValidationError,
    LookupError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tune`` command."""
    parser = argparse.ArgumentParser(
        prog="tune",
        description="tune: PyTorch-native post-training for large language models.",
    )
    parser.add_argument("--version", action="version", version=f"tune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a ``tune`` command line; ``key=value`` items may sit anywhere among the options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # key=value items placed between options land here; anything else is a mistake.
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.print_help = parser.print_help
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tune`` console script; returns the exit status."""
    # Under a launcher only rank 0 logs INFO; other ranks log warnings and errors.
    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if getattr(args, "func", None) is None:
        args.print_help()
        return 0
    try:
        return int(args.func(args))
    except USER_ERRORS as exc:
        if getattr(args, "recipe_started", False):
            raise  # errors from inside a recipe keep their traceback
        message = exc.args[0] if isinstance(exc, LookupError) and exc.args else exc
        print(f"tune {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
