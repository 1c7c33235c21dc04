"""Expert parallelism in the sft recipe (``sft/tiny_cpu_moe_ep_2proc``): a tiny Qwen3-MoE
(8 experts, top-2) trained with LoRA on attention and on the stacked expert weights
(``training.lora.target_parameters``, per-expert factors) on 2 gloo ranks with
``distributed.ep_size=2`` (4 experts and their factors per rank, tokens exchanged all-to-all,
load-balancing loss on) records the losses of one process (``ep_size=1``, 1e-5) and writes the
same PEFT adapter; its DCP step checkpoint, written with the factors sharded over the EP ranks,
resumes in one process (``ep_size=1``, the experts whole) and continues with the same losses.
(Full fine-tuning under EP, DCP resharding of the expert weights included, is tested in
tune-dist's ``test_expert_parallel.py``.)

One 2-rank launch; the one-process runs run in this process.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tune.data.synthetic import synthetic_instruction_rows, write_jsonl
from tune.dist.testing import run_to_end
from tune.train.loggers import read_jsonl_metrics
from tune_testing import (
    TINY_SIZES,
    TinyAssets,
    make_tiny_checkpoint,
    run_in_process,
    tiny_overrides,
    tune_command,
)

pytestmark = [pytest.mark.integration, pytest.mark.distributed]

CONFIG = "sft/tiny_cpu_moe_ep_2proc"
STEPS, SAVE_AT = 4, 2
PARITY = 1e-5  # losses
# The adapter after 4 AdamW steps at lr 3e-3 carries the rounding of every step's reductions:
# the same one-process run at 1 and at 2 torch threads writes adapters 1.8e-5 apart (its losses
# equal), and EP=2 against one process reads 0.8-1.3e-5 depending on that process's threads.
# A wrong shard or factor gathered from the EP ranks would be off by the factors' scale (1e-2).
ADAPTER_PARITY = 5e-5
SETTINGS = (
    "training.method=lora", "checkpointing.save_adapter=true",
    "training.lora.target_parameters=[experts.gate_up_proj,experts.down_proj]",
    f"training.max_steps={STEPS}", f"checkpointing.save_every_n_steps={SAVE_AT}",
    "training.lr_schedule.warmup_steps=1", "training.optimizer.lr=3e-3",
    # One row per micro-batch: the load-balancing loss of a micro-batch is not a sum over its
    # rows, so the runs must group rows alike (2 ranks x 2 micro-batches = 1 process x 4).
    "training.global_batch_size=4", "training.micro_batch_size=1",
    "model.router_aux_loss_coef=0.05", "eval.every_n_steps=null", "eval.before_training=false",
)  # fmt: skip


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> TinyAssets:
    root = tmp_path_factory.mktemp("ep_sft")
    rows = synthetic_instruction_rows(64, seed=0)
    text = [f"{r['instruction']} {r['input']} {r['output']}" for r in rows]
    ckpt = make_tiny_checkpoint(
        root / "base", tokenizer_text=text, architecture="qwen3_moe", **TINY_SIZES
    )
    return TinyAssets(ckpt, write_jsonl(rows, root / "data.jsonl"))


def _metrics(out: Path) -> dict[str, dict[int, float]]:
    path = out / "metrics.jsonl"
    return {key: read_jsonl_metrics(path, key) for key in ("loss", "moe/aux_loss")}


def test_ep2_equals_one_process_and_its_checkpoint_resumes_at_ep1(
    assets: TinyAssets, tmp_path: Path
) -> None:
    one = tmp_path / "one"
    run_in_process("sft", CONFIG, tiny_overrides(assets, one, *SETTINGS, "distributed.ep_size=1"))
    ep2 = tmp_path / "ep2"
    run_to_end(tune_command("sft", CONFIG, tiny_overrides(assets, ep2, *SETTINGS), nproc=2), 300)
    reference, experts = _metrics(one), _metrics(ep2)
    assert sorted(reference["loss"]) == list(range(1, STEPS + 1))
    for key, values in reference.items():
        assert values, f"{key} was not logged"
        assert sorted(experts[key]) == sorted(values), key
        for step, value in values.items():
            assert experts[key][step] == pytest.approx(value, abs=PARITY), (key, step)
    assert reference["loss"][STEPS] < reference["loss"][1] - 0.05  # it trains
    # The adapter gathered from the EP ranks' factor shards is the one-process adapter.
    adapters = [load_file(d / "adapter" / "adapter_model.safetensors") for d in (one, ep2)]
    assert sorted(adapters[0]) == sorted(adapters[1])
    assert any(".mlp.experts." in k for k in adapters[0]), sorted(adapters[0])[:8]
    adapter_err = max((adapters[0][k] - adapters[1][k]).abs().max().item() for k in adapters[0])
    assert adapter_err < ADAPTER_PARITY

    # Resume the EP=2 run's DCP step in one process (experts whole), from step 2.
    resumed = tmp_path / "resumed"
    shutil.copytree(ep2, resumed)
    shutil.rmtree(resumed / "checkpoints" / f"step_{STEPS}")
    run_in_process(
        "sft", CONFIG, tiny_overrides(assets, resumed, *SETTINGS, "distributed.ep_size=1")
    )
    after = _metrics(resumed)["loss"]
    for step in range(SAVE_AT + 1, STEPS + 1):
        assert after[step] == pytest.approx(reference["loss"][step], abs=PARITY), step
    deltas = [abs(experts["loss"][s] - reference["loss"][s]) for s in reference["loss"]]
    deltas += [abs(after[s] - reference["loss"][s]) for s in range(SAVE_AT + 1, STEPS + 1)]
    print(f"max |dloss| EP=2 vs one process and resumed at EP=1: {max(deltas):.2e}; "
          f"adapter: {adapter_err:.2e}")  # fmt: skip
