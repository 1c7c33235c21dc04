"""The ``tune`` command line: one sub-command per module in ``tune.recipes.commands``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from tune.config import ConfigError, ConfigValidationError
from tune.recipes._version import __version__
from tune.recipes.commands import cat, cp, download, gguf, init, ls, plan, run, validate
from tune.train.loggers.redaction import redact_message

COMMANDS = (ls, cp, cat, init, validate, plan, run, download, gguf)
# Mistakes a user fixes from the message alone: one clean error on stderr, exit status 2, no
# traceback. Library errors about inputs (a bad row, tensor, file, checkpoint) are ValueErrors
# or OSErrors that name what is wrong; ImportError is a missing optional dependency.
USER_ERRORS = (
    ConfigError,
    ConfigValidationError,
    ValueError,
    KeyError,
    LookupError,
    OSError,
    ModuleNotFoundError,
)
USER_ERROR_STATUS = 2
INTERRUPTED_STATUS = 130
DEBUG_ENV = "TUNE_DEBUG"


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
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"tune {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED_STATUS
    except Exception as exc:
        if debug or not is_user_error(exc):
            raise
        print(f"tune {args.command}: error: {error_message(exc)}", file=sys.stderr)
        if getattr(args, "recipe_started", False):
            print(f"(set {DEBUG_ENV}=1 to see the traceback)", file=sys.stderr)
        return USER_ERROR_STATUS


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` reports a bad input or setting (printed as one line) rather than a bug."""
    if isinstance(exc, USER_ERRORS):
        return True
    # Bad checkpoints, a locked run directory, all-non-finite losses: the libraries' own error
    # types (imported by then if they were raised).
    for module, name in (("tune.checkpoint", "CheckpointError"), ("tune.train", "NonFiniteError")):
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, name)):
            return True
    return False


def error_message(exc: BaseException) -> str:
    """The text a user sees for ``exc``: its own words, its type where that helps, no secrets."""
    if isinstance(exc, KeyError | LookupError) and exc.args and isinstance(exc.args[0], str):
        text = exc.args[0]
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    if isinstance(exc, ModuleNotFoundError):
        text = f"{type(exc).__name__}: {text}"
    return redact_message(text)


if __name__ == "__main__":
    sys.exit(main())
