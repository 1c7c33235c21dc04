"""``tune validate <config> [key=value ...]``: parse and check a config without running it."""

from __future__ import annotations

import argparse
from typing import Literal

from tune.config import (
    ValidationContext,
    declared_recipe,
    to_container,
    validate_config,
    world_size_from_env,
)
from tune.recipes.config import load_config
from tune.recipes.discovery import find_config, load_recipe


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tune validate``."""
    p = sub.add_parser(
        "validate",
        help="check a config against its recipe's schema",
        description="What the config needs and this machine lacks (checkpoint and data paths, "
        "optional packages such as tensorboard or lm_eval, a Hub dataset neither cached nor "
        "reachable) is a warning for a bundled config (a template) and an error for your own "
        "file, one line per key with the fix. --paths changes it.",
    )
    p.add_argument("config", help="bundled config name or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides")
    p.add_argument("--recipe", help="the recipe (default: the config's `recipe:` key)")
    p.add_argument("--world-size", type=int, help="processes of the run (default: WORLD_SIZE or 1)")
    p.add_argument("--allow-import", action="append", default=[], metavar="PATTERN")
    p.add_argument("--paths", choices=["error", "warn"], help="how to report missing local paths")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Print warnings and ``OK``; errors propagate (the CLI prints them and exits 1)."""
    path, bundled_recipe = find_config(args.config, args.recipe)
    recipe_name = args.recipe or bundled_recipe or declared_recipe(path)
    if recipe_name is None:
        raise LookupError(
            f"{path}: cannot tell which recipe it is for: add `recipe: <name>` or pass --recipe"
        )
    recipe = load_recipe(recipe_name)
    world_size = args.world_size or world_size_from_env()
    config = load_config(
        path,
        recipe.config_class,
        args.overrides,
        recipe=recipe_name,
        allow_imports=args.allow_import,
        validate=False,
        import_gguf=False,
    )
    missing: Literal["error", "warn"] = args.paths or (
        "warn" if bundled_recipe is not None else "error"
    )
    context = ValidationContext(world_size=world_size, missing_paths=missing)
    for warning in validate_config(config, context, str(path)):
        print(warning)
    # imported here: it brings torch, which `tune --help` and `tune ls` do without
    from tune.checkpoint import check_output_apart
    from tune.recipes.common.run_directory import model_inputs, output_dir_of

    tree = to_container(config)
    if (out := output_dir_of(tree)) is not None:
        check_output_apart(out[1], dict(model_inputs(tree)), output_name=out[0])
    print(f"OK: {path} is a valid {recipe_name!r} config (world size {world_size})")
    return 0
