"""``tune init [DIR]``: the tiny checkpoints and data that the bundled tiny configs read."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tune init``."""
    p = sub.add_parser(
        "init",
        help="write the tiny checkpoints and data the bundled tiny configs read",
        description="Writes checkpoints/tiny, tiny_teacher, tiny_student (random tiny Llamas with "
        "a BPE tokenizer) and data/*.jsonl under DIR, offline, in seconds; run the tiny configs "
        "from DIR. Existing paths are kept unless --force.",
    )
    p.add_argument("dir", nargs="?", default=".", type=Path, metavar="DIR", help="default: .")
    p.add_argument("--force", action="store_true", help="replace paths that exist")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Write what is missing (everything with ``--force``); print what was made and kept."""
    # imported here: it brings torch, which `tune --help` and `tune ls` do without
    from tune.recipes.tiny_workspace import TINY_WORKSPACE, init_tiny_workspace

    root: Path = args.dir
    done = init_tiny_workspace(root, force=args.force)
    for (relative, (what, _)), (_, status) in zip(TINY_WORKSPACE.items(), done, strict=True):
        note = " (exists; --force replaces it)" if status == "kept" else f": {what}"
        print(f"{status:8} {root / relative}{note}")
    where = "" if root.resolve() == Path.cwd().resolve() else f"cd {root} && "
    print(f"Next: {where}tune run sft --config sft/tiny_cpu_lora   (tune ls: every tiny config)")
    return 0
