"""`tune run sft` (the CLI entry point, in-process): per-step losses equal recorded values.

The values were recorded with this repository's first working loop (float32, tiny Llama from
``make_tiny_assets``); a change that moves them is a change of numerics and must be explained.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tune.recipes.cli import main
from tune.recipes.sft_testing import TinyAssets, read_metrics, sft_overrides

STEPS = 6
RECORDED: dict[str, list[float]] = {
    "full": [6.224277605, 6.078974724, 6.153556224, 6.088076474, 5.764313331, 5.911333008],
    "lora": [6.224277605, 6.110678196, 6.193395036, 6.196520173, 6.018296462, 6.143445435],
    "qlora": [6.236911100, 6.180504344, 6.182100859, 6.140284191, 6.120641338, 6.050781250],
    "dora": [6.224277605, 6.112195015, 6.196823292, 6.205659673, 6.038503794, 6.165173340],
}


@pytest.mark.parametrize("method", ["full", "lora", "qlora", "dora"])
def test_losses_match_recorded(method: str, tiny_assets: TinyAssets, tmp_path: Path) -> None:
    out = tmp_path / method
    overrides = sft_overrides(
        tiny_assets, out, f"training.max_steps={STEPS}", "eval.every_n_steps=3",
        "checkpointing.save_every_n_steps=null", "checkpointing.save_merged=false",
    )  # fmt: skip
    assert main(["run", "sft", "--config", f"sft/tiny_cpu_{method}", *overrides]) == 0
    losses = read_metrics(out / "metrics.jsonl")
    assert sorted(losses) == list(range(1, STEPS + 1))
    got = [losses[s] for s in range(1, STEPS + 1)]
    assert got == pytest.approx(RECORDED[method], rel=1e-4)
