"""SFTConfig.validate: every range and relation check names its key; bundled configs validate."""

from __future__ import annotations

from pathlib import Path

import pytest

import tune.recipes
from tune.config import ConfigValidationError, ValidationContext, validate_config
from tune.recipes.cli import main
from tune.recipes.config import load_config
from tune.recipes.sft import SFTConfig

CONFIG_DIR = Path(tune.recipes.__file__).parent / "configs" / "sft"


def _errors(path: Path, overrides: list[str], world_size: int = 1) -> list[str]:
    with pytest.raises(ConfigValidationError) as exc:
        load_config(path, SFTConfig, overrides, world_size=world_size)
    return [str(i) for i in exc.value.issues if i.severity == "error"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["training.optimizer.lr=0"], "training.optimizer.lr: must be > 0, got 0.0"),
        (["training.optimizer.lr=-1e-4"], "training.optimizer.lr: must be > 0, got -0.0001"),
        (
            ["training.lr_schedule.warmup_steps=60"],
            "training.lr_schedule.warmup_steps: must be < the total optimizer steps (60), got 60",
        ),
        (["data.max_seq_len=0"], "data.max_seq_len: must be > 0, got 0"),
        (["training.lora.r=0"], "training.lora.r: must be > 0, got 0"),
        (["training.lora.targets=[]"], "training.lora.targets: must list at least one"),
        (["training.lora.dropout=1.0"], "training.lora.dropout: must be in [0.0, 1.0), got 1.0"),
        (["training.optimizer.betas=[0.9]"], "training.optimizer.betas: must be [beta1, beta2]"),
        (["training.micro_batch_size=0"], "training.micro_batch_size: must be > 0, got 0"),
        (["checkpointing.keep_last_n=0"], "checkpointing.keep_last_n: must be > 0, got 0"),
        (["checkpointing.resume=/no/such/step"], "checkpointing.resume: directory not found"),
        (["data.source=./missing.jsonl"], "data.source: path not found locally: ./missing.jsonl"),
        (["model.checkpoint_dir=/no/such/ckpt"], "model.checkpoint_dir: directory not found"),
        (["tokenizer.path=/no/such/tok"], "tokenizer.path: directory not found"),
        (
            ["data.validation_split=test"],
            "data.validation_fraction: set either data.validation_split or",
        ),
        (
            ["data.validation_split=test", "data.validation_fraction=0", "eval.every_n_steps=null"],
            "data.validation_split: ",  # a local jsonl has no named splits
        ),
        (
            ["data.validation_fraction=0"],
            "eval.every_n_steps: needs validation data",
        ),
        (["distributed.cpu_offload=true", "distributed.fsdp=false"], "distributed.cpu_offload"),
        (["qat.scheme=int4_weight_only", "training.method=qlora"], "qat.scheme: QAT and QLoRA"),
    ],
)
def test_each_bad_setting_is_an_error_naming_its_key(
    sft_yaml, overrides: list[str], expected: str
) -> None:
    errors = _errors(sft_yaml(), overrides)
    assert any(e.startswith("error: " + expected) for e in errors), errors


def test_errors_are_all_reported_at_once(sft_yaml) -> None:
    errors = _errors(sft_yaml(), ["training.optimizer.lr=0", "training.lora.r=-2"])
    assert [e.split(":")[1].strip() for e in errors] == ["training.lora.r", "training.optimizer.lr"]


def test_global_batch_must_divide_by_data_parallel_size_times_micro_batch(sft_yaml) -> None:
    path = sft_yaml()  # global 8, micro 4
    cfg = load_config(path, SFTConfig, world_size=2)  # 8 % (2 x 4) == 0
    assert cfg.training.gradient_accumulation_steps(2) == 1
    errors = _errors(path, [], world_size=4)  # 8 % (4 x 4) != 0
    assert errors == [
        "error: training.global_batch_size: 8 is not divisible by data-parallel size 4 (world "
        "size 4 / tp_size 1) × training.micro_batch_size 4 = 16"
    ]
    # Tensor parallelism shrinks the data-parallel size: 4 ranks / tp 2 = 2 -> 8 % 8 == 0.
    load_config(path, SFTConfig, ["distributed.tp_size=2"], world_size=4)
    errors = _errors(path, ["distributed.tp_size=3"], world_size=4)
    assert "error: distributed.tp_size: 3 does not divide the world size 4" in errors
    errors = _errors(path, ["distributed.tp_size=2", "data.padding_free=true"], world_size=4)
    assert errors == [
        "error: data.padding_free: cannot be combined with distributed.tp_size > 1: "
        "sequence-parallel layers split the sequence, and a padding-free row has any length"
    ]


def test_expert_parallel_degree_is_checked_against_ranks_model_and_method(
    sft_yaml, moe_assets, tiny_assets
) -> None:
    path = sft_yaml()  # tiny dense Llama, LoRA on attention, global 8, micro 4
    moe = [f"model.checkpoint_dir={moe_assets.checkpoint_dir}", "training.micro_batch_size=1"]
    load_config(path, SFTConfig, [*moe, "distributed.ep_size=2"], world_size=4)  # 8 experts
    errors = _errors(path, [*moe, "distributed.ep_size=3", "training.global_batch_size=12"], 6)
    assert errors == ["error: distributed.ep_size: 3 does not divide the model's 8 routed experts"]
    errors = _errors(path, [*moe, "distributed.ep_size=4", "distributed.tp_size=2"], world_size=4)
    assert errors == [
        "error: distributed.ep_size: 4 does not divide the data-parallel size 2 (world size 4 / "
        "tp_size 2)"
    ]
    dense = tiny_assets.checkpoint_dir
    errors = _errors(path, [f"model.checkpoint_dir={dense}", "distributed.ep_size=2"], 2)
    assert errors == [
        f"error: distributed.ep_size: {dense} is a dense model (no routed experts): use ep_size=1"
    ]
    errors = _errors(path, [*moe, "distributed.ep_size=2", "distributed.fsdp=false"], world_size=2)
    assert errors[0].startswith("error: distributed.ep_size: needs distributed.fsdp=true")
    # LoRA factors on the stacked experts are split with them; NF4 expert stacks stay whole.
    lora_experts = [*moe, "distributed.ep_size=2", "training.lora.target_parameters=[experts.gate_up_proj]"]  # fmt: skip
    load_config(path, SFTConfig, lora_experts, world_size=2)
    load_config(path, SFTConfig, [*lora_experts, "training.method=qlora"], world_size=2)
    cfg = load_config(path, SFTConfig, [*moe, "distributed.ep_size=2"], validate=False)
    warnings = validate_config(cfg, ValidationContext(world_size=1))
    assert [str(w) for w in warnings] == [
        "warning: distributed.ep_size: 2 has no effect with one process (the experts stay whole)"
    ]


def test_world_size_comes_from_the_environment(sft_yaml, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigValidationError, match="data-parallel size 4"):
        load_config(sft_yaml(), SFTConfig)
    monkeypatch.setenv("WORLD_SIZE", "2")
    load_config(sft_yaml(), SFTConfig)


def test_warmup_is_checked_against_total_steps_known_later(sft_yaml) -> None:
    # Without max_steps the total depends on the dataset: the recipe re-validates with it.
    cfg = load_config(sft_yaml(), SFTConfig, ["training.max_steps=null"])
    assert cfg.training.lr_schedule.warmup_steps == 5
    with pytest.raises(ConfigValidationError) as exc:
        validate_config(cfg, ValidationContext(world_size=1, total_steps=4))
    assert exc.value.keys == ["training.lr_schedule.warmup_steps"]
    validate_config(cfg, ValidationContext(world_size=1, total_steps=6))


def test_checkpoint_dir_must_be_an_hf_directory(sft_yaml, tmp_path: Path) -> None:
    empty = tmp_path / "empty_ckpt"
    empty.mkdir()
    errors = _errors(sft_yaml(), [f"model.checkpoint_dir={empty}"])
    assert f"error: model.checkpoint_dir: {empty} has no config.json" in errors[0]
    assert "has no *.safetensors weights" in errors[1]


def test_resume_accepts_auto_never_and_an_existing_directory(sft_yaml, tmp_path: Path) -> None:
    step = tmp_path / "step_10"
    step.mkdir()
    for value in ("auto", "never", str(step)):
        cfg = load_config(sft_yaml(), SFTConfig, [f"checkpointing.resume={value}"])
        assert cfg.checkpointing.resume == value


def test_missing_paths_are_warnings_when_asked(sft_yaml) -> None:
    cfg = load_config(
        sft_yaml(), SFTConfig, ["model.checkpoint_dir=/no/such/ckpt"], missing_paths="warn"
    )
    warnings = validate_config(cfg, ValidationContext(world_size=1, missing_paths="warn"))
    assert [str(w) for w in warnings] == [
        "warning: model.checkpoint_dir: directory not found locally: /no/such/ckpt"
    ]


BUNDLED = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_config_validates(name: str) -> None:
    # Bundled configs are templates: checkpoints and data are not on this machine.
    path = CONFIG_DIR / f"{name}.yaml"
    cfg = load_config(path, SFTConfig, recipe="sft", validate=False)
    world_sizes = {
        "tiny_cpu_lora_2proc": [1, 2], "llama3_1_8b_full_8gpu": [1, 8],
        "qwen3_30b_a3b_lora": [1, 8], "mixtral_8x7b_qlora": [1, 2], "tiny_cpu_moe_ep_2proc": [2],
    }.get(name, [1])  # fmt: skip
    for world_size in world_sizes:
        warnings = validate_config(cfg, ValidationContext(world_size, missing_paths="warn"))
        assert all(w.severity == "warning" for w in warnings)
        assert {w.key for w in warnings} <= {"model.checkpoint_dir", "data.source"}


def test_bundled_moe_config_validates_expert_parallel_with_expert_lora() -> None:
    # The header's expert-parallel variant of the Qwen3-30B-A3B config, on 8 ranks.
    overrides = ["distributed.ep_size=8"]
    cfg = load_config(CONFIG_DIR / "qwen3_30b_a3b_lora.yaml", SFTConfig, overrides, validate=False)
    warnings = validate_config(cfg, ValidationContext(8, missing_paths="warn"))
    assert {w.key for w in warnings} <= {"model.checkpoint_dir", "data.source"}


def test_bundled_set_covers_methods_and_families() -> None:
    methods = {
        load_config(CONFIG_DIR / f"{n}.yaml", SFTConfig, validate=False).training.method
        for n in BUNDLED
    }
    assert methods == {"full", "lora", "qlora", "dora"}
    for family in ("llama3_1", "llama3_2", "qwen2_5", "qwen3", "mistral", "gemma2", "qwen3_30b_a3b",
                   "gpt_oss", "mixtral"):  # fmt: skip
        assert any(n.startswith(family) for n in BUNDLED), family


def test_tune_validate_cli_ok_warnings_and_errors(
    sft_yaml, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "sft/llama3_1_8b_lora"]) == 0
    out = capsys.readouterr().out.splitlines()
    # (an owner/name value is also looked for as a Hub id: the line then says why it is not one)
    assert out[0].startswith(
        "warning: model.checkpoint_dir: directory not found locally: "
        "checkpoints/Llama-3.1-8B-Instruct"
    )
    assert out[-1].startswith("OK: ")
    assert "valid 'sft' config (world size 1)" in out[-1]
    # The same template as a user file: missing paths are errors; --paths warn relaxes it.
    assert main(["validate", str(CONFIG_DIR / "llama3_1_8b_lora.yaml"), "--paths", "error"]) == 2
    assert "model.checkpoint_dir: directory not found" in capsys.readouterr().err
    # A user file with local paths, overrides and a world size.
    path = sft_yaml()
    assert main(["validate", str(path), "training.micro_batch_size=2", "--world-size", "4"]) == 0
    assert "(world size 4)" in capsys.readouterr().out
    assert main(["validate", str(path), "--world-size", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tune validate: error: {path}: 1 invalid setting(s): ")
    assert "training.global_batch_size: 8 is not divisible" in err


def test_tune_validate_needs_to_know_the_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "anon.yaml"
    path.write_text("model:\n  checkpoint_dir: x\n")
    assert main(["validate", str(path)]) == 2
    assert "add `recipe: <name>` or pass --recipe" in capsys.readouterr().err
    assert main(["validate", str(path), "--recipe", "nope"]) == 2
    assert "no recipe named 'nope' is installed (installed: " in capsys.readouterr().err
