"""Launch a module on every rank under ``torch.distributed.run`` (torchrun), from any CLI.

``add_torchrun_arguments`` adds torchrun's flags to an argparse parser, ``torchrun_args`` reads them
back in canonical form, and ``build_torchrun_argv`` builds the command::

    flags = torchrun_args(args)  # ["--nproc-per-node=2", "--standalone"]
    argv = build_torchrun_argv(flags, "mypkg.train", ["--config", "/abs/c.yaml"], prog="mytool")
    subprocess.call(argv)

The command runs ``python -m tune.dist.launch``: torchrun without its launcher traceback. When a
rank fails, each rank has already printed its own error; this adds one line naming the failed
ranks and exits with their status (128 + N for a rank killed by signal N). No torch is imported
until the launcher runs, so a CLI can build the command cheaply.
"""

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
    """Add ``TORCHRUN_FLAGS`` to ``parser`` (both ``--nproc-per-node`` and ``--nproc_per_node``)."""
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
    """The torchrun flags given on the command line, as ``--flag=value`` (empty: no launch)."""
    out: list[str] = []
    for flag, takes_value in TORCHRUN_FLAGS.items():
        value = getattr(args, _dest(flag), None)
        if takes_value and value is not None:
            out.append(f"--{flag}={value}")
        elif not takes_value and value:
            out.append(f"--{flag}")
    return out


def launch_world_size(flags: Sequence[str]) -> int | None:
    """``nproc-per-node × nnodes`` when both are plain integers (None for ``gpu``, ``auto``, ranges)."""
    values = dict(f.removeprefix("--").partition("=")[::2] for f in flags)
    try:
        return int(values.get("nproc-per-node", "1")) * int(values.get("nnodes", "1"))
    except ValueError:
        return None


def build_torchrun_argv(
    flags: Sequence[str],
    module: str,
    module_args: Sequence[str] = (),
    *,
    prog: str = "torchrun",
    python: str | None = None,
) -> list[str]:
    """The command that runs ``python -m <module> <module_args>`` on every rank under torchrun.

    Each rank reads its rank and world size from the environment torchrun sets.

    Args:
        flags: torchrun flags as ``torchrun_args`` returns them.
        module: the module each rank runs with ``python -m``.
        module_args: its arguments, the same on every rank (paths should be absolute).
        prog: the name that starts the launcher's one-line failure message.
        python: the interpreter (default: the current one).
    """
    return [
        python or sys.executable,
        "-m",
        "tune.dist.launch",
        f"--prog={prog}",
        *flags,
        "-m",
        module,
        *module_args,
    ]


def exit_status(exitcode: int) -> int:
    """A shell-style status: a negative exit code (killed by signal N) becomes ``128 + N``."""
    return 128 - exitcode if exitcode < 0 else exitcode or 1


def run_torchrun(argv: Sequence[str], prog: str = "torchrun") -> int:
    """Run ``torchrun <argv>`` in this process; returns the exit status.

    A rank failure is one line on stderr (``<prog>: rank 1 (exit 2) failed; ...``), not torchrun's
    traceback and summary block; the status is the first failed rank's (see ``exit_status``).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(list(argv)))
    except ChildFailedError as err:
        failures = sorted(err.failures.items())
        listed = ", ".join(
            f"rank {rank} ({f.signal_name() if f.exitcode < 0 else f'exit {f.exitcode}'})"
            for rank, f in failures
        )
        print(f"{prog}: {listed} failed; each rank's error is above", file=sys.stderr)
        return exit_status(failures[0][1].exitcode)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tune.dist.launch [--prog=NAME] <torchrun arguments>``."""
    args = list(sys.argv[1:] if argv is None else argv)
    prog = "torchrun"
    if args and args[0].startswith("--prog="):
        prog = args.pop(0).partition("=")[2]
    return run_torchrun(args, prog)


if __name__ == "__main__":
    sys.exit(main())
