"""Accumulating 4 micro-batches of 1 (very different lengths) equals one batch of 4, also on 2 ranks."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tune.train import GradientAccumulator, count_trained_tokens, cross_entropy, loss_scale_for_step

WORKER = Path(__file__).with_name("accumulation_worker.py")
_spec = importlib.util.spec_from_file_location("accumulation_worker", WORKER)
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


def _rel_errors(model: torch.nn.Module, ref: dict[str, torch.Tensor]) -> dict[str, float]:
    return {n: float((p.grad - ref[n]).norm() / ref[n].norm()) for n, p in model.named_parameters()}


@pytest.mark.parametrize("fused", [False, True], ids=["ce", "fused_ce"])
def test_four_micro_batches_of_one_equal_one_batch_of_four(fused: bool) -> None:
    ref_loss, ref_grads = helpers.full_batch_reference(torch.float32)
    model = helpers.make_model()
    batches = helpers.micro_batches()
    acc = GradientAccumulator()
    total = acc.start_step([count_trained_tokens(b["labels"]) for b in batches])
    assert int(total) == sum(n - n // 3 for n in helpers.LENGTHS) == 39
    for b in batches:
        acc.scale(helpers.micro_batch_loss(model, b, fused)).backward()
    metrics = acc.finish_step()
    assert metrics["num_tokens"] == 39
    assert abs(metrics["loss"] - ref_loss) / ref_loss < 1e-6
    errors = _rel_errors(model, ref_grads)
    assert max(errors.values()) < 1e-6, errors


def test_per_micro_batch_mean_is_the_bug_this_prevents() -> None:
    """Averaging per micro-batch (then over micro-batches) gives visibly different gradients."""
    _, ref_grads = helpers.full_batch_reference(torch.float32)
    model = helpers.make_model()
    for b in helpers.micro_batches():
        (cross_entropy(model(b["tokens"]), b["labels"]).mean() / 4).backward()
    assert max(_rel_errors(model, ref_grads).values()) > 1e-2


def test_loss_scale_for_step_accounts_for_ranks_and_gradient_averaging() -> None:
    counts = [torch.tensor(5), 7, torch.tensor(0)]
    assert float(loss_scale_for_step(counts)) == pytest.approx(1 / 12)
    # another rank holds 20 tokens: the all-reduce returns 32; DDP averages over 2 ranks
    scale = loss_scale_for_step(counts, lambda t: t + 20, grad_average_world_size=2)
    assert float(scale) == pytest.approx(2 / 32)
    assert float(loss_scale_for_step([0])) == 1.0  # no trained token: no division by zero


def test_accumulator_catches_counts_that_disagree_with_the_losses() -> None:
    model = helpers.make_model()
    batches = helpers.micro_batches()
    acc = GradientAccumulator()
    acc.start_step([count_trained_tokens(batches[0]["labels"])])  # forgot the other three
    for b in batches:
        acc.scale(cross_entropy(model(b["tokens"]), b["labels"])).backward()
    with pytest.raises(ValueError, match=r"told 2 trained tokens .* counted 39"):
        acc.finish_step()
    with pytest.raises(RuntimeError, match="start_step"):
        GradientAccumulator().scale(torch.tensor(1.0))
    acc.start_step([3])
    with pytest.raises(ValueError, match=r"never \.mean"):
        acc.scale(torch.ones(2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_gloo_ranks_equal_one_batch_of_four(tmp_path: Path) -> None:
    """Each rank takes 2 micro-batches: DDP (averaging) with CE, and a manual grad sum with fused CE."""
    out = tmp_path / "result.json"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(WORKER), str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert sorted(results) == [
        "ddp_ce_rank0", "ddp_ce_rank1", "sum_fused_rank0", "sum_fused_rank1"
    ]  # fmt: skip
    for name, result in results.items():
        assert result["num_tokens"] == 39, name
        assert abs(result["loss"] - result["ref_loss"]) / result["ref_loss"] < 1e-6, name
        assert max(result["grad_rel_errors"].values()) < 1e-6, (name, result["grad_rel_errors"])
