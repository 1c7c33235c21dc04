"""save_quantized_dir -> load_quantized_dir: bit-exact outputs, one manifest, refusals that name
the file and key before any weight is read."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from torchao.quantization import MappingType

from tune.quant import (
    QUANTIZATION_MANIFEST,
    SCHEMES,
    QuantizedDirError,
    UnsupportedSchemeError,
    convert_qat,
    is_quantized_dir,
    is_quantized_weight,
    load_quantized_dir,
    prepare_qat,
    quantize_model,
    read_hf_quantization_config,
    read_quantization_manifest,
    save_quantized_dir,
)

CPU = torch.device("cpu")


def to_hf(key: str) -> str:
    """Native -> HF-like names: ``output`` -> ``lm_head``, everything else under ``model.``."""
    return "lm_head" + key.removeprefix("output") if key.startswith("output") else f"model.{key}"


def to_native(key: str) -> str:
    if key.startswith("lm_head"):
        return "output" + key.removeprefix("lm_head")
    if not key.startswith("model."):
        raise KeyError(f"no rule for {key!r}")
    return key.removeprefix("model.")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """An HF-like source directory: config, tokenizer, weights, an adapter config."""
    src = tmp_path / "source"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "tiny", "dtype": "bfloat16"}))
    (src / "tokenizer.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"float weights")
    (src / "model.safetensors.index.json").write_text("{}")
    (src / "adapter_config.json").write_text("{}")
    return src


def _skeleton(make_lm):
    with torch.device("meta"):
        return make_lm()


def _saved(make_lm, scheme: str, out: Path, source: Path | None = None, **kwargs):
    model = make_lm()
    quantize_model(model, scheme, exclude=["output"])
    manifest = save_quantized_dir(
        out, model, scheme=scheme, dtype=torch.float32, key_map=to_hf, source_dir=source, **kwargs
    )
    return model, manifest


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_round_trip_is_bit_exact_and_the_directory_is_complete(
    scheme, make_lm, tokens, source, tmp_path
) -> None:
    out = tmp_path / "q"
    model, manifest = _saved(make_lm, scheme, out, source)
    skeleton = _skeleton(make_lm)
    loaded = load_quantized_dir(out, skeleton, device=CPU, dtype=torch.float32, key_map=to_native)
    with torch.no_grad():
        assert torch.equal(skeleton(tokens), model(tokens))
    assert not skeleton.training
    assert not any(p.requires_grad for p in skeleton.parameters())
    assert is_quantized_weight(skeleton.layers["0"].attn.q_proj.weight)
    assert loaded == manifest == read_quantization_manifest(out)
    assert manifest.quantized_modules == [f"layers.{i}.{m}" for i in "01" for m in (
        "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]  # fmt: skip
    assert (manifest.scheme, manifest.device_type, manifest.dtype) == (scheme, "cpu", "float32")
    assert manifest.source == str(source.resolve())
    # auto: safetensors unless torchao cannot flatten a tensor, which the scheme table records.
    writable = SCHEMES[scheme].devices["cpu"].safetensors
    assert manifest.weights_file == ("model.safetensors" if writable else "model.pt")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "tokenizer.json", QUANTIZATION_MANIFEST, manifest.weights_file]
    )
    config = json.loads((out / "config.json").read_text())
    assert (config["dtype"], config["model_type"]) == ("float32", "tiny")
    assert manifest.hf_loadable == ("quantization_config" in config) == writable
    if writable:
        assert config["quantization_config"]["modules_to_not_convert"] == ["lm_head"]
        assert type(read_hf_quantization_config(out)) is type(
            SCHEMES[scheme].devices["cpu"].ptq_config()
        )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".q.")]  # no scratch left


def test_qat_output_records_the_qat_convert_config(make_lm, tokens, tmp_path) -> None:
    model = make_lm()
    prepare_qat(model, "int8_dynamic_int8_weight", exclude=["output"])
    with torch.no_grad():
        fake_quantized = model(tokens)
    convert_qat(model, scheme="int8_dynamic_int8_weight")
    manifest = save_quantized_dir(
        tmp_path / "q", model, scheme="int8_dynamic_int8_weight", dtype=torch.float32,
        config={"model_type": "tiny"}, qat=True,
    )  # fmt: skip
    assert manifest.hf_loadable
    assert len(manifest.quantized_modules) == 14
    # QAT fake-quantizes activations asymmetrically; PTQ's config would be symmetric.
    recorded = read_hf_quantization_config(tmp_path / "q")
    assert recorded.act_mapping_type == MappingType.ASYMMETRIC
    skeleton = _skeleton(make_lm)
    load_quantized_dir(tmp_path / "q", skeleton)
    with torch.no_grad():
        torch.testing.assert_close(skeleton(tokens), fake_quantized, atol=1e-5, rtol=1e-5)


def test_float_tensors_are_cast_to_dtype_and_no_config_without_one(make_lm, tmp_path) -> None:
    model = make_lm()
    quantize_model(model, "int8_weight_only", exclude=["output"])
    model.norm.weight.data = model.norm.weight.data.double()
    save_quantized_dir(tmp_path / "q", model, scheme="int8_weight_only", dtype=torch.float32)
    assert not (tmp_path / "q" / "config.json").exists()
    assert not read_quantization_manifest(tmp_path / "q").hf_loadable
    skeleton = _skeleton(make_lm)
    load_quantized_dir(tmp_path / "q", skeleton)
    assert skeleton.norm.weight.dtype == torch.float32


def test_save_refusals_leave_nothing_behind(make_lm, tmp_path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    model = make_lm()
    with pytest.raises(QuantizedDirError, match=r"no nn.Linear of TinyLM holds a quantized"):
        save_quantized_dir(tmp_path / "new", model, scheme="int8_weight_only", dtype=torch.float32)
    quantize_model(model, "int4_weight_only", exclude=["output"])
    with pytest.raises(FileExistsError, match=r"full exists and is not empty"):
        save_quantized_dir(full, model, scheme="int4_weight_only", dtype=torch.float32,
                           overwrite=True)  # fmt: skip
    with pytest.raises(ValueError, match=r"'layers.0.attn.q_proj.weight' is a Int4OpaqueTensor"):
        save_quantized_dir(tmp_path / "new", model, scheme="int4_weight_only",
                           dtype=torch.float32, weights_format="safetensors")  # fmt: skip
    with pytest.raises(QuantizedDirError, match=r"two state-dict keys to 'same'"):
        save_quantized_dir(tmp_path / "new", model, scheme="int4_weight_only",
                           dtype=torch.float32, key_map=lambda _k: "same")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    assert [p.name for p in full.iterdir()] == ["keep.txt"]


def test_overwrite_replaces_a_quantized_directory_only_when_asked(make_lm, tmp_path) -> None:
    out = tmp_path / "q"
    _saved(make_lm, "int8_weight_only", out)
    with pytest.raises(FileExistsError, match="not empty"):
        _saved(make_lm, "int8_dynamic_int4_weight", out)
    _saved(make_lm, "int8_dynamic_int4_weight", out, overwrite=True)
    assert read_quantization_manifest(out).scheme == "int8_dynamic_int4_weight"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


@pytest.fixture
def saved_dir(make_lm, tmp_path) -> Path:
    _saved(make_lm, "int8_weight_only", tmp_path / "q")
    return tmp_path / "q"


def _edit_manifest(directory: Path, **changes: object) -> Path:
    path = directory / QUANTIZATION_MANIFEST
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return path


def _load(directory: Path, make_lm, **kwargs):
    return load_quantized_dir(directory, _skeleton(make_lm), key_map=to_native, **kwargs)


def test_another_dtype_device_or_version_is_refused_before_reading(saved_dir, make_lm) -> None:
    (saved_dir / "model.safetensors").write_bytes(b"unreadable")  # never read below
    with pytest.raises(QuantizedDirError, match=r"quantized from float32, asked for bfloat16"):
        _load(saved_dir, make_lm, dtype=torch.bfloat16)
    _edit_manifest(saved_dir, device_type="cuda")
    with pytest.raises(QuantizedDirError, match=r"for device 'cuda'.*asked for 'cpu'"):
        _load(saved_dir, make_lm)
    _edit_manifest(saved_dir, device_type="cpu", version=2)
    with pytest.raises(QuantizedDirError, match=rf"{QUANTIZATION_MANIFEST}: version 2 is newer"):
        _load(saved_dir, make_lm)
    _edit_manifest(saved_dir, version=1, scheme="int3")
    with pytest.raises(UnsupportedSchemeError, match="unknown quantization scheme 'int3'"):
        _load(saved_dir, make_lm)
    _edit_manifest(saved_dir, scheme="int8_weight_only", extra=1)
    with pytest.raises(QuantizedDirError, match=r"not a valid quantization manifest.*'extra'"):
        _load(saved_dir, make_lm)
    (saved_dir / QUANTIZATION_MANIFEST).unlink()
    assert not is_quantized_dir(saved_dir)
    with pytest.raises(QuantizedDirError, match=rf"has no {QUANTIZATION_MANIFEST}"):
        _load(saved_dir, make_lm)


@pytest.mark.parametrize("weights_file", ["../outside.safetensors", "ABSOLUTE", "symlink", 123, ""])
def test_a_weights_file_outside_the_directory_is_refused(
    weights_file, saved_dir, make_lm, tmp_path
) -> None:
    outside = tmp_path / "outside.safetensors"
    shutil.copy(saved_dir / "model.safetensors", outside)
    if weights_file == "ABSOLUTE":
        weights_file = str(outside)
    elif weights_file == "symlink":
        os.symlink(outside, saved_dir / "link.safetensors")
        weights_file = "link.safetensors"
    manifest = _edit_manifest(saved_dir, weights_file=weights_file)
    with pytest.raises(QuantizedDirError, match="weights_file") as info:
        _load(saved_dir, make_lm)
    assert str(manifest) in str(info.value)


def test_weights_that_do_not_fit_name_the_file_and_keys(saved_dir, make_lm) -> None:
    _edit_manifest(saved_dir, weights_file="gone.safetensors")
    with pytest.raises(QuantizedDirError, match=r"weights_file 'gone.safetensors' is missing"):
        _load(saved_dir, make_lm)
    _edit_manifest(saved_dir, weights_file="model.safetensors")
    weights = saved_dir / "model.safetensors"
    with pytest.raises(
        QuantizedDirError, match=r"safetensors: tensor 'model.tok_embeddings.weight' has no"
    ):
        load_quantized_dir(saved_dir, _skeleton(make_lm), key_map=lambda k: to_native("x" + k))
    expected = r": its tensors do not fit the TinyLM given: missing \['layers.0.attn.k_proj.weight'"
    with pytest.raises(QuantizedDirError, match=re.escape(str(weights)) + expected) as info:
        load_quantized_dir(saved_dir, _skeleton(make_lm))  # stored (HF) names, no key map
    assert "unexpected ['lm_head.weight'" in str(info.value)
