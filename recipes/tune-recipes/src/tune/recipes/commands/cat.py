"""``tune cat <config>``: print a bundled (or local) config."""

from __future__ import annotations

import argparse

from tune.recipes.discovery import find_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tune cat``."""
    p = sub.add_parser("cat", help="print a config")
    p.add_argument("config", help="bundled config name (e.g. sft/tiny_cpu_lora) or a file")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Print the config file as it is."""
    path, _ = find_config(args.config)
    print(path.read_text(encoding="utf-8"), end="")
    return 0
