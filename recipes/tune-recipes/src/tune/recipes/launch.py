"""``tune run`` with torchrun flags: the same recipe and config under ``torch.distributed.run``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# Flags passed through to torchrun: name -> whether it takes a value.
TORCHRUN_FLAGS: dict[str, bool] = {
    "nproc-per-node": True,
    "nnodes": True,
    "node-rank": True,
    "rdzv-endpoint": True,
    "rdzv-backend": True,
    "master-addr": True,
    "master-port": True,
    "standalone": False,
    "max-restarts": True,
}


def _dest(flag: str) -> str:
    return "torchrun_" + flag.replace("-", "_")


def add_torchrun_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the pass-through flags (both ``--nproc-per-node`` and ``--nproc_per_node`` spellings)."""
    group = parser.add_argument_group(
        "distributed launch", "any of these launches the run through torch.distributed.run"
    )
    for flag, takes_value in TORCHRUN_FLAGS.items():
        names = [f"--{flag}"] + ([f"--{flag.replace('-', '_')}"] if "-" in flag else [])
        if takes_value:
            group.add_argument(*names, dest=_dest(flag), metavar="VALUE", default=None)
        else:
            group.add_argument(*names, dest=_dest(flag), action="store_true")


def torchrun_args(args: argparse.Namespace) -> list[str]:
    """The torchrun flags given on the command line, in canonical ``--flag=value`` form."""
    out: list[str] = []
    for flag, takes_value in TORCHRUN_FLAGS.items():
        value = getattr(args, _dest(flag), None)
        if takes_value and value is not None:
            out.append(f"--{flag}={value}")
        elif not takes_value and value:
            out.append(f"--{flag}")
    return out


def launch_world_size(flags: Sequence[str]) -> int | None:
    """``nproc-per-node × nnodes`` when both are plain integers (None for ``auto`` or ranges)."""
    values = dict(f.removeprefix("--").partition("=")[::2] for f in flags)
    try:
        return int(values.get("nproc-per-node", "1")) * int(values.get("nnodes", "1"))
    except ValueError:
        return None


def build_torchrun_argv(
    flags: Sequence[str],
    recipe: str,
    config: str,
    overrides: Sequence[str] = (),
    allow_imports: Sequence[str] = (),
    python: str | None = None,
) -> list[str]:
    """The command that runs ``tune run <recipe>`` on every rank under torchrun.

    Each rank runs the recipe in-process (``python -m tune.recipes run ...`` without launch
    flags) and reads its rank and world size from the environment torchrun sets.

    Args:
        flags: torchrun flags from ``torchrun_args``.
        recipe: the recipe name.
        config: the config file (an absolute path, so every rank reads the same file).
        overrides: ``key=value`` items.
        allow_imports: ``--allow-import`` patterns.
        python: the interpreter (default: the current one).
    """
    allow = [a for pattern in allow_imports for a in ("--allow-import", pattern)]
    return [
        python or sys.executable,
        "-m",
        "tune.recipes.torchrun",  # torch.distributed.run, minus its traceback on a rank failure
        *flags,
        "-m",
        "tune.recipes",
        "run",
        recipe,
        "--config",
        config,
        *allow,
        *overrides,
    ]
