"""Scheme registry, early support checks and module selection."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tune.quant import (
    SCHEMES,
    UnsupportedSchemeError,
    check_scheme_supported,
    prepare_qat,
    quantize_model,
    select_linear_modules,
    validate_modules_for_scheme,
)


def test_registry_names_match_the_issue() -> None:
    assert set(SCHEMES) == {
        "int8_weight_only",
        "int8_dynamic_int8_weight",
        "int4_weight_only",
        "int8_dynamic_int4_weight",
    }


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_scheme_runs_on_cpu_in_float_dtypes(scheme: str, dtype: torch.dtype) -> None:
    support = check_scheme_supported(scheme, "cpu", dtype)
    lin = nn.Sequential(nn.Linear(64, 32)).to(dtype)
    quantize_model(lin, scheme)
    out = lin(torch.randn(3, 64, dtype=dtype))
    assert out.dtype == dtype
    assert out.shape == (3, 32)
    assert support.ptq_config() is not None


def test_unknown_scheme_names_the_choices() -> None:
    with pytest.raises(
        UnsupportedSchemeError, match=r"unknown quantization scheme 'int3'.*int4_weight_only"
    ):
        check_scheme_supported("int3", "cpu")


def test_unsupported_device_type() -> None:
    with pytest.raises(
        UnsupportedSchemeError,
        match=r"'int8_weight_only' cannot run on device 'mps'.*\['cpu', 'cuda'\]",
    ):
        check_scheme_supported("int8_weight_only", "mps")


def test_unsupported_dtype_names_dtype_and_choices() -> None:
    with pytest.raises(
        UnsupportedSchemeError,
        match=r"'int4_weight_only' on cpu needs weights in one of .*got torch.float64",
    ):
        check_scheme_supported("int4_weight_only", "cpu", torch.float64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is absent")
def test_cuda_scheme_without_cuda_fails_before_loading() -> None:
    with pytest.raises(UnsupportedSchemeError, match="CUDA is not available"):
        check_scheme_supported("int4_weight_only", "cuda:0", torch.bfloat16)


def test_cuda_int4_needs_bfloat16_even_without_a_gpu() -> None:
    # The dtype rule is checked before the device's presence.
    with pytest.raises(
        UnsupportedSchemeError,
        match=r"needs weights in one of \['torch.bfloat16'\], got torch.float32",
    ):
        check_scheme_supported("int4_weight_only", "cuda", torch.float32)


@pytest.mark.parametrize("scheme", ["int4_weight_only", "int8_dynamic_int4_weight"])
@pytest.mark.parametrize("apply", [quantize_model, prepare_qat])
def test_int4_rejects_in_features_not_multiple_of_group_and_changes_nothing(scheme, apply) -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 48), nn.Linear(48, 64))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(
        UnsupportedSchemeError, match=r"module '2' has weight of shape \(64, 48\).*multiple of 32"
    ):
        apply(model, scheme)
    # Validation runs before any module is touched.
    assert all(type(m) is nn.Linear for m in model)
    for key, value in model.state_dict().items():
        assert type(value) is torch.Tensor, key
        assert torch.equal(value, before[key]), key
    # Excluding the offending module makes it work.
    assert apply(model, scheme, exclude=["2"]) == ["0", "1"]


def test_meta_skeleton_is_checked_as_if_on_the_target_device() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(64, 64), nn.Linear(48, 64))
    with pytest.raises(
        UnsupportedSchemeError, match=r"module '1' .*in_features=48.*multiple of 32"
    ):
        validate_modules_for_scheme(
            model, ["0", "1"], "int8_dynamic_int4_weight", device="cpu", dtype=torch.float32
        )
    validate_modules_for_scheme(model, ["0"], "int8_dynamic_int4_weight", device="cpu")
    with pytest.raises(UnsupportedSchemeError, match="cannot run on device 'meta'"):
        validate_modules_for_scheme(model, ["0"], "int8_dynamic_int4_weight")


def test_float64_model_rejected_naming_the_module() -> None:
    model = nn.Sequential(nn.Linear(32, 32)).double()
    with pytest.raises(UnsupportedSchemeError, match=r"got torch\.float64"):
        quantize_model(model, "int8_weight_only")


def test_quantizing_twice_is_an_error() -> None:
    model = nn.Sequential(nn.Linear(32, 32))
    quantize_model(model, "int8_weight_only")
    with pytest.raises(
        UnsupportedSchemeError, match=r"module '0' already holds a quantized weight \(Int8Tensor\)"
    ):
        quantize_model(model, "int8_weight_only")


class _LoRALinear(nn.Linear):
    def __init__(self) -> None:
        super().__init__(32, 32)
        self.lora_A = nn.Linear(32, 4, bias=False)
        self.lora_B = nn.Linear(4, 32, bias=False)


def test_selection_patterns_callable_and_adapters_excluded(make_lm) -> None:
    model = make_lm()
    model.layers["0"].attn.q_proj = _LoRALinear()
    every = select_linear_modules(model)
    assert "layers.0.attn.q_proj" in every
    assert not any("lora_" in f for f in every)
    assert len(every) == 15
    assert select_linear_modules(model, ["*.k_proj", "output"]) == [
        "layers.0.attn.k_proj",
        "layers.1.attn.k_proj",
        "output",
    ]
    assert select_linear_modules(model, lambda m, fqn: m.out_features == 128) == [
        "layers.0.mlp.gate_proj",
        "layers.0.mlp.up_proj",
        "layers.1.mlp.gate_proj",
        "layers.1.mlp.up_proj",
    ]
    assert "output" not in select_linear_modules(model, exclude=["output"])


def test_include_pattern_matching_nothing_is_an_error(make_lm) -> None:
    with pytest.raises(
        ValueError, match=r"include patterns \['layers.\*.attention.wq'\] match no nn.Linear"
    ):
        select_linear_modules(make_lm(), ["layers.*.attention.wq"])
    with pytest.raises(TypeError, match="sequence of patterns"):
        select_linear_modules(make_lm(), "output")  # type: ignore[arg-type]
