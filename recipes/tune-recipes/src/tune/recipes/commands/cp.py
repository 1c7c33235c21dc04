"""``tune cp <config|recipe> <dest>``: copy a bundled config or a recipe's source to edit."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from tune.recipes.discovery import find_config, installed_recipes, load_recipe


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tune cp``."""
    p = sub.add_parser("cp", help="copy a bundled config or a recipe's source file for editing")
    p.add_argument("name", help="a config (sft/tiny_cpu_lora) or a recipe (sft)")
    p.add_argument("dest", help="destination file or existing directory")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Copy; refuse to overwrite without ``--force``."""
    if args.name in {r.name for r in installed_recipes()}:
        src = load_recipe(args.name).source_file()
    else:
        src, _ = find_config(args.name)
    dest = Path(args.dest)
    if dest.is_dir() or args.dest.endswith(("/", "\\")):
        dest = dest / src.name
    if dest.exists() and not args.force:
        raise FileExistsError(f"{dest} exists; pass --force to overwrite")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    print(f"Copied {src} to {dest}")
    return 0
