"""tune's side of the peer benchmark: the real ``sft`` recipe loop on the fixture.

The recipe builds its own batches from the fixture's rows with its streaming loader (the
fixture's saved batches were dumped by the same loader with the same settings); this runner wraps
the recipe's training loader to record a digest of every batch the loop draws, and checks them
against the saved batches. Per-step losses and step times come from the recipe's metrics.jsonl.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

from runner_support import batch_digest, load_batches, runner_args, set_threads, write_result

CONFIG = Path(__file__).resolve().parent / "tune_sft_bench.yaml"


class DigestingLoader:
    """Delegates to a StreamingLoader; records a digest of each batch it yields."""

    def __init__(self, loader: Any, digests: list[str]) -> None:
        self._loader, self._digests = loader, digests

    def __iter__(self) -> Iterator[dict]:
        for batch in self._loader:
            self._digests.append(batch_digest(batch))
            yield batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def main() -> None:
    args = runner_args(__doc__.splitlines()[0])
    set_threads(args.threads)
    import tune.recipes.common.token_data as token_data  # where the sft recipe builds loaders
    from tune_testing import run_in_process

    digests: list[str] = []
    make_loader = token_data.make_loader

    def digesting_make_loader(*a: Any, **kw: Any) -> Any:
        loader = make_loader(*a, **kw)
        return DigestingLoader(loader, digests) if kw.get("endless") else loader

    token_data.make_loader = digesting_make_loader
    saved = load_batches(args.fixture, args.packed, args.steps)
    out = args.work_dir / "run"
    shutil.rmtree(out, ignore_errors=True)  # the jsonl logger appends to an existing file
    fixture = json.loads((args.fixture / "fixture.json").read_text())
    overrides = [
        f"model.checkpoint_dir={args.fixture / 'model'}",
        f"data.max_seq_len={fixture.get('max_seq_len', 512)}",
        f"data.source={args.fixture / 'data.jsonl'}",
        f"data.packing={'true' if args.packed else 'false'}",
        f"training.method={args.method}",
        f"training.max_steps={args.steps}",
        f"checkpointing.output_dir={out}",
    ]
    start = time.perf_counter()
    run_in_process("sft", str(CONFIG), overrides)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = sorted((r for r in records if "loss" in r), key=lambda r: r["step"])
    if digests != saved["digests"]:
        raise RuntimeError(f"the recipe drew other batches than the fixture saved: {digests}")
    write_result(
        args.work_dir,
        library="tune",
        version=version("tune-recipes"),
        losses=[float(r["loss"]) for r in steps],
        step_times=[float(r["step_time_s"]) for r in steps],
        digests=digests,
        notes=f"sft recipe loop (fused CE); wall {time.perf_counter() - start:.1f} s",
    )


if __name__ == "__main__":
    main()
