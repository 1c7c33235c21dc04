"""A NaN loss injected on one rank at step k: ``skip`` keeps every parameter, ``raise`` halts.

Injection: the suite's ``sitecustomize`` (see conftest) wraps ``micro_batch_loss`` of the sft loop
in rank 1 only, multiplying the loss of step k by NaN; no product code has a test hook. The
decision must be the same on both ranks because it is taken on the reduced loss and gradient norm.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from tune.train.loggers import read_jsonl_metrics

pytestmark = [pytest.mark.integration, pytest.mark.distributed]

BAD_STEP, STEPS = 3, 4


def _sharded_state(step_dir: Path, scratch: Path) -> dict[str, Any]:
    """The DCP model+optimizer state of a step directory as one flat state dict."""
    target = scratch / f"{step_dir.name}.pt"
    dcp_to_torch_save(step_dir / "sharded", target)
    return torch.load(target, weights_only=True)


def _flat(tree: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        if isinstance(value, torch.Tensor):
            out[f"{prefix}{key}"] = value
        elif isinstance(value, (dict, list, tuple)):
            out.update(_flat(value, f"{prefix}{key}."))
    return out


def test_skip_leaves_parameters_and_optimizer_unchanged_and_counts(
    runs: Any, inject: Any, report: Any, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    command = runs.multi_rank(
        out, f"training.max_steps={STEPS}", "checkpointing.save_every_n_steps=1",
        "training.nonfinite=skip",
    )  # fmt: skip
    runs.launch_ok(command, tmp_path / "stderr.txt", inject(f"nan:{BAD_STEP}:1"))
    losses = read_jsonl_metrics(out / "metrics.jsonl")
    skipped = read_jsonl_metrics(out / "metrics.jsonl", "skipped_steps")
    assert math.isnan(losses[BAD_STEP])
    assert all(math.isfinite(losses[s]) for s in losses if s != BAD_STEP)
    assert skipped == {1: 0, 2: 0, 3: 1, 4: 1}
    before = _flat(_sharded_state(out / "checkpoints" / f"step_{BAD_STEP - 1}", tmp_path))
    after = _flat(_sharded_state(out / "checkpoints" / f"step_{BAD_STEP}", tmp_path))
    assert sorted(before) == sorted(after)
    assert any(k.endswith("layers.0.attn.q_proj.weight") for k in before), sorted(before)[:5]
    assert any("exp_avg" in k for k in before), sorted(before)[:5]
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), f"{name} changed on a skipped step"
    # the next step trains again
    final = _flat(_sharded_state(out / "checkpoints" / f"step_{STEPS}", tmp_path))
    assert any(not torch.equal(final[k], v) for k, v in before.items() if "q_proj" in k)
    report("non-finite loss, policy skip (2 ranks, NaN on rank 1)", trial=0, passed=True,
           skipped_steps=skipped[STEPS])  # fmt: skip


def test_raise_halts_every_rank_nonzero_with_a_clear_message(
    runs: Any, inject: Any, report: Any, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    command = runs.multi_rank(
        out, f"training.max_steps={STEPS}", "checkpointing.save_every_n_steps=1",
        "training.nonfinite=raise",
    )  # fmt: skip
    result = runs.launch(command, tmp_path / "stderr.txt", inject(f"nan:{BAD_STEP}:1"))
    assert result.returncode != 0
    assert f"non-finite loss=nan, grad_norm=nan at step {BAD_STEP}" in result.stderr
    # each rank's error is one line, and the launcher adds one line, not a traceback
    assert (
        f"tune run: error: non-finite loss=nan, grad_norm=nan at step {BAD_STEP}" in result.stderr
    )
    assert "failed; each rank's error is above" in result.stderr
    assert "Traceback" not in result.stderr
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step_1", "step_2"]  # nothing saved from the bad step
    report("non-finite loss, policy raise (halt)", trial=0, passed=True)
