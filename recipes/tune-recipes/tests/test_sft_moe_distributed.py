"""`tune run sft` LoRA on a tiny MoE (adapters on attention and on the stacked experts), FSDP2 on
two gloo ranks: the losses and the saved PEFT adapter equal one process's, and the sharded (DCP)
checkpoint resumes on one process with the same step.

The load-balancing loss is not trained here (``model.router_aux_loss_coef=0``; it is still
computed and logged): it is a mean over each micro-batch, and two ranks draw other micro-batches
than one process, so with it on the two runs optimise different objectives.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from tune.dist.testing import run_to_end
from tune.train.loggers import read_jsonl_metrics
from tune_testing import TinyAssets, run_in_process, tiny_overrides, tune_command

STEPS = 3
TIMEOUT = 300


def _overrides(assets: TinyAssets, out: Path, *extra: str) -> list[str]:
    return tiny_overrides(
        assets, out, f"training.max_steps={STEPS}", "training.lr_schedule.warmup_steps=1",
        "model.router_aux_loss_coef=0", "eval.before_training=false", "eval.every_n_steps=null",
        "checkpointing.save_every_n_steps=null", "checkpointing.save_merged=false", *extra,
    )  # fmt: skip


def _adapter(out: Path) -> dict:
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def _assert_close(got: dict, want: dict, atol: float) -> float:
    assert got.keys() == want.keys()
    err = max((got[k] - want[k]).abs().max().item() for k in want)
    assert err <= atol
    return err


@pytest.mark.distributed
def test_moe_expert_lora_two_ranks_match_one_process_and_resume(
    moe_assets: TinyAssets, tmp_path: Path
) -> None:
    one, two, resumed = tmp_path / "nproc1", tmp_path / "nproc2", tmp_path / "resumed"
    run_in_process("sft", "sft/tiny_cpu_moe_lora", _overrides(moe_assets, one))
    distributed = ["distributed.fsdp=true", "distributed.backend=gloo"]
    two_rank = _overrides(moe_assets, two, "checkpointing.save_every_n_steps=2", *distributed)
    run_to_end(tune_command("sft", "sft/tiny_cpu_moe_lora", two_rank, nproc=2), TIMEOUT)
    losses = {run: read_jsonl_metrics(run / "metrics.jsonl", "loss") for run in (one, two)}
    assert sorted(losses[two]) == list(range(1, STEPS + 1))
    assert losses[two] == pytest.approx(losses[one], abs=1e-5)
    adapter = _adapter(one)
    expert_b = [v for k, v in adapter.items() if ".mlp.experts." in k and "lora_B" in k]
    assert len(expert_b) == 2 * 2  # layers x stacks; B starts at zero, so trained if non-zero
    assert all(b.abs().max() > 1e-4 for b in expert_b)
    # Adam divides by the root of tiny second moments: float32 reduction-order noise in the
    # gradients of A (B was zero at step 1) reaches ~1e-6 on factors of ~0.1 (measured 1.1e-6);
    # a sharding or objective error moves them by ~1e-3 (the trained load-balancing loss does).
    err = _assert_close(_adapter(two), adapter, atol=5e-6)
    # The two ranks' sharded step-2 checkpoint, resumed on one process: step 3 again.
    step_2 = two / "checkpoints" / "step_2"
    assert (step_2 / "sharded").is_dir()
    run_in_process(
        "sft", "sft/tiny_cpu_moe_lora",
        _overrides(moe_assets, resumed, f"checkpointing.resume={step_2}"),
    )  # fmt: skip
    after = read_jsonl_metrics(resumed / "metrics.jsonl", "loss")
    assert sorted(after) == [STEPS]
    assert after[STEPS] == pytest.approx(losses[one][STEPS], abs=1e-5)
    resume_err = _assert_close(_adapter(resumed), adapter, atol=5e-6)
    loss_err = max(abs(losses[two][s] - losses[one][s]) for s in losses[one])
    print(
        f"moe lora, 2 ranks vs 1: loss {loss_err:.1e}, adapter {err:.1e}; resumed {resume_err:.1e}"
    )


@pytest.mark.distributed
def test_moe_qlora_expert_parallel_matches_one_process(
    moe_assets: TinyAssets, tmp_path: Path
) -> None:
    """QLoRA at EP=2: the NF4 expert stacks stay whole on both ranks and each reads its own
    experts' slice; the expert LoRA factors are split. Same losses and adapter as one process."""
    one, two = tmp_path / "nproc1", tmp_path / "ep2"
    qlora = ["training.method=qlora"]
    run_in_process("sft", "sft/tiny_cpu_moe_lora", _overrides(moe_assets, one, *qlora))
    ep = ["distributed.fsdp=true", "distributed.backend=gloo", "distributed.ep_size=2", *qlora]
    run_to_end(tune_command("sft", "sft/tiny_cpu_moe_lora", _overrides(moe_assets, two, *ep),
                            nproc=2), TIMEOUT)  # fmt: skip
    losses = {run: read_jsonl_metrics(run / "metrics.jsonl", "loss") for run in (one, two)}
    assert sorted(losses[two]) == list(range(1, STEPS + 1))
    assert losses[two] == pytest.approx(losses[one], abs=1e-5)
    err = _assert_close(_adapter(two), _adapter(one), atol=5e-6)
    print(f"moe qlora, EP=2 vs 1: adapter {err:.1e}")
