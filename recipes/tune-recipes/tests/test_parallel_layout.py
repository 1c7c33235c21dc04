"""Tensor parallel in every training recipe: the shared ``distributed`` checks, and
``parallelize_models`` (the trained model gets the wrappers, frozen ones do not)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tune.config import ConfigValidationError
from tune.dist import DataParallel
from tune.dist.activation_checkpointing import CheckpointedModule
from tune.models import TransformerBlock, build_from_hf_config, named_size_config
from tune.recipes.common.config_sections import DistributedConfig
from tune.recipes.common.parallelism import parallelize_models
from tune.recipes.config import load_config
from tune.recipes.discovery import find_config
from tune.recipes.distill.config import DistillConfig
from tune.recipes.grpo.config import GRPOConfig
from tune.recipes.preference.config import PreferenceConfig
from tune.recipes.sft.config import SFTConfig

RECIPES = {
    "sft": ("sft/tiny_cpu_lora", SFTConfig),
    "preference": ("preference/tiny_cpu_dpo_lora", PreferenceConfig),
    "distill": ("distill/tiny_cpu_lora", DistillConfig),
    "grpo": ("grpo/tiny_cpu", GRPOConfig),
}


@pytest.fixture(scope="module")
def local_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("tp_checks")
    (root / "ckpt").mkdir()
    (root / "ckpt" / "config.json").write_text("{}")
    (root / "ckpt" / "model.safetensors").write_bytes(b"")
    (root / "data.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    return [f"model.checkpoint_dir={root / 'ckpt'}", f"data.source={root / 'data.jsonl'}"]


def _load(recipe: str, paths: list[str], world_size: int, *overrides: str) -> object:
    name, schema = RECIPES[recipe]
    path, _ = find_config(name, recipe)
    extra = [f"teacher.checkpoint_dir={paths[0].split('=', 1)[1]}"] if recipe == "distill" else []
    return load_config(path, schema, [*paths, *extra, *overrides], world_size=world_size)


def _errors(recipe: str, paths: list[str], world_size: int, *overrides: str) -> list[str]:
    with pytest.raises(ConfigValidationError) as info:
        _load(recipe, paths, world_size, *overrides)
    return [str(i) for i in info.value.issues if i.severity == "error"]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_tensor_parallel_is_accepted_by_every_training_recipe(
    recipe: str, local_paths: list[str]
) -> None:
    cfg = _load(recipe, local_paths, 2, "distributed.tp_size=2")
    assert cfg.distributed.tp_size == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_tensor_parallel_constraints_are_the_same_everywhere(
    recipe: str, local_paths: list[str]
) -> None:
    errors = _errors(recipe, local_paths, 4, "distributed.tp_size=3")
    assert "error: distributed.tp_size: 3 does not divide the world size 4" in errors
    qlora = ["training.method=qlora", "distributed.tp_size=2"]
    errors = _errors(recipe, local_paths, 2, *qlora)
    assert any(
        e.startswith("error: training.method: qlora cannot be combined with distributed.tp_size")
        for e in errors
    ), errors


def test_grpo_prompts_split_over_data_parallel_ranks_only(local_paths: list[str]) -> None:
    # 4 ranks, tp 2: 2 data-parallel ranks sample; 6 prompts split evenly over them.
    _load("grpo", local_paths, 4, "distributed.tp_size=2", "rollout.prompts_per_step=6")
    errors = _errors("grpo", local_paths, 4, "distributed.tp_size=2", "rollout.prompts_per_step=5")
    assert any("not divisible by the data-parallel size 2" in e for e in errors), errors


def test_parallelize_models_wraps_only_the_trained_model_in_one_process() -> None:
    config = named_size_config("llama3.2-1b")
    config.update(num_hidden_layers=2, hidden_size=64, intermediate_size=128, vocab_size=128,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16)  # fmt: skip
    trained = build_from_hf_config(config, device="cpu")
    frozen = build_from_hf_config(config, device="cpu").requires_grad_(False)
    parallelize_models(
        [trained, None, frozen], DataParallel(), DistributedConfig(tp_size=2),
        model_config=config, activation_checkpointing=True, compile=True,
    )  # fmt: skip
    for model, checkpointed in ((trained, True), (frozen, False)):
        blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
        assert len(blocks) == 2
        assert all(isinstance(b, CheckpointedModule) == checkpointed for b in blocks)
        assert all(b._compiled_call_impl is not None for b in blocks)
        # One process: no tensor parallel and no FSDP whatever the settings say.
        assert all(type(p) is torch.nn.Parameter for p in model.parameters())


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_pipeline_and_context_parallel_checks(recipe: str, local_paths: list[str]) -> None:
    runs = {"pp_size": ("sft", "preference"), "cp_size": ("sft",)}  # loops with stages / shards
    for key, recipes in runs.items():
        if recipe not in recipes:
            errors = _errors(recipe, local_paths, 2, f"distributed.{key}=2")
            assert any(e.startswith(f"error: distributed.{key}: ") and f"runs in {list(recipes)}"
                       in e for e in errors), errors  # fmt: skip
    if recipe == "preference":  # a frozen full-tuning reference is not pipelined
        errors = _errors(recipe, local_paths, 2, "distributed.pp_size=2", "training.method=full")
        assert any(e.startswith("error: training.loss.name: dpo with training.method=full")
                   for e in errors), errors  # fmt: skip
        cfg = _load(recipe, local_paths, 2, "distributed.pp_size=2")
        assert cfg.distributed.pp_size == 2  # type: ignore[attr-defined]
    if recipe != "sft":
        return
    cfg = _load(recipe, local_paths, 4, "distributed.cp_size=2")
    assert cfg.distributed.cp_size == 2  # type: ignore[attr-defined]
    errors = _errors(recipe, local_paths, 4, "distributed.cp_size=3")
    assert any("cp_size 3 = 3 does not divide the world size 4" in e for e in errors), errors
    errors = _errors(recipe, local_paths, 4, "distributed.cp_size=2", "distributed.tp_size=2")
    assert any(e.startswith("error: distributed.cp_size: cannot be combined") for e in errors)
    errors = _errors(recipe, local_paths, 2, "distributed.pp_size=2", "distributed.pp_schedule=x")
    assert any(e.startswith("error: distributed.pp_schedule: unknown 'x'") for e in errors)
    errors = _errors(recipe, local_paths, 2, "distributed.pp_size=2", "data.padding_free=true")
    assert any("use data.padding_free=false" in e for e in errors), errors
    config = Path(local_paths[0].split("=", 1)[1]) / "config.json"
    config.write_text('{"num_hidden_layers": 2}')
    try:
        errors = _errors(recipe, local_paths, 2, "distributed.pp_size=2",
                         "distributed.pp_schedule=interleaved_1f1b")  # fmt: skip
    finally:
        config.write_text("{}")
    assert any("= 4 pipeline stages, but" in e and "has 2 layers" in e for e in errors), errors
