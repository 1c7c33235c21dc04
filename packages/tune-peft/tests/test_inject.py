"""Injection by name pattern: FQNs kept, pattern semantics, errors, named adapters, any nn.Module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tune.peft import (
    LoraConfig,
    LoRALinear,
    apply_lora,
    delete_adapter,
    initialize_adapters,
    lora_modules,
    remove_lora,
    select_lora_targets,
    set_active_adapter,
)

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_base_parameters_keep_their_names_and_objects(tiny_llama) -> None:
    before = dict(tiny_llama.named_parameters())
    targets = apply_lora(tiny_llama, LoraConfig(r=4, targets=["q_proj", "v_proj"]))
    after = dict(tiny_llama.named_parameters())
    assert targets == [
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    ]
    for name, param in before.items():
        assert after[name] is param
    added = set(after) - set(before)
    assert added == {f"{t}.{k}" for t in targets for k in ("lora_A.weight", "lora_B.weight")}
    # The base checkpoint loads into the adapted model unchanged (only adapter keys are missing).
    result = tiny_llama.load_state_dict({k: v.clone() for k, v in before.items()}, strict=False)
    assert set(result.missing_keys) == added
    assert result.unexpected_keys == []


def test_all_linear_leaves_out_the_head(tiny_llama) -> None:
    targets = select_lora_targets(tiny_llama, LoraConfig())
    assert targets == [
        f"model.layers.{i}.{'self_attn' if p in PROJ[:4] else 'mlp'}.{p}"
        for i in range(2)
        for p in PROJ
    ]
    own_head = LoraConfig(head_names=("down_proj",))
    assert "lm_head" in select_lora_targets(tiny_llama, own_head)


@pytest.mark.parametrize(
    ("targets", "exclude", "expected"),
    [
        (
            ["self_attn.q_proj"],
            [],
            ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"],
        ),
        (["layers.1.mlp.*"], [], [f"model.layers.1.mlp.{p}" for p in PROJ[4:]]),
        (
            ["re:model\\.layers\\.0\\.self_attn\\.[qk]_proj"],
            [],
            ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"],
        ),
        (
            ["*_proj"],
            ["self_attn.*", "re:.*layers\\.1\\..*"],
            [f"model.layers.0.mlp.{p}" for p in PROJ[4:]],
        ),
        (
            "all-linear",
            ["down_proj", "up_proj", "gate_proj"],
            [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in PROJ[:4]],
        ),
    ],
)
def test_pattern_kinds(tiny_llama, targets, exclude, expected) -> None:
    config = LoraConfig(targets=targets, exclude=exclude)
    assert select_lora_targets(tiny_llama, config) == expected


def test_plain_names_match_whole_components_only() -> None:
    model = nn.ModuleDict({"xq_proj": nn.Linear(2, 2), "q_proj": nn.Linear(2, 2)})
    assert select_lora_targets(model, LoraConfig(targets=["q_proj"])) == ["q_proj"]


def test_a_pattern_matching_nothing_lists_the_closest_names(tiny_llama) -> None:
    with pytest.raises(
        ValueError, match=r"'q_prj' matches no nn\.Linear.*closest names: \[.*'q_proj'"
    ):
        apply_lora(tiny_llama, LoraConfig(targets=["q_prj", "v_proj"]))
    with pytest.raises(ValueError, match="self_attn"):
        apply_lora(tiny_llama, LoraConfig(targets=["re:layers\\.0\\.attn\\.q_proj"]))
    with pytest.raises(ValueError, match="invalid regex"):
        apply_lora(tiny_llama, LoraConfig(targets=["re:("]))
    with pytest.raises(ValueError, match="selects no module"):
        apply_lora(tiny_llama, LoraConfig(targets=["q_proj"], exclude=["self_attn.*"]))
    assert not lora_modules(tiny_llama)  # nothing half-applied


def test_config_validation() -> None:
    with pytest.raises(ValueError, match=r"LoraConfig\.r: expected a positive integer"):
        LoraConfig(r=0)
    with pytest.raises(ValueError, match="dropout"):
        LoraConfig(dropout=1.0)
    with pytest.raises(ValueError, match="init must be one of"):
        LoraConfig(init="loftq")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mixes 'all-linear'"):
        LoraConfig(targets=["all-linear", "q_proj"])
    assert LoraConfig(targets=["all-linear"]).targets == "all-linear"
    assert LoraConfig(targets="q_proj").targets == ("q_proj",)


class _UserNet(nn.Module):
    """Someone's own model: a Sequential, a ModuleList and a layer registered twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(8, 16), nn.GELU())
        self.blocks = nn.ModuleList([nn.Linear(16, 16) for _ in range(2)])
        self.shared = nn.Linear(16, 16)
        self.alias = self.shared
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = torch.relu(block(h))
        return self.head(self.alias(self.shared(h)))


def test_works_on_any_module_and_shared_layers_get_one_wrapper() -> None:
    net = _UserNet()
    x = torch.randn(4, 8)
    y0 = net(x).detach()
    targets = apply_lora(net, LoraConfig(r=2, targets=["stem.0", "blocks.*", "shared"]))
    assert targets == ["stem.0", "blocks.0", "blocks.1", "shared"]
    assert isinstance(net.stem[0], LoRALinear)
    assert net.alias is net.shared
    assert isinstance(net.shared, LoRALinear)
    assert torch.equal(net(x), y0)  # zero-B init
    remove_lora(net)
    assert type(net.shared) is nn.Linear
    assert net.alias is net.shared
    assert torch.equal(net(x), y0)


def test_named_adapters_one_active(tiny_llama, tokens, helpers) -> None:
    base = helpers.logits_of(tiny_llama, tokens)
    apply_lora(tiny_llama, LoraConfig(r=4, targets=["q_proj", "v_proj"]), "first")
    helpers.randomize_adapters(tiny_llama, seed=1)
    first = helpers.logits_of(tiny_llama, tokens)
    apply_lora(tiny_llama, LoraConfig(r=2, targets=["v_proj"], use_dora=True), "second")
    # Added, not activated: output unchanged; trainable are still the first adapter's.
    assert torch.equal(helpers.logits_of(tiny_llama, tokens), first)
    trainable = {n for n, p in tiny_llama.named_parameters() if p.requires_grad}
    assert all(".lora_inactive." not in n for n in trainable)
    assert len(trainable) == 8
    active = set_active_adapter(tiny_llama, "second")
    assert active == ["model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.v_proj"]
    q = tiny_llama.model.layers[0].self_attn.q_proj
    assert q.active_adapter is None
    # DoRA starts as the identity and q_proj now has no active adapter: back to the base.
    torch.testing.assert_close(helpers.logits_of(tiny_llama, tokens), base, atol=1e-5, rtol=0)
    set_active_adapter(tiny_llama, "first")
    assert torch.equal(helpers.logits_of(tiny_llama, tokens), first)
    delete_adapter(tiny_llama, "second")
    assert all(m.adapter_names == ["first"] for m in lora_modules(tiny_llama).values())
    with pytest.raises(KeyError, match="no layer has an adapter named 'second'"):
        set_active_adapter(tiny_llama, "second")
    with pytest.raises(ValueError, match="adapter name"):
        apply_lora(tiny_llama, LoraConfig(targets=["q_proj"]), "a.b")


class _FakeQuantLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight.round(), self.bias)


def test_linear_subclasses_with_their_own_forward_are_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), _FakeQuantLinear(4, 4))
    with pytest.raises(TypeError, match=r"override it: \{'1': '_FakeQuantLinear'\}"):
        apply_lora(model, LoraConfig(r=2))
    assert not lora_modules(model)
    assert apply_lora(model, LoraConfig(r=2, exclude=["1"])) == ["0"]


def test_meta_device_flow_initializes_adapters_after_loading(tiny_llama, tokens, helpers) -> None:
    base_state = helpers.clone_state(tiny_llama)
    base_logits = helpers.logits_of(tiny_llama, tokens)
    with torch.device("meta"):
        model = type(tiny_llama)(tiny_llama.config)
    apply_lora(model, LoraConfig(r=4, use_dora=True, targets=["q_proj", "down_proj"]))
    assert model.model.layers[0].self_attn.q_proj.lora_A.weight.is_meta
    model.to_empty(device="cpu")
    model.load_state_dict(base_state, strict=False)
    touched = initialize_adapters(model)
    assert len(touched) == 4
    q = model.model.layers[0].self_attn.q_proj
    assert torch.count_nonzero(q.lora_B.weight) == 0
    assert q.lora_A.weight.abs().sum() > 0
    torch.testing.assert_close(q.lora_magnitude_vector, torch.linalg.norm(q.weight, dim=1))
    model.model.rotary_emb.inv_freq.copy_(
        tiny_llama.model.rotary_emb.inv_freq
    )  # a buffer, not loaded
    torch.testing.assert_close(
        helpers.logits_of(model.eval(), tokens), base_logits, atol=1e-5, rtol=0
    )
