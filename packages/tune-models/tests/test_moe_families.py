"""MoE families: HF expert layouts both ways, router stats, config errors, sizes vs transformers.

Logits on padded batches, gradients, KV-cache decoding, packing, greedy generation and the
loading of transformers-saved directories run for these families through the ``family``
parametrisation of the other test files (conftest ``TINY_CONFIGS``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tune.models import (
    QWEN_EXPERT_KEYS,
    UnsupportedConfigError,
    active_param_count,
    build_from_hf_config,
    build_named_size,
    config_from_hf,
    convert_hf_to_native,
    convert_native_to_hf,
    named_size_config,
    param_count,
    stack_experts,
    supported_model_types,
)

MOE = ["deepseek_v3", "mixtral", "olmoe", "qwen2_moe", "qwen3_moe"]
PER_EXPERT = re.compile(r"model\.layers\.\d+\.(mlp|block_sparse_moe)\.experts\.\d+\.\w+\.weight")


def _disk_state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_families_are_registered() -> None:
    assert set(MOE) <= set(supported_model_types())


@pytest.mark.parametrize("family", MOE)
def test_we_write_the_per_expert_keys_transformers_writes(hf_and_native, hf_saved_dir, family):
    _, native = hf_and_native(family)
    disk = _disk_state(hf_saved_dir(family))
    # transformers 5 stacks experts in memory but saves one tensor per expert
    assert any(PER_EXPERT.fullmatch(k) for k in disk)
    assert not any(k.endswith(("experts.gate_up_proj", "experts.down_proj")) for k in disk)
    ours = convert_native_to_hf(native.state_dict(), native)
    assert set(ours) == set(disk)
    for key, value in disk.items():
        assert torch.equal(ours[key], value), key


@pytest.mark.parametrize("family", MOE)
def test_stacked_in_memory_layout_converts_alike(hf_and_native, family) -> None:
    hf, native = hf_and_native(family)
    stacked = hf.state_dict()  # transformers 5: mlp.gate.weight, mlp.experts.gate_up_proj, ...
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in stacked)
    converted = convert_hf_to_native(stacked, native)
    expected = native.state_dict()
    assert set(converted) == set(expected)
    for key, value in expected.items():
        assert torch.equal(converted[key], value), key


@pytest.mark.parametrize("family", MOE)
def test_transformers_loads_what_we_write(hf_and_native, hf_saved_dir, batch, tmp_path, family):
    import transformers

    hf, native = hf_and_native(family)
    state = {
        k: v.contiguous().clone()
        for k, v in convert_native_to_hf(native.state_dict(), native).items()
    }
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((hf_saved_dir(family) / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokens, mask, _ = batch([10, 6], length=10, seed=4, left=False)
    with torch.no_grad():
        want = hf(input_ids=tokens, attention_mask=mask).logits
        got = reloaded(input_ids=tokens, attention_mask=mask).logits
    assert torch.equal(got, want)


def test_router_stats_of_the_last_forward(hf_and_native) -> None:
    _, native = hf_and_native("qwen3_moe")  # layer 1 is dense (mlp_only_layers)
    tokens = torch.randint(3, 256, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        native(tokens)
    stats = native.router_stats()
    assert list(stats) == ["layers.0.mlp"]
    s = stats["layers.0.mlp"]
    assert s.selected_experts.shape == (14, 2)
    assert s.scores.shape == s.logits.shape == (14, 8)
    assert int(s.tokens_per_expert.sum()) == 14 * 2
    assert build_named_size("llama3.2-1b").router_stats() == {}


def test_module_names_are_the_public_contract(hf_and_native) -> None:
    _, native = hf_and_native("qwen2_moe")
    mlp = {k for k in native.state_dict() if k.startswith("layers.0.mlp.")}
    assert mlp == {
        "layers.0.mlp.router.weight",
        "layers.0.mlp.experts.gate_up_proj",
        "layers.0.mlp.experts.down_proj",
        "layers.0.mlp.shared_expert.gate_proj.weight",
        "layers.0.mlp.shared_expert.up_proj.weight",
        "layers.0.mlp.shared_expert.down_proj.weight",
        "layers.0.mlp.shared_expert_gate.weight",
    }
    _, qwen3 = hf_and_native("qwen3_moe")
    assert qwen3.state_dict()["layers.0.mlp.experts.gate_up_proj"].shape == (8, 2 * 32, 64)
    assert qwen3.state_dict()["layers.1.mlp.gate_proj.weight"].shape == (128, 64)  # dense
    _, olmoe = hf_and_native("olmoe")
    assert olmoe.state_dict()["layers.0.attn.q_norm.weight"].shape == (64,)  # whole projection
    assert olmoe.state_dict()["layers.0.attn.k_norm.weight"].shape == (32,)


def test_missing_expert_is_named(hf_saved_dir) -> None:
    disk = _disk_state(hf_saved_dir("qwen3_moe"))
    del disk["model.layers.0.mlp.experts.3.up_proj.weight"]
    with pytest.raises(
        ValueError, match=re.escape("experts.*.up_proj.weight: expected experts 0..7, missing [3]")
    ):
        stack_experts(disk, QWEN_EXPERT_KEYS, 8)


@pytest.mark.parametrize(
    ("size", "change", "message"),
    [
        ("olmoe-1b-7b", {"clip_qkv": 8.0}, "clip_qkv: expected null"),
        ("qwen3-30b-a3b", {"num_experts_per_tok": 200}, "num_experts_per_tok: expected at most"),
        ("qwen3-30b-a3b", {"mlp_only_layers": [48]}, "mlp_only_layers: expected a list"),
        ("qwen3-30b-a3b", {"num_experts": 0}, "num_experts: expected a positive integer"),
        ("mixtral-8x7b", {"router_jitter_noise": 0.1}, "'router_jitter_noise'"),
        ("qwen1.5-moe-a2.7b", {"shared_expert_intermediate_size": None}, "shared_expert_inter"),
    ],
)
def test_config_errors_name_the_key(size: str, change: dict, message: str) -> None:
    with pytest.raises(UnsupportedConfigError, match=re.escape(message)):
        config_from_hf({**named_size_config(size), **change})


def test_meta_build_then_init_weights_initialises_experts() -> None:
    small = {"hidden_size": 256, "intermediate_size": 128, "num_hidden_layers": 1}
    config = {**named_size_config("olmoe-1b-7b"), **small, "vocab_size": 64}
    model = build_from_hf_config(config, device="meta")
    model.to_empty(device="cpu")
    model.init_weights(std=0.02)
    gate_up = model.layers["0"].mlp.experts.gate_up_proj
    assert torch.isfinite(gate_up).all()
    assert 0.019 < gate_up.std().item() < 0.021


# Total parameters (transformers' count on the meta device for the same config, asserted below)
# and parameters used per token (routed experts counted top_k / num_experts).
SIZES = {
    "qwen3-30b-a3b": (30_532_122_624, 3_353_032_704),
    "qwen3-235b-a22b": (235_093_634_560, 22_190_763_520),
    "qwen1.5-moe-a2.7b": (14_315_784_192, 2_689_173_504),
    "qwen2-57b-a14b": (57_408_658_944, 14_249_270_784),
    "mixtral-8x7b": (46_702_792_704, 12_879_925_248),
    "mixtral-8x22b": (140_620_634_112, 39_152_031_744),
    "olmoe-1b-7b": (6_919_161_856, 1_282_017_280),
    "deepseek-v3": (671_026_404_352, 37_552_282_624),
}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_named_size_counts_equal_transformers_on_meta(name: str) -> None:
    import transformers

    config = named_size_config(name)
    ours = build_named_size(name)
    with torch.device("meta"):
        reference = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.for_model(**config)
        )
    assert param_count(ours) == sum(p.numel() for p in reference.parameters()) == SIZES[name][0]
    assert active_param_count(ours) == SIZES[name][1]
