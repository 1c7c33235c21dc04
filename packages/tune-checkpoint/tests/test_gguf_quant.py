"""GGUF export types: F16/BF16 are exact casts, Q8_0 respects its error bound, every type the gguf
package quantizes lands on the right tensors, and rows that do not fit a block fall back to F16."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from tune.checkpoint.gguf import (  # noqa: E402
    export_gguf,
    gguf_to_hf,
    read_gguf,
    supported_file_types,
)

TOKENS = torch.tensor([[1, 17, 42, 99, 250, 7, 300, 5, 64, 2]])


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


def test_supported_file_types_are_what_gguf_quantizes():
    types = supported_file_types()
    assert types[:3] == ["f32", "f16", "bf16"]
    # gguf 0.19 quantizes these in numpy; K-quants and IQ types it can only dequantize
    assert {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0"} <= set(types)
    assert not {"q4_k", "q6_k", "iq4_nl"} & set(types)
    with pytest.raises(ValueError, match=r"'q4_k_m' is not supported; supported"):
        export_gguf("unused", "unused.gguf", file_type="q4_k_m")


@pytest.mark.parametrize(("file_type", "dtype"), [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_types_equal_the_casts(file_type, dtype, gguf_tiny_model, gguf_model_dir, tmp_path):
    model = gguf_tiny_model("llama")
    out = export_gguf(gguf_model_dir(model), tmp_path / "m.gguf", file_type=file_type)
    contents = read_gguf(out, names=[])
    assert contents.metadata["general.file_type"] == int(
        gguf.LlamaFileType.MOSTLY_F16 if file_type == "f16" else gguf.LlamaFileType.MOSTLY_BF16
    )
    _, state, _ = gguf_to_hf(out)
    for name, want in model.state_dict().items():
        cast = want if want.dim() == 1 else want.to(dtype).to(torch.float32)
        assert torch.equal(state[name], cast), name


def _q8_0_bound(weight: torch.Tensor) -> torch.Tensor:
    """Per-weight bound of |x - dequant(quant(x))| for Q8_0, from the original row-major weights.

    A block of 32 has scale d = max|x| / 127 and codes q = round(x / d), |q| <= 127, so
    |x - q d| <= d / 2; d is stored as fp16 d16, adding |q| |d - d16| <= 127 |d - d16|. A little
    float32 slack covers the rounding of x / d.
    """
    blocks = weight.reshape(-1, 32).to(torch.float64)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    d16 = d.to(torch.float16).to(torch.float64)
    bound = d / 2 + 127 * (d - d16).abs() + 1e-5 * d
    return bound.expand_as(blocks).reshape(weight.shape)


def test_q8_0_respects_its_error_bound(gguf_tiny_model, gguf_model_dir, tmp_path, caplog):
    model = gguf_tiny_model("qwen2", tie_word_embeddings=False)
    out = export_gguf(gguf_model_dir(model), tmp_path / "q8.gguf", file_type="q8_0")
    contents = read_gguf(out)
    assert contents.metadata["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    two_d = {n for n, t in contents.tensors.items() if t.dim() == 2}
    assert {contents.tensor_types[n] for n in two_d} == {"Q8_0"}
    assert {contents.tensor_types[n] for n in set(contents.tensors) - two_d} == {"F32"}

    _, state, _ = gguf_to_hf(out)
    worst = 0.0
    for name, want in model.state_dict().items():
        if want.dim() == 1:
            assert torch.equal(state[name], want), name
            continue
        error = (state[name].to(torch.float64) - want.to(torch.float64)).abs()
        bound = _q8_0_bound(want)
        assert (error <= bound).all(), name
        worst = max(worst, float((error / bound).max()))
    assert 0.3 < worst <= 1.0  # the bound is nearly reached somewhere: it is not loose

    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=out.name, dtype=torch.float32
    ).eval()
    reference = _logits(model)
    diff = (_logits(loaded) - reference).abs().max().item()
    scale = reference.abs().max().item()
    logging.getLogger(__name__).info("Q8_0: max |logit diff| %.3g, max |logit| %.3g", diff, scale)
    # measured: 0.071 on logits up to 3.1 (every weight, norm and bias random, 2 layers)
    assert 1e-6 < diff < 0.05 * scale
    theirs = loaded.state_dict()
    for name, ours in state.items():
        assert torch.equal(ours, theirs[name]), name


def test_every_type_quantizes_the_llama_cpp_layout(gguf_tiny_model, gguf_model_dir, tmp_path):
    """Each 2-D tensor of a `t` file equals gguf's own quantize -> dequantize of the F32 file's."""
    source = gguf_model_dir(gguf_tiny_model("llama"))
    reference = read_gguf(export_gguf(source, tmp_path / "f32.gguf", file_type="f32")).tensors
    for file_type in supported_file_types()[3:]:
        out = export_gguf(source, tmp_path / f"{file_type}.gguf", file_type=file_type)
        contents = read_gguf(out)
        qtype = gguf.GGMLQuantizationType[file_type.upper()]
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        for name, tensor in contents.tensors.items():
            want = reference[name]
            if want.dim() == 1:
                assert contents.tensor_types[name] == "F32", (file_type, name)
                assert torch.equal(tensor, want), (file_type, name)
            elif want.shape[-1] % block:
                assert contents.tensor_types[name] == "F16", (file_type, name)
                assert torch.equal(tensor, want.half().float())
            else:
                assert contents.tensor_types[name] == qtype.name, (file_type, name)
                expected = gguf.quants.dequantize(gguf.quants.quantize(want.numpy(), qtype), qtype)
                assert np.array_equal(tensor.numpy(), expected), (file_type, name)


def test_rows_that_do_not_fit_a_block_fall_back_to_f16(
    gguf_tiny_model, gguf_model_dir, tmp_path, caplog
):
    model = gguf_tiny_model("llama", intermediate_size=80)  # down_proj rows of 80: not 32 x k
    with caplog.at_level(logging.WARNING, logger="tune.checkpoint.gguf"):
        out = export_gguf(gguf_model_dir(model), tmp_path / "m.gguf", file_type="q8_0")
    assert "blk.0.ffn_down.weight: row length 80 is not a multiple of the Q8_0 block size 32" in (
        caplog.text
    )
    contents = read_gguf(out, names=["blk.0.ffn_down.weight", "blk.0.ffn_up.weight"])
    assert contents.tensor_types == {"blk.0.ffn_down.weight": "F16", "blk.0.ffn_up.weight": "Q8_0"}
    _, state, _ = gguf_to_hf(out)
    down = model.model.layers[0].mlp.down_proj.weight
    assert torch.equal(state["model.layers.0.mlp.down_proj.weight"], down.half().float())
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=out.name, dtype=torch.float32
    ).eval()
    reference = _logits(model)
    assert (_logits(loaded) - reference).abs().max() < 0.05 * reference.abs().max()
