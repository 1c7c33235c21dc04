"""LoRA on stacked MoE expert weights: PEFT interop both ways, merge, gradients, errors."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from torchao.quantization import to_nf4
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from tune.peft import (
    LoraConfig,
    adapter_state_dict,
    apply_lora,
    delete_adapter,
    disable_adapters,
    export_peft_adapter,
    load_peft_adapter,
    merge_adapters,
    merge_and_unload,
    set_active_adapter,
    trainable_parameters,
    unmerge_adapters,
)

EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]
CONFIG = LoraConfig(r=2, alpha=4.0, targets=["q_proj", "v_proj"], target_parameters=EXPERTS)


def make_tiny_moe(seed: int = 0) -> Qwen3MoeForCausalLM:
    """Qwen3-MoE: 2 layers, hidden 32, 4 experts (top-2) of width 16, float32, eval."""
    torch.manual_seed(seed)
    config = Qwen3MoeConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        num_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
    )  # fmt: skip
    return Qwen3MoeForCausalLM(config).eval()


@pytest.fixture
def tiny_moe() -> Qwen3MoeForCausalLM:
    return make_tiny_moe()


def _write(path: Path, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], []])
def test_tune_expert_lora_loads_in_peft(targets, tiny_moe, tokens, tmp_path, helpers) -> None:
    base = copy.deepcopy(tiny_moe)
    base_logits = helpers.logits_of(base, tokens)
    adapted = apply_lora(tiny_moe, dataclasses.replace(CONFIG, targets=targets))
    assert adapted[-4:] == [f"model.layers.{i}.mlp.{p}" for i in (0, 1) for p in EXPERTS]
    helpers.randomize_adapters(tiny_moe)
    tensors, config = export_peft_adapter(tiny_moe)
    assert config["target_parameters"] == ["experts.down_proj", "experts.gate_up_proj"]
    assert config["target_modules"] == targets
    # gate_up_proj is registered first: innermost ParamWrapper, one `base_layer.` deeper.
    prefix = "base_model.model.model.layers.0.mlp.experts"
    assert tensors[f"{prefix}.base_layer.lora_A.weight"].shape == (4 * 2, 32)  # [E * r, dim]
    assert tensors[f"{prefix}.base_layer.lora_B.weight"].shape == (32, 2 * 4)  # [2 * 16, r * E]
    assert tensors[f"{prefix}.lora_A.weight"].shape == (4 * 2, 16)
    assert tensors[f"{prefix}.lora_B.weight"].shape == (32, 2 * 4)
    peft_model = PeftModel.from_pretrained(base, _write(tmp_path / "a", tensors, config)).eval()
    ours = helpers.logits_of(tiny_moe, tokens)
    theirs = helpers.logits_of(peft_model, tokens)
    assert (ours - base_logits).abs().max() > 1e-2  # the adapter changed the model
    err = (ours - theirs).abs().max().item()
    print(f"tune -> peft experts, attention {targets}: max |logit diff| = {err:.2e}")
    assert err < 1e-5
    with torch.no_grad():  # the experts' part alone changes the logits too, in both
        for model in (tiny_moe, peft_model):
            for name, param in model.named_parameters():
                if "self_attn" in name and "lora_B" in name:
                    param.zero_()
    experts_only = helpers.logits_of(tiny_moe, tokens)
    assert (experts_only - base_logits).abs().max() > 1e-2
    assert (experts_only - helpers.logits_of(peft_model, tokens)).abs().max() < 1e-5


class _TransposedExperts(nn.Module):
    """Experts stored [E, in, out] (transformers' `is_transposed`), every token through all."""

    is_transposed = True

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Parameter(torch.randn(3, 8, 12))  # [E, in, out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ni,eio->no", x, self.up)  # [N, out]


def test_transposed_stack_matches_peft(tmp_path) -> None:
    net = nn.Sequential(_TransposedExperts())
    x = torch.randn(5, 8)
    peft_model = get_peft_model(
        copy.deepcopy(net), PeftLoraConfig(r=2, lora_alpha=2, target_parameters=["0.up"])
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_()
    peft_model.save_pretrained(tmp_path / "t")
    tensors = load_file(str(tmp_path / "t" / "adapter_model.safetensors"))
    load_peft_adapter(net, tensors, tmp_path / "t")
    assert net[0].param_lora.up.lora_A.shape == (3, 2, 8)  # [E, r, in]
    with torch.no_grad():
        err = (net(x) - peft_model(x)).abs().max().item()
    print(f"peft -> tune [E, in, out] stack: max |output diff| = {err:.2e}")
    assert err < 1e-5


@pytest.mark.parametrize("params", [EXPERTS, ["mlp.experts.down_proj"]])
def test_peft_expert_lora_loads_here(params, tiny_moe, tokens, tmp_path, helpers) -> None:
    ours = copy.deepcopy(tiny_moe)
    peft_config = PeftLoraConfig(
        r=3, lora_alpha=6, use_rslora=True, target_modules=["q_proj", "o_proj"],
        target_parameters=params,
    )  # fmt: skip
    peft_model = get_peft_model(tiny_moe, peft_config)
    helpers.randomize_adapters(peft_model, seed=5)
    peft_model.save_pretrained(tmp_path / "p")
    theirs = helpers.logits_of(peft_model.eval(), tokens)
    tensors = load_file(str(tmp_path / "p" / "adapter_model.safetensors"))
    adapted = load_peft_adapter(ours, tensors, tmp_path / "p")
    assert [a for a in adapted if "experts" in a] == [
        f"model.layers.{i}.mlp.experts.{p.rpartition('.')[2]}" for i in (0, 1) for p in params
    ]
    err = (helpers.logits_of(ours, tokens) - theirs).abs().max().item()
    print(f"peft -> tune {params}: max |logit diff| = {err:.2e}")
    assert err < 1e-5
    # and back out: the same keys and tensors PEFT wrote.
    again, _ = export_peft_adapter(ours)
    assert again.keys() == tensors.keys()
    assert all(torch.equal(again[k], tensors[k]) for k in tensors)


def test_merge_unmerge_and_disable(tiny_moe, tokens, helpers) -> None:
    before = helpers.clone_state(tiny_moe)
    base_logits = helpers.logits_of(tiny_moe, tokens)
    apply_lora(tiny_moe, CONFIG)
    helpers.randomize_adapters(tiny_moe)
    assert tiny_moe.state_dict().keys() >= before.keys()  # base names unchanged
    adapted_logits = helpers.logits_of(tiny_moe, tokens)
    with disable_adapters(tiny_moe):
        assert torch.equal(helpers.logits_of(tiny_moe, tokens), base_logits)
    set_active_adapter(tiny_moe, None)
    assert torch.equal(helpers.logits_of(tiny_moe, tokens), base_logits)
    set_active_adapter(tiny_moe, "default")
    assert torch.equal(helpers.logits_of(tiny_moe, tokens), adapted_logits)
    merged = merge_adapters(tiny_moe)
    assert len(merged) == 4 + 4
    merged_err = (helpers.logits_of(tiny_moe, tokens) - adapted_logits).abs().max().item()
    print(f"merged vs adapted: max |logit diff| = {merged_err:.2e}")
    assert merged_err < 1e-5
    unmerge_adapters(tiny_moe)
    after = tiny_moe.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # bit-exact
    assert torch.equal(helpers.logits_of(tiny_moe, tokens), adapted_logits)
    merge_and_unload(tiny_moe)
    assert tiny_moe.state_dict().keys() == before.keys()
    assert type(tiny_moe.model.layers[0].mlp.experts).__name__ == "Qwen3MoeExperts"
    assert (helpers.logits_of(tiny_moe, tokens) - adapted_logits).abs().max() < 1e-5


def test_gradients_reach_only_the_factors(tiny_moe, tokens, helpers) -> None:
    apply_lora(tiny_moe, CONFIG)
    helpers.randomize_adapters(tiny_moe)
    trainable = trainable_parameters(tiny_moe)
    assert set(trainable) == set(adapter_state_dict(tiny_moe))
    assert sum("param_lora" in n for n in trainable) == 2 * 2 * 2  # layers x stacks x (A, B)
    tiny_moe.train()
    tiny_moe(input_ids=tokens, labels=tokens).loss.backward()
    for name, param in tiny_moe.named_parameters():
        if name in trainable:
            assert param.grad is not None, name
            assert param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    a = tiny_moe.model.layers[0].mlp.experts.param_lora.gate_up_proj.lora_A
    assert a.shape == (4, 2, 32)  # per-expert [E, r, in]
    delete_adapter(tiny_moe, "default")
    assert type(tiny_moe.model.layers[0].mlp.experts).__name__ == "Qwen3MoeExperts"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_parameters": ["experts.up_proj"]}, "pattern 'experts.up_proj' matches no parameter"),
        ({"target_parameters": ["mlp.gate.weight"]}, "matches parameters that are not 3-D"),
        ({"target_parameters": EXPERTS, "dropout": 0.1}, "LoraConfig.dropout: 0.1 is not supported"),
    ],
)  # fmt: skip
def test_clear_errors(kwargs, message, tiny_moe) -> None:
    with pytest.raises(ValueError, match=message):
        apply_lora(tiny_moe, LoraConfig(targets=(), **kwargs))
    assert not trainable_parameters(tiny_moe) or all(
        "lora" not in n for n in trainable_parameters(tiny_moe)
    )


class _NF4Stack(torch.Tensor):
    """A frozen [E, out, in] stack of per-expert torchao NF4 matrices (test stand-in for QLoRA).

    It supports no op of its own: the model only ever sees what `dequantize()` returns.
    """

    @staticmethod
    def __new__(cls, dense: torch.Tensor) -> _NF4Stack:
        return torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls, dense.shape, dtype=dense.dtype, device=dense.device, requires_grad=False
        )

    def __init__(self, dense: torch.Tensor) -> None:
        self.experts = [to_nf4(w, 64, 8) for w in dense.detach()]

    def dequantize(self) -> torch.Tensor:  # type: ignore[override]
        return torch.stack([w.get_original_weight() for w in self.experts])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.detach.default:  # nn.Parameter(...) detaches
            return args[0]
        raise NotImplementedError(f"_NF4Stack does not implement {func}")


def _quantize_experts(model: nn.Module) -> None:
    for layer in model.model.layers:
        experts = layer.mlp.experts
        for name in ("gate_up_proj", "down_proj"):
            stack = _NF4Stack(experts._parameters[name])
            experts._parameters[name] = nn.Parameter(stack, requires_grad=False)


def test_expert_lora_over_nf4_stacks(tiny_moe, tokens, helpers) -> None:
    _quantize_experts(tiny_moe)
    reference = make_tiny_moe()
    with torch.no_grad():  # the same model with the NF4 stacks dequantized
        for ours, ref in zip(tiny_moe.model.layers, reference.model.layers, strict=True):
            for name in ("gate_up_proj", "down_proj"):
                weight = ours.mlp.experts._parameters[name]
                ref.mlp.experts._parameters[name].copy_(weight.dequantize())
    for model in (tiny_moe, reference):
        apply_lora(model, CONFIG)
        helpers.randomize_adapters(model)
    weight = tiny_moe.model.layers[0].mlp.experts._parameters["gate_up_proj"]
    assert isinstance(weight, _NF4Stack)
    assert (
        tiny_moe.model.layers[0].mlp.experts.param_lora.gate_up_proj.lora_A.dtype == torch.float32
    )
    err = (helpers.logits_of(tiny_moe, tokens) - helpers.logits_of(reference, tokens)).abs().max()
    print(f"NF4 stacks + expert LoRA vs dequantized dense: max |logit diff| = {err.item():.2e}")
    assert err < 1e-5
    codes = [w.quantized_data.clone() for w in weight.experts]
    losses = helpers.train_steps(tiny_moe, tokens, steps=3)
    assert losses[-1] < losses[0]
    assert all(torch.equal(c, w.quantized_data) for c, w in zip(codes, weight.experts, strict=True))
    with pytest.raises(TypeError, match="merge_and_unload"):
        merge_adapters(tiny_moe)
    adapted = helpers.logits_of(tiny_moe, tokens)
    merge_and_unload(tiny_moe, dequantize=True)
    assert type(tiny_moe.model.layers[0].mlp.experts.gate_up_proj) is nn.Parameter
    assert (helpers.logits_of(tiny_moe, tokens) - adapted).abs().max() < 1e-5


def test_adapted_weight_is_read_only_inside_the_forward(tiny_moe, tokens, helpers) -> None:
    apply_lora(tiny_moe, CONFIG)
    helpers.randomize_adapters(tiny_moe)
    experts = tiny_moe.model.layers[0].mlp.experts
    lora = experts.param_lora.gate_up_proj
    # Outside the owner's forward the attribute is the stored Parameter (FSDP2, DCP and state-dict
    # code read it with getattr), never a computed tensor.
    assert experts.gate_up_proj is experts._parameters["gate_up_proj"]
    seen: list[torch.Tensor] = []
    handle = experts.register_forward_pre_hook(lambda m, *_: seen.append(m.gate_up_proj))
    helpers.logits_of(tiny_moe, tokens)
    handle.remove()
    want = experts._parameters["gate_up_proj"] + lora.delta(torch.float32)
    assert len(seen) == 1
    assert seen[0] is not experts._parameters["gate_up_proj"]
    torch.testing.assert_close(seen[0], want, atol=1e-6, rtol=0)
    assert experts.gate_up_proj is experts._parameters["gate_up_proj"]


def test_fsdp2_trains_and_gathers_expert_lora(tiny_moe, tokens, helpers, tmp_path) -> None:
    """One gloo rank in this process: FSDP2 shards the stacks and their factors (DTensors); the
    forward, backward and the full state dict gather equal the unsharded model."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    if dist.is_initialized():
        pytest.skip("a process group is already up in this process")
    apply_lora(tiny_moe, CONFIG)
    helpers.randomize_adapters(tiny_moe)
    reference = copy.deepcopy(tiny_moe).train()
    ref_loss = reference(input_ids=tokens, labels=tokens).loss
    ref_loss.backward()
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        for layer in tiny_moe.model.layers:
            fully_shard(layer)
        fully_shard(tiny_moe)
        tiny_moe.train()
        loss = tiny_moe(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
        lora_a = tiny_moe.model.layers[0].mlp.experts.param_lora.gate_up_proj.lora_A
        want_grad = reference.model.layers[0].mlp.experts.param_lora.gate_up_proj.lora_A.grad
        torch.testing.assert_close(lora_a.grad.full_tensor(), want_grad, atol=1e-6, rtol=0)
        full = get_model_state_dict(
            tiny_moe, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    finally:
        dist.destroy_process_group()
    want = reference.state_dict()
    assert full.keys() == want.keys()
    assert all(torch.equal(full[k], want[k]) for k in want)
