"""``python -m tune.recipes.torchrun``: torch.distributed.run without the launcher's traceback.

When a rank fails, each rank has already printed its own one-line error; torchrun would add a
Python traceback of its own and a summary block. This prints one line naming the failed ranks
and exits with their status (2 for a user error, 128 + N for a rank killed by signal N).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


def exit_status(exitcode: int) -> int:
    """A shell-style status: a negative exit code (killed by a signal) becomes ``128 + signal``."""
    return 128 - exitcode if exitcode < 0 else exitcode or 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``torchrun <argv>``; returns the exit status."""
    try:
        run(parse_args(list(argv) if argv is not None else None))
    except ChildFailedError as err:
        failures = sorted(err.failures.items())
        listed = ", ".join(
            f"rank {rank} ({f.signal_name() if f.exitcode < 0 else f'exit {f.exitcode}'})"
            for rank, f in failures
        )
        print(f"tune run: {listed} failed; each rank's error is above", file=sys.stderr)
        return exit_status(failures[0][1].exitcode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
