"""``tune ls``: installed recipes and bundled configs."""

from __future__ import annotations

import argparse

from tune.recipes.discovery import bundled_configs, installed_recipes


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tune ls``."""
    p = sub.add_parser("ls", help="list installed recipes and bundled configs")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Print a table of recipes, then one of configs."""
    recipes = installed_recipes()
    if not recipes:
        print("No recipes installed.")
    else:
        width = max(len("RECIPE"), *(len(r.name) for r in recipes))
        print(f"{'RECIPE'.ljust(width)}  PROVIDED BY")
        for r in recipes:
            print(f"{r.name.ljust(width)}  {r.distribution} ({r.target})")
    configs = bundled_configs()
    if configs:
        width = max(len(c.qualified_name) for c in configs)
        print(f"\n{'CONFIG'.ljust(width)}  FILE")
        for c in configs:
            print(f"{c.qualified_name.ljust(width)}  {c.path.name}")
    return 0
