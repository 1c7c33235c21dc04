"""PEFT interop in both directions on tiny transformers models: same logits within 1e-5."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from tune.peft import (
    AdapterMismatchError,
    LoraConfig,
    adapter_key_map,
    adapter_state_dict,
    apply_lora,
    export_peft_adapter,
    from_peft_config,
    load_peft_adapter,
    to_peft_config,
)

CONFIGS = {
    "lora": LoraConfig(r=4, alpha=8.0, dropout=0.05, targets=["q_proj", "v_proj", "down_proj"]),
    "dora": LoraConfig(r=4, alpha=8.0, use_dora=True),
    "rslora": LoraConfig(r=8, alpha=4.0, use_rslora=True, targets=["re:.*layers\\.1\\..*proj"]),
}


def _write_peft_dir(path: Path, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return path


def _read_peft_dir(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    config = json.loads((path / "adapter_config.json").read_text())
    return load_file(str(path / "adapter_model.safetensors")), config


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_adapter_trained_here_loads_in_peft(kind, tiny_llama, tokens, tmp_path, helpers) -> None:
    base = helpers.pristine_copy(tiny_llama)
    base_logits = helpers.logits_of(base, tokens)
    targets = apply_lora(tiny_llama, CONFIGS[kind])
    losses = helpers.train_steps(tiny_llama, tokens, steps=4)
    assert losses[-1] < losses[0]
    tensors, config = export_peft_adapter(tiny_llama)
    assert len(tensors) == len(targets) * (3 if kind == "dora" else 2)
    assert all(k.startswith("base_model.model.model.layers.") for k in tensors)
    expected_targets = {
        "lora": ["down_proj", "q_proj", "v_proj"],
        "dora": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
        "rslora": sorted(targets),  # a layer subset: exact names
    }[kind]
    assert config["target_modules"] == expected_targets
    peft_model = PeftModel.from_pretrained(
        base, _write_peft_dir(tmp_path / kind, tensors, config)
    ).eval()
    theirs = helpers.logits_of(peft_model, tokens)
    ours = helpers.logits_of(tiny_llama, tokens)
    assert (ours - base_logits).abs().max() > 1e-3  # the adapter changed the model
    err = (theirs - ours).abs().max().item()
    print(f"{kind}: tune -> peft max |logit diff| = {err:.2e}")
    assert err < 1e-5


@pytest.mark.parametrize("use_dora", [False, True])
def test_adapter_written_by_peft_loads_here(
    use_dora, tiny_llama, tokens, tmp_path, helpers
) -> None:
    ours = helpers.pristine_copy(tiny_llama)
    base_logits = helpers.logits_of(tiny_llama, tokens)
    peft_config = PeftLoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "o_proj", "up_proj"], use_dora=use_dora,
        use_rslora=use_dora, task_type="CAUSAL_LM",
    )  # fmt: skip
    peft_model = get_peft_model(tiny_llama, peft_config)
    helpers.train_steps(peft_model, tokens, steps=4)
    peft_model.save_pretrained(str(tmp_path))
    theirs = helpers.logits_of(peft_model, tokens)
    assert (theirs - base_logits).abs().max() > 1e-3  # the adapter does something
    tensors, config = _read_peft_dir(tmp_path)
    targets = load_peft_adapter(ours, tensors, config)
    assert targets == [
        f"model.layers.{i}.{m}"
        for i in range(2)
        for m in ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj")
    ]
    err = (helpers.logits_of(ours, tokens) - theirs).abs().max().item()
    print(f"dora={use_dora}: peft -> tune max |logit diff| = {err:.2e}")
    assert err < 1e-5
    # Writing it back gives PEFT's tensors exactly, under the same keys.
    again, again_config = export_peft_adapter(ours)
    assert set(again) == set(tensors)
    assert all(torch.equal(again[k], tensors[k]) for k in tensors)
    for key in ("r", "lora_alpha", "use_dora", "use_rslora", "bias", "peft_type"):
        assert again_config[key] == config[key], key
    assert set(again_config["target_modules"]) == set(config["target_modules"])  # PEFT: a set


def test_biases_round_trip_with_peft(tmp_path, tokens, helpers) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM  # q/k/v carry biases

    model = Qwen2ForCausalLM(
        Qwen2Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
    ).eval()  # fmt: skip
    base = helpers.pristine_copy(model)
    apply_lora(model, LoraConfig(r=2, targets=["q_proj", "o_proj"], bias="all"))
    helpers.train_steps(model, tokens, steps=3)
    tensors, config = export_peft_adapter(model)
    assert "base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias" in tensors
    assert "base_model.model.model.layers.0.self_attn.k_proj.bias" in tensors
    peft_model = PeftModel.from_pretrained(base, _write_peft_dir(tmp_path, tensors, config)).eval()
    assert (
        helpers.logits_of(peft_model, tokens) - helpers.logits_of(model, tokens)
    ).abs().max() < 1e-5


def test_key_map_renames_both_ways(tiny_llama, tokens, helpers) -> None:
    fresh = helpers.pristine_copy(tiny_llama)
    apply_lora(tiny_llama, LoraConfig(r=2, targets=["k_proj", "lm_head"]))
    helpers.randomize_adapters(tiny_llama)

    def key_map(key: str) -> str:
        return "wrapped." + key.replace("self_attn", "attention")

    tensors, config = export_peft_adapter(tiny_llama, key_map=key_map)
    assert "base_model.model.wrapped.model.layers.1.attention.k_proj.lora_B.weight" in tensors
    assert config["target_modules"] == ["k_proj", "lm_head"]
    load_peft_adapter(fresh, tensors, config, key_map=key_map)
    assert torch.equal(helpers.logits_of(fresh, tokens), helpers.logits_of(tiny_llama, tokens))
    with pytest.raises(ValueError, match="already has an adapter named 'default'"):
        load_peft_adapter(fresh, tensors, config, key_map=key_map)
    bad = {
        "base_model.model.wrapped.model.layers.0.attention.q_prj.lora_A.weight": torch.zeros(2, 32)
    }
    with pytest.raises(
        ValueError,
        match=r"'wrapped.model.layers.0.attention.q_prj', which is no linear.*closest: \['wrapped.model.layers.0.attention.q_proj'",
    ):
        load_peft_adapter(fresh, bad, config, key_map=key_map, adapter_name="other")


def test_adapter_of_another_base_names_tensor_shapes_and_base(tiny_llama, helpers) -> None:
    narrow = helpers.make_tiny_llama(hidden_size=16)
    apply_lora(narrow, LoraConfig(r=2, targets=["q_proj"]))
    tensors, config = export_peft_adapter(narrow, base_model_name_or_path="org/narrow")
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    with pytest.raises(AdapterMismatchError) as info:
        load_peft_adapter(tiny_llama, tensors, config)
    message = str(info.value)
    assert "'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'" in message
    assert "shape (2, 16)" in message
    assert "(32, 32)" in message
    assert "in_features=32" in message
    assert "base_model_name_or_path='org/narrow'" in message
    assert tiny_llama.state_dict().keys() == before.keys()  # nothing was injected


def test_adapter_for_a_missing_layer_is_a_mismatch(tiny_llama, helpers) -> None:
    deep = helpers.make_tiny_llama(num_layers=3)
    apply_lora(deep, LoraConfig(r=2, targets=["v_proj"]))
    tensors, config = export_peft_adapter(deep)
    with pytest.raises(AdapterMismatchError, match=r"'model.layers.2.self_attn.v_proj', which is"):
        load_peft_adapter(tiny_llama, tensors, config)


def test_pissa_init_matches_peft(tiny_llama, helpers) -> None:
    peft_model = get_peft_model(
        helpers.pristine_copy(tiny_llama),
        PeftLoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], init_lora_weights="pissa"
        ),
    )
    targets = apply_lora(
        tiny_llama, LoraConfig(r=4, alpha=8.0, targets=["q_proj", "down_proj"], init="pissa")
    )
    theirs = peft_model.state_dict()
    ours = tiny_llama.state_dict()
    for fqn in targets:
        peft_fqn = f"base_model.model.{fqn}"
        for mine, peft_key in [
            (f"{fqn}.lora_A.weight", f"{peft_fqn}.lora_A.default.weight"),
            (f"{fqn}.lora_B.weight", f"{peft_fqn}.lora_B.default.weight"),
            (f"{fqn}.weight", f"{peft_fqn}.base_layer.weight"),  # the residual
        ]:
            torch.testing.assert_close(ours[mine], theirs[peft_key], atol=1e-6, rtol=1e-5)


def test_config_vocabulary_round_trip() -> None:
    config = LoraConfig(r=16, alpha=32.0, dropout=0.1, targets=["q_proj", "v_proj"], exclude=["lm_head"],
                        use_rslora=True, use_dora=True, bias="lora_only")  # fmt: skip
    peft_dict = to_peft_config(config)
    assert peft_dict["lora_alpha"] == 32
    assert isinstance(peft_dict["lora_alpha"], int)
    parsed = PeftLoraConfig(**{k: v for k, v in peft_dict.items() if k not in ("peft_type",)})
    assert parsed.r == 16
    assert parsed.use_dora
    assert parsed.use_rslora
    assert set(parsed.target_modules) == {"q_proj", "v_proj"}
    assert from_peft_config(peft_dict) == LoraConfig(
        r=16, alpha=32, dropout=0.1, targets=("q_proj", "v_proj"), exclude=("lm_head",),
        use_rslora=True, use_dora=True, bias="lora_only",
    )  # fmt: skip
    assert from_peft_config({**peft_dict, "target_modules": "all-linear"}).targets == "all-linear"
    assert from_peft_config({**peft_dict, "target_modules": ".*q_proj"}).targets == ("re:.*q_proj",)
    with pytest.raises(ValueError, match=r"adapter_config\.json: rank_pattern: "):
        from_peft_config({**peft_dict, "rank_pattern": {"q_proj": 8}})
    with pytest.raises(
        ValueError, match=r"adapter_config\.json: peft_type: expected 'LORA', got 'IA3'"
    ):
        from_peft_config({**peft_dict, "peft_type": "IA3"})
    with pytest.raises(ValueError, match="globs"):
        to_peft_config(LoraConfig(targets=["layers.*.q_proj"]))


def test_magnitude_key_with_weight_suffix_is_accepted(tiny_llama, tokens, helpers) -> None:
    fresh = helpers.pristine_copy(tiny_llama)
    apply_lora(tiny_llama, LoraConfig(r=2, targets=["v_proj"], use_dora=True))
    helpers.randomize_adapters(tiny_llama)
    tensors, config = export_peft_adapter(tiny_llama)
    renamed = {
        (k + ".weight" if k.endswith("lora_magnitude_vector") else k): v for k, v in tensors.items()
    }
    load_peft_adapter(fresh, renamed, config)
    assert torch.equal(helpers.logits_of(fresh, tokens), helpers.logits_of(tiny_llama, tokens))


def test_adapter_key_map_lifts_a_base_key_map(tiny_llama) -> None:
    apply_lora(tiny_llama, LoraConfig(r=2, targets=["k_proj"], use_dora=True))

    def base_map(key: str) -> str:  # knows base parameter keys only, like a checkpoint key map
        if not key.endswith((".weight", ".bias")) or ".lora_" in key:
            raise KeyError(key)
        return "hf." + key

    lifted = adapter_key_map(base_map)
    assert lifted("a.k_proj.lora_A.weight") == "hf.a.k_proj.lora_A.weight"
    assert lifted("a.k_proj.lora_magnitude_vector") == "hf.a.k_proj.lora_magnitude_vector"
    assert lifted("a.k_proj.weight") == "hf.a.k_proj.weight"
    tensors, _ = export_peft_adapter(tiny_llama, key_map=base_map)
    native = adapter_state_dict(tiny_llama)
    assert set(tensors) == {"base_model.model." + lifted(k) for k in native}
