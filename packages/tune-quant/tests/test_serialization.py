"""Quantized save -> load gives the same outputs bit for bit, without unpickling arbitrary objects."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tune.quant import (
    SCHEMES,
    is_quantized_weight,
    load_quantized,
    load_quantized_state_dict,
    quantize_model,
    save_quantized,
)

# Int4OpaqueTensor (CPU int4 packing) has no safetensors form in torchao 0.18.
SAFETENSORS_SCHEMES = ["int8_weight_only", "int8_dynamic_int8_weight", "int8_dynamic_int4_weight"]


def _check_round_trip(make_lm, tokens, scheme: str, path) -> None:
    model = make_lm()
    quantize_model(model, scheme, exclude=["output"])
    with torch.no_grad():
        expected = model(tokens)
    save_quantized(model, path)
    skeleton = _meta_skeleton(make_lm)
    load_quantized(skeleton, path)
    with torch.no_grad():
        got = skeleton(tokens)
    assert torch.equal(got, expected), f"{scheme}: outputs differ after load"
    for (name, a), (_, b) in zip(
        model.state_dict().items(), skeleton.state_dict().items(), strict=True
    ):
        assert type(a) is type(b), name
    assert not any(p.requires_grad for p in skeleton.parameters() if is_quantized_weight(p))


def _meta_skeleton(make_lm):
    with torch.device("meta"):
        return make_lm()


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_torch_save_round_trip_is_bit_exact(scheme, make_lm, tokens, tmp_path) -> None:
    _check_round_trip(make_lm, tokens, scheme, tmp_path / "model.pt")


@pytest.mark.parametrize("scheme", SAFETENSORS_SCHEMES)
def test_safetensors_round_trip_is_bit_exact(scheme, make_lm, tokens, tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    _check_round_trip(make_lm, tokens, scheme, path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    names = json.loads(metadata["tensor_names"])
    assert "layers.0.attn.q_proj.weight" in names
    assert json.loads(metadata["output.weight"])["_type"] == "Tensor"
    assert json.loads(metadata["layers.0.attn.q_proj.weight"])["_type"] in {
        "Int8Tensor",
        "IntxUnpackedToInt8Tensor",
    }


def test_torch_save_file_loads_with_weights_only(make_lm, tmp_path) -> None:
    model = make_lm()
    quantize_model(model, "int4_weight_only")
    path = save_quantized(model, tmp_path / "q.pt")
    # The plain torch.load a user would write, with the safe unpickler.
    state = torch.load(path, weights_only=True)
    assert type(state["layers.0.mlp.up_proj.weight"]).__name__ == "Int4OpaqueTensor"


def test_tied_weights_save_to_safetensors(make_lm, tokens, tmp_path) -> None:
    model = make_lm()
    model.output.weight = model.tok_embeddings.weight
    quantize_model(model, "int8_weight_only", exclude=["output"])
    with torch.no_grad():
        expected = model(tokens)
    save_quantized(model, tmp_path / "tied.safetensors")
    skeleton = _meta_skeleton(make_lm)
    load_quantized(skeleton, tmp_path / "tied.safetensors")
    assert torch.equal(skeleton(tokens), expected)


def test_int4_cpu_layout_to_safetensors_is_a_clear_error(make_lm, tmp_path) -> None:
    model = make_lm()
    quantize_model(model, "int4_weight_only")
    with pytest.raises(
        ValueError, match=r"'layers.0.attn.q_proj.weight' is a Int4OpaqueTensor.*'.pt'"
    ):
        save_quantized(model, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_load_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_quantized_state_dict(tmp_path / "missing.pt")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match=r"plain.safetensors has no torchao metadata"):
        load_quantized_state_dict(plain)


def test_strict_load_reports_missing_keys(make_lm, tmp_path) -> None:
    model = make_lm()
    quantize_model(model, "int8_weight_only")
    state = model.state_dict()
    del state["output.weight"]
    save_quantized(state, tmp_path / "partial.pt")
    with pytest.raises(RuntimeError, match=r"output\.weight"):
        load_quantized(_meta_skeleton(make_lm), tmp_path / "partial.pt")
