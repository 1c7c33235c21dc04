"""`tune run sft` with ``distributed.pp_size=2`` on two gloo ranks: each rank trains its layer range
and the schedule passes activations between them, so losses, validation loss and the saved outputs
equal one process's."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from tune.data.synthetic import write_preference_data
from tune.dist.testing import run_to_end
from tune.train.loggers import read_jsonl_metrics
from tune_testing import TinyAssets, run_in_process, tiny_overrides, tune_command

STEPS = 3
TIMEOUT = 300


def _overrides(assets: TinyAssets, out: Path, *extra: str) -> list[str]:
    return tiny_overrides(
        assets, out, f"training.max_steps={STEPS}", "training.lr_schedule.warmup_steps=1",
        "training.global_batch_size=4", "training.micro_batch_size=2",
        "data.padding_free=false", "eval.before_training=false", "eval.every_n_steps=3",
        "eval.max_batches=2", "checkpointing.save_every_n_steps=null",
        "checkpointing.save_merged=false", *extra,
    )  # fmt: skip


def _compare(one: Path, two: Path, file: str, atol: float) -> float:
    for key in ("loss", "val_loss"):
        got, want = (read_jsonl_metrics(run / "metrics.jsonl", key) for run in (two, one))
        assert sorted(got) == sorted(want)
        assert got
        assert got == pytest.approx(want, abs=1e-5), key
    got, want = (load_file(str(run / file)) for run in (two, one))
    assert got.keys() == want.keys()
    err = max((got[k] - want[k]).abs().max().item() for k in want)
    assert err <= atol
    return err


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("method", "schedule"),
    [
        ("lora", "1f1b"),
        ("full", "gpipe"),
        # two stages per rank: the schedules tune.dist's own tests cover in every variant
        pytest.param("lora", "interleaved_1f1b", marks=pytest.mark.slow),
        pytest.param("lora", "zbv_zero_bubble", marks=pytest.mark.slow),
        pytest.param("packed", "1f1b", marks=pytest.mark.slow),
    ],
)
def test_pp2_equals_one_process(
    deep_tied_assets: TinyAssets, tmp_path: Path, method: str, schedule: str
) -> None:
    """4 tied blocks: the embedding (first stage) and the head (last stage) are one weight."""
    one, two = tmp_path / "nproc1", tmp_path / "pp2"
    packed = ["data.packing=true", "data.max_seq_len=128"] if method == "packed" else []
    method = "lora" if method == "packed" else method
    config = f"sft/tiny_cpu_{method}"
    run_in_process("sft", config, _overrides(deep_tied_assets, one, *packed))
    pp = [
        "distributed.pp_size=2",
        f"distributed.pp_schedule={schedule}",
        "distributed.backend=gloo",
    ]
    save = ["checkpointing.save_every_n_steps=2"] if method == "full" else []
    pp = [*pp, *packed]
    run_to_end(tune_command("sft", config, _overrides(deep_tied_assets, two, *pp, *save), nproc=2),
               TIMEOUT)  # fmt: skip
    file = "adapter/adapter_model.safetensors" if method == "lora" else "model/model.safetensors"
    err = _compare(one, two, file, 2e-5)
    print(f"pp=2 {schedule} {method} vs one process: {file} {err:.1e}")
    if save:  # each rank's stages in one DCP step (optimizer state by name), resumed unpipelined
        resumed = tmp_path / "resumed"
        step_2 = f"checkpointing.resume={two / 'checkpoints' / 'step_2'}"
        run_in_process("sft", config, _overrides(deep_tied_assets, resumed, step_2))
        after = read_jsonl_metrics(resumed / "metrics.jsonl", "loss")
        assert sorted(after) == [STEPS]
        assert after[STEPS] == pytest.approx(
            read_jsonl_metrics(one / "metrics.jsonl", "loss")[STEPS], abs=1e-5
        )
        got, want = (load_file(str(run / file)) for run in (resumed, one))
        assert max((got[k] - want[k]).abs().max().item() for k in want) <= 2e-5


@pytest.mark.distributed
def test_pp2_dpo_lora_equals_one_process(deep_tied_assets: TinyAssets, tmp_path: Path) -> None:
    """Pairs stay in one pipeline micro-batch; the reference (adapters disabled) is a
    forward-only pass through the same stages."""
    data = write_preference_data(tmp_path / "data", num_rows=80)["paired"]
    assets = TinyAssets(deep_tied_assets.checkpoint_dir, data)
    metrics: dict[int, dict[str, dict[int, float]]] = {}
    for pp in (1, 2):
        out = tmp_path / f"pp{pp}"
        overrides = tiny_overrides(
            assets, out, f"training.max_steps={STEPS}", "training.lr_schedule.warmup_steps=1",
            "training.optimizer.lr=1e-3", "checkpointing.save_every_n_steps=null",
            "eval.every_n_steps=3", "eval.max_batches=4", "eval.before_training=false",
            "distributed.backend=gloo", f"distributed.pp_size={pp}",
        )  # fmt: skip
        command = tune_command("preference", "preference/tiny_cpu_dpo_lora", overrides, pp)
        if pp == 1:
            run_in_process("preference", "preference/tiny_cpu_dpo_lora", overrides)
        else:
            run_to_end(command, TIMEOUT)
        metrics[pp] = {
            key: read_jsonl_metrics(out / "metrics.jsonl", key)
            for key in ("loss", "reward_margin", "accuracy", "val_loss", "val_accuracy")
        }
    for key, values in metrics[1].items():
        assert values
        assert sorted(metrics[2][key]) == sorted(values), key
        assert metrics[2][key] == pytest.approx(values, abs=2e-5), key
    adapter = "adapter/adapter_model.safetensors"
    got, want = (load_file(str(tmp_path / f"pp{pp}" / adapter)) for pp in (2, 1))
    assert max((got[k] - want[k]).abs().max().item() for k in want) <= 2e-5


@pytest.mark.distributed
@pytest.mark.slow
def test_pp2_by_fsdp2_on_four_ranks(deep_tied_assets: TinyAssets, tmp_path: Path) -> None:
    """PP = 2 x DP = 2: FSDP2 shards each stage over its two data-parallel ranks."""
    one, four = tmp_path / "nproc1", tmp_path / "pp2dp2"
    run_in_process("sft", "sft/tiny_cpu_lora", _overrides(deep_tied_assets, one))
    pp = ["distributed.pp_size=2", "distributed.backend=gloo", "training.micro_batch_size=2"]
    run_to_end(tune_command("sft", "sft/tiny_cpu_lora", _overrides(deep_tied_assets, four, *pp),
                            nproc=4), TIMEOUT)  # fmt: skip
    err = _compare(one, four, "adapter/adapter_model.safetensors", 2e-5)
    print(f"pp=2 x dp=2 lora vs one process: adapter {err:.1e}")
