"""``tune run <recipe> --config <name|path> [key=value ...]``: in-process, or under torchrun."""

from __future__ import annotations

import argparse
import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tune.dist.launch import (
    add_torchrun_arguments,
    build_torchrun_argv,
    launch_world_size,
    torchrun_args,
)
from tune.recipes.config import load_config
from tune.recipes.discovery import find_config, is_recipe_file, load_recipe, load_recipe_file
from tune.train.loggers.redaction import REDACTED, is_secret_key

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tune run``."""
    p = sub.add_parser(
        "run",
        help="run a recipe",
        description="Without launch flags the recipe runs in this process and reads RANK / "
        "WORLD_SIZE from the environment (so a plain torchrun works too); with any launch flag "
        "the same recipe and config run on every rank under torch.distributed.run.",
    )
    p.add_argument("recipe", help="an installed recipe (`tune ls`) or a recipe file (loop.py)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides")
    p.add_argument("--config", required=True, help="bundled config name or a YAML file")
    p.add_argument("--allow-import", action="append", default=[], metavar="PATTERN")
    add_torchrun_arguments(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Validate, then run here or relaunch under torchrun; returns the exit status."""
    from_file = is_recipe_file(args.recipe)
    recipe = load_recipe_file(args.recipe) if from_file else load_recipe(args.recipe)
    target = str(Path(args.recipe).expanduser().resolve()) if from_file else args.recipe
    path, _ = find_config(args.config, recipe.name)
    flags = torchrun_args(args)
    common = {"recipe": recipe.name, "allow_imports": args.allow_import}
    if flags:
        # Fail on a bad config here, once, before starting any rank.
        world_size = launch_world_size(flags)
        load_config(path, recipe.config_class, args.overrides, world_size=world_size, **common)
        argv = rank_argv(flags, target, str(path.resolve()), args.overrides, args.allow_import)
        logger.info("launching: %s", " ".join(_redacted(argv)))
        return subprocess.call(argv)
    config = load_config(path, recipe.config_class, args.overrides, fetch_hub=True, **common)
    run_recipe = recipe.load_run()
    args.recipe_started = True
    run_recipe(config)
    return 0


def rank_argv(
    flags: Sequence[str],
    recipe: str,
    config: str,
    overrides: Sequence[str] = (),
    allow_imports: Sequence[str] = (),
) -> list[str]:
    """torchrun running ``tune run <recipe>`` in-process on every rank, each given the allow list."""
    allow = [a for pattern in allow_imports for a in ("--allow-import", pattern)]
    cmd = ["run", recipe, "--config", config, *allow, *overrides]
    return build_torchrun_argv(flags, "tune.recipes", cmd, prog="tune run")


def _redacted(argv: list[str]) -> list[str]:
    """``argv`` with the values of secret-named ``key=value`` overrides replaced."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and not key.startswith("-") and is_secret_key(key.rpartition(".")[2], value):
            arg = f"{key}={REDACTED}"
        out.append(arg)
    return out
