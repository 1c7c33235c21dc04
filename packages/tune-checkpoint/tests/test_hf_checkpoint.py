"""HF directories: written here -> transformers loads with equal logits; written by transformers ->
loads here into a meta-built model; key maps, dtypes, tied weights, and clear mismatch errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from tune.checkpoint import (
    StateDictMismatchError,
    load_hf_checkpoint,
    save_hf_checkpoint,
)

TOKENS = torch.tensor([[1, 5, 9, 200, 17, 3, 44, 250]])


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


@pytest.mark.parametrize("max_shard_size", ["5GB", 20_000])
def test_written_here_loads_in_transformers_with_equal_logits(
    tmp_path: Path, max_shard_size, tiny_llama
) -> None:
    from transformers import AutoModelForCausalLM

    source = tiny_llama(seed=0)
    source.config.save_pretrained(tmp_path / "src")
    source.generation_config.save_pretrained(tmp_path / "src")
    (tmp_path / "src" / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    files = save_hf_checkpoint(
        tmp_path / "out",
        source.state_dict(),
        key_map=lambda k: k,
        source_dir=tmp_path / "src",
        max_shard_size=max_shard_size,
    )
    assert (len(files) > 1) == (max_shard_size != "5GB")
    assert (tmp_path / "out" / "generation_config.json").is_file()
    assert (tmp_path / "out" / "tokenizer_config.json").read_text() == '{"model_max_length": 64}'
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.equal(_logits(loaded), _logits(source))


def test_bf16_save_updates_config_dtype(tmp_path: Path, tiny_llama) -> None:
    from transformers import AutoModelForCausalLM

    source = tiny_llama(seed=1)
    config = source.config.to_dict()
    config["torch_dtype"] = "float32"
    save_hf_checkpoint(tmp_path, source.state_dict(), dtype=torch.bfloat16, config=config)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["dtype"] == written["torch_dtype"] == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype="auto")
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    want = source.model.embed_tokens.weight.detach().to(torch.bfloat16)
    assert torch.equal(loaded.model.embed_tokens.weight, want)


def test_transformers_directory_loads_into_a_meta_model(tmp_path: Path, tiny_llama) -> None:
    from transformers import LlamaForCausalLM

    source = tiny_llama(seed=2)
    source.save_pretrained(tmp_path, max_shard_size="30KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()

    with torch.device("meta"):
        target = LlamaForCausalLM(source.config)
    load_hf_checkpoint(target, tmp_path)
    want = source.state_dict()
    for name, tensor in target.state_dict().items():
        assert not tensor.is_meta, name
        assert torch.equal(tensor, want[name]), name
    assert all(p.requires_grad for p in target.parameters())


def test_transformers_directory_loads_into_a_built_model_with_equal_logits(
    tmp_path: Path, tiny_llama
) -> None:
    source = tiny_llama(seed=3)
    source.save_pretrained(tmp_path)
    target = tiny_llama(seed=4)
    assert not torch.equal(_logits(target), _logits(source))
    load_hf_checkpoint(target, tmp_path)
    assert torch.equal(_logits(target), _logits(source))


class _Native(nn.Module):
    """A model with native names and tied input/output embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(16, 8)
        self.layers = nn.ModuleDict({"0": nn.ModuleDict({"proj": nn.Linear(8, 8)})})
        self.output = nn.Linear(8, 16, bias=False)
        self.output.weight = self.tok_embeddings.weight


def _to_hf(key: str) -> str | None:
    if key == "output.weight":
        return None  # tied: HF stores only the embedding
    return key.replace("tok_embeddings", "model.embed_tokens").replace(
        "layers.0.proj", "model.layers.0.linear"
    )


def _from_hf(key: str) -> str:
    return key.replace("model.embed_tokens", "tok_embeddings").replace(
        "model.layers.0.linear", "layers.0.proj"
    )


def test_key_maps_and_tied_weights_round_trip_through_meta(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = _Native()
    save_hf_checkpoint(tmp_path, source.state_dict(), key_map=_to_hf)
    with torch.device("meta"):
        target = _Native()
    load_hf_checkpoint(target, tmp_path, key_map=_from_hf, dtype=torch.float64)
    assert target.output.weight is target.tok_embeddings.weight
    assert target.output.weight.dtype == torch.float64
    assert torch.equal(target.layers["0"]["proj"].bias, source.layers["0"]["proj"].bias.double())


def test_missing_unexpected_and_shape_errors_name_file_and_keys(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = _Native().state_dict()
    hf = {_to_hf(k): v for k, v in state.items() if _to_hf(k)}

    missing = {k: v for k, v in hf.items() if "linear.bias" not in k}
    save_hf_checkpoint(tmp_path / "missing", missing)
    with pytest.raises(StateDictMismatchError, match=r"missing keys.*'layers\.0\.proj\.bias'"):
        load_hf_checkpoint(_Native(), tmp_path / "missing", key_map=_from_hf)

    extra = {**hf, "model.rogue.weight": torch.ones(2)}
    save_hf_checkpoint(tmp_path / "extra", extra)
    with pytest.raises(
        StateDictMismatchError, match=r"unexpected keys in model\.safetensors.*rogue"
    ):
        load_hf_checkpoint(_Native(), tmp_path / "extra", key_map=_from_hf)

    wrong = {**hf, "model.layers.0.linear.weight": torch.ones(8, 9)}
    save_hf_checkpoint(tmp_path / "wrong", wrong)
    with pytest.raises(StateDictMismatchError) as err:
        load_hf_checkpoint(_Native(), tmp_path / "wrong", key_map=_from_hf)
    assert "model.safetensors: 'model.layers.0.linear.weight' has shape [8, 9]" in str(err.value)
    assert "expects [8, 8]" in str(err.value)


def test_failed_load_leaves_the_model_untouched(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = {_to_hf(k): v for k, v in _Native().state_dict().items() if _to_hf(k)}
    state["model.layers.0.linear.bias"] = torch.ones(3)
    save_hf_checkpoint(tmp_path, state, max_shard_size=100)
    target = _Native()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(StateDictMismatchError):
        load_hf_checkpoint(target, tmp_path, key_map=_from_hf)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_pytorch_bin_is_read_with_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = _Native()
    hf = {_to_hf(k): v for k, v in source.state_dict().items() if _to_hf(k)}
    torch.save(hf, tmp_path / "pytorch_model.bin")
    target = _Native()
    load_hf_checkpoint(target, tmp_path, key_map=_from_hf)
    assert torch.equal(target.output.weight, source.output.weight)

    class _Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    # Neither the zip format nor a legacy pickle may run code on load.
    torch.save({"x": _Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        load_hf_checkpoint(_Native(), tmp_path, key_map=_from_hf)
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"x": _Evil()}))
    with pytest.raises(pickle.UnpicklingError):
        load_hf_checkpoint(_Native(), tmp_path, key_map=_from_hf)


def test_integer_tensor_for_a_float_parameter_is_refused_before_reading(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = _Native()
    hf = {_to_hf(k): v for k, v in source.state_dict().items() if _to_hf(k)}
    bad = {**hf, "model.layers.0.linear.weight": torch.ones(8, 8, dtype=torch.int32)}
    save_hf_checkpoint(tmp_path / "int", bad)
    with torch.device("meta"):
        target = _Native()
    with pytest.raises(StateDictMismatchError) as err:
        load_hf_checkpoint(target, tmp_path / "int", key_map=_from_hf)
    assert (
        "model.safetensors: 'model.layers.0.linear.weight' has int32, model expects a floating "
        "dtype (float32) (model 'layers.0.proj.weight')"
    ) in str(err.value)
    assert target.layers["0"]["proj"].weight.is_meta  # nothing was read

    save_hf_checkpoint(tmp_path / "bool", {**hf, "model.layers.0.linear.bias": torch.ones(8) > 0})
    with pytest.raises(StateDictMismatchError, match=r"linear\.bias' has bool"):
        load_hf_checkpoint(_Native(), tmp_path / "bool", key_map=_from_hf)

    # The other way round: a float tensor for an integer buffer would be truncated by a cast.
    class _WithSteps(_Native):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("steps", torch.zeros(3, dtype=torch.int64))

    with_steps = {**hf, "steps": torch.tensor([0.5, 1.5, 2.5])}
    save_hf_checkpoint(tmp_path / "float_buffer", with_steps)
    with pytest.raises(StateDictMismatchError) as err:
        load_hf_checkpoint(_WithSteps(), tmp_path / "float_buffer", key_map=_from_hf)
    assert (
        "'steps' has float32, model expects an integer or bool dtype (int64): a cast would "
        "truncate the values"
    ) in str(err.value)
    int_steps = {**hf, "steps": torch.tensor([1, 2, 3], dtype=torch.int32)}  # int -> int is fine
    save_hf_checkpoint(tmp_path / "int_buffer", int_steps)
    target = _WithSteps()
    load_hf_checkpoint(target, tmp_path / "int_buffer", key_map=_from_hf)
    assert target.steps.dtype == torch.int64
    assert target.steps.tolist() == [1, 2, 3]

    # Floating -> floating casts stay allowed: a bf16 file loads into a float32 model.
    save_hf_checkpoint(tmp_path / "bf16", hf, dtype=torch.bfloat16)
    target = _Native()
    load_hf_checkpoint(target, tmp_path / "bf16", key_map=_from_hf)
    weight = target.layers["0"]["proj"].weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, source.layers["0"]["proj"].weight.bfloat16().float())
