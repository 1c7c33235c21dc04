"""The main job, end to end on the CPU: LoRA fine-tuning with the ``sft`` recipe, measured.

    nox -s demo                                       # or, with tune-all + matplotlib installed:
    python examples/demo.py --output-dir outputs/demo
    python examples/demo.py --tiny                    # the fast path: the bundled 0.85M model

By default (demo_smollm2.py) SmolLM2-135M-Instruct is imported from its GGUF and taught a strict
record-extraction format; exact match on held-out sentences is measured before and after, and
the HF, PEFT and GGUF outputs are written. ``--tiny`` (demo_tiny.py) fine-tunes the bundled
0.85M-parameter model to answer facts it knows in chat, in seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from demo_report import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The demo's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/demo"))
    parser.add_argument(
        "--tiny", action="store_true", help="fine-tune the bundled 0.85M model (seconds)"
    )
    parser.add_argument(
        "--base", type=Path, default=None,
        help="base HF directory (default: the GGUF import; --tiny: examples/assets/demo-base)",
    )  # fmt: skip
    parser.add_argument("--config", type=Path, default=None, help="the sft config")
    parser.add_argument("--max-steps", type=int, default=None, help="fine-tuning steps")
    parser.add_argument(
        "--eval-examples", type=int, default=None, help="evaluate on the first N held-out rows"
    )
    # The tiny model runs best on one thread (threading overhead outweighs its work, and on a
    # shared machine a second thread waiting for a busy core stalls every step); SmolLM2 on two.
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: 2; --tiny: 1)"
    )
    args = parser.parse_args(argv)
    if args.threads is None:
        args.threads = 1 if args.tiny else 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    if args.tiny:
        import demo_tiny

        return demo_tiny.main(args)
    import demo_smollm2

    return demo_smollm2.main(args)


if __name__ == "__main__":
    raise SystemExit(main())
