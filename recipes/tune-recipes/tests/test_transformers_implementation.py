"""``model.implementation: transformers``: sft and preference train a family tune.models lacks
(a tiny random OLMo 2) through transformers' own modules, on one process and on two gloo ranks
(FSDP2 by decoder layer), and write HF and PEFT directories that transformers and peft load."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tune.checkpoint import load_peft_adapter as read_peft_dir
from tune.config import ConfigValidationError
from tune.data.synthetic import write_preference_data
from tune.dist.testing import run_to_end
from tune.peft import load_peft_adapter
from tune.recipes.common import availability
from tune.recipes.common.model_loading import load_pretrained
from tune.recipes.config import load_config
from tune.recipes.discovery import find_config
from tune.recipes.sft import SFTConfig
from tune.train.loggers import read_jsonl_metrics
from tune_testing import TinyAssets, run_in_process, tiny_overrides, tune_command

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from tune_testing.transformers_assets import make_tiny_olmo2_assets  # noqa: E402

CPU = torch.device("cpu")
STEPS = 3
SHORT = (
    "training.lr_schedule.warmup_steps=1", "eval.every_n_steps=null",
    "eval.before_training=false", "checkpointing.save_every_n_steps=null",
)  # fmt: skip


@pytest.fixture(scope="module")
def olmo2(tmp_path_factory: pytest.TempPathFactory) -> TinyAssets:
    return make_tiny_olmo2_assets(tmp_path_factory.mktemp("olmo2"))


def _logits(model: torch.nn.Module, tokens: torch.Tensor, hf: bool = False) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits if hf else model(tokens)


def test_lora_one_and_two_ranks_match_and_outputs_load_in_peft(
    olmo2: TinyAssets, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"nproc{nproc}"
        overrides = tiny_overrides(
            olmo2, out, "model.implementation=transformers", f"training.max_steps={STEPS}",
            "checkpointing.save_merged=true", *SHORT,
        )  # fmt: skip
        if nproc == 1:
            with caplog.at_level(logging.INFO, logger="tune.recipes.common.model_loading"):
                run_in_process("sft", "sft/tiny_cpu_lora", overrides)
            assert "loaded olmo2 (transformers implementation" in caplog.text
        else:  # FSDP2 over gloo, one shard group per decoder layer
            run_to_end(tune_command("sft", "sft/tiny_cpu_lora", overrides, nproc), 300)
        runs[nproc] = out
    losses = {n: read_jsonl_metrics(out / "metrics.jsonl", "loss") for n, out in runs.items()}
    assert sorted(losses[1]) == list(range(1, STEPS + 1))
    for step, loss in losses[1].items():
        assert losses[2][step] == pytest.approx(loss, abs=1e-5), step
    one, two = (load_file(out / "adapter" / "adapter_model.safetensors") for out in runs.values())
    assert sorted(one) == sorted(two)
    assert any("mlp.down_proj.lora_B" in k for k in one)
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, atol=1e-5, rtol=0)

    # tune: the base plus the adapter read back; peft and transformers: what was written
    adapter_dir, model_dir = runs[1] / "adapter", runs[1] / "model"
    ckpt = load_pretrained(
        olmo2.checkpoint_dir, dtype=torch.float32, device=CPU, implementation="transformers"
    )
    tokens = torch.randint(3, ckpt.config.vocab_size, (2, 12), generator=torch.Generator())
    base = _logits(ckpt.model.eval(), tokens)
    tensors, adapter_config = read_peft_dir(adapter_dir, prefix="")
    load_peft_adapter(ckpt.model, tensors, adapter_config, key_map=ckpt.native_to_hf_key)
    ours = _logits(ckpt.model.eval(), tokens)
    assert (ours - base).abs().max() > 1e-4  # the adapter really changed the model
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(olmo2.checkpoint_dir)
    with_adapter = peft.PeftModel.from_pretrained(hf_base, adapter_dir).eval()
    torch.testing.assert_close(_logits(with_adapter, tokens, hf=True), ours, atol=1e-5, rtol=0)
    merged = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.testing.assert_close(_logits(merged, tokens, hf=True), ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["full", "qlora"])
def test_full_and_qlora_runs_write_their_outputs(
    method: str, olmo2: TinyAssets, tmp_path: Path
) -> None:
    summary = run_in_process(
        "sft", f"sft/tiny_cpu_{method}",
        tiny_overrides(olmo2, tmp_path, "training.max_steps=2", *SHORT),  # implementation: auto
    )  # fmt: skip
    assert summary["step"] == 2
    if method == "full":
        model = transformers.AutoModelForCausalLM.from_pretrained(summary["model_dir"])
        written = model.get_submodule("model.layers.0.mlp.up_proj").weight
        base = load_file(olmo2.checkpoint_dir / "model.safetensors")
        assert (written - base["model.layers.0.mlp.up_proj.weight"]).abs().max() > 0
    else:
        config = (Path(summary["adapter_dir"]) / "adapter_config.json").read_text()
        assert '"q_proj"' in config
        assert "lm_head" not in config


def test_dpo_lora_run_finishes(olmo2: TinyAssets, tmp_path: Path) -> None:
    data = write_preference_data(tmp_path / "data", num_rows=24)["paired"]
    summary = run_in_process(
        "preference", "preference/tiny_cpu_dpo_lora",
        tiny_overrides(TinyAssets(olmo2.checkpoint_dir, data), tmp_path / "out",
                       "model.implementation=transformers", "training.max_steps=2", *SHORT),
    )  # fmt: skip
    assert summary["step"] == 2
    assert Path(summary["adapter_dir"], "adapter_config.json").is_file()


def test_auto_loads_native_for_a_native_family(
    tiny_assets: TinyAssets, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tune.recipes.common.model_loading"):
        ckpt = load_pretrained(
            tiny_assets.checkpoint_dir, dtype=torch.float32, device=CPU, implementation="auto"
        )
    assert ckpt.implementation == "native"
    assert "loaded llama (native implementation" in caplog.text


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["model.implementation=transformers", "distributed.tp_size=2"],
            "distributed.tp_size: tensor parallel needs a native model; "
            "model.implementation=transformers builds",
        ),
        (["distributed.tp_size=2"], "distributed.tp_size: tensor parallel needs a native model"),
        (["model.implementation=native"], "model.implementation: native: "),
        (
            ["qat.scheme=int8_weight_only", "checkpointing.save_merged=false"],
            "qat.scheme: QAT needs a native model",
        ),
    ],
)
def test_validation_refuses_what_transformers_models_cannot_do(
    overrides: list[str], expected: str, olmo2: TinyAssets, tmp_path: Path
) -> None:
    path, _ = find_config("sft/tiny_cpu_lora", "sft")
    with pytest.raises(ConfigValidationError) as exc:
        load_config(path, SFTConfig, [*tiny_overrides(olmo2, tmp_path), *overrides], world_size=2)
    errors = [str(i) for i in exc.value.issues if i.severity == "error"]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"error: {expected}")
    assert "\n" not in errors[0]


def test_validation_names_the_install_command_without_transformers(
    olmo2: TinyAssets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(availability, "installed", lambda module: module != "transformers")
    path, _ = find_config("sft/tiny_cpu_lora", "sft")
    with pytest.raises(ConfigValidationError) as exc:
        load_config(path, SFTConfig, tiny_overrides(olmo2, tmp_path))
    errors = [str(i) for i in exc.value.issues if i.severity == "error"]
    assert errors == [
        f"error: model.implementation: auto for {olmo2.checkpoint_dir} (no native family for its "
        "model_type) needs the transformers package, which is not installed: "
        "pip install 'tune-models[transformers]'"
    ]
