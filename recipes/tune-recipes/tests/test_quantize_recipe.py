"""`tune run quantize` writes a directory that generate/eval load to the same outputs as
quantize-on-load, bit for bit, with errors within tune-quant's bounds; bad requests fail first."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tune.config import ConfigValidationError
from tune.quant import QUANTIZATION_MANIFEST
from tune.recipes.common.generation_model import load_generation_model
from tune.recipes.config import load_config
from tune.recipes.discovery import find_config
from tune.recipes.generate.config import GenerateConfig
from tune.recipes.generate.loop import run as run_generate
from tune.recipes.quantize.config import QuantizeConfig
from tune.recipes.quantize.loop import run as run_quantize
from tune_testing import make_tiny_checkpoint

CPU = torch.device("cpu")
SCHEMES = ["int8_weight_only", "int8_dynamic_int8_weight", "int4_weight_only",
           "int8_dynamic_int4_weight"]  # fmt: skip
# tune-quant's stated bounds on one linear map's relative output error (its test_ptq.py and
# docs: ~2x the error expected from each format's step size).
LAYER_BOUNDS = {"int8_weight_only": 1e-2, "int8_dynamic_int8_weight": 2e-2,
                "int4_weight_only": 0.1, "int8_dynamic_int4_weight": 0.12}  # fmt: skip


def _quantize(checkpoint_dir: Path, out: Path, *overrides: str) -> dict[str, Any]:
    path, _ = find_config("quantize/tiny_cpu_int8", "quantize")
    cfg = load_config(path, QuantizeConfig, [f"model.checkpoint_dir={checkpoint_dir}",
                                             f"output_dir={out}", *overrides])  # fmt: skip
    return run_quantize(cfg)


@pytest.fixture(scope="module")
def quantized(tiny_assets: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every scheme's quantized directory of the tiny base (int8 through the real CLI)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("quantized")
    dirs = {}
    cli = [sys.executable, "-m", "tune.recipes", "run", "quantize", "--config",
           "quantize/tiny_cpu_int8", f"model.checkpoint_dir={tiny_assets.checkpoint_dir}",
           f"output_dir={root / 'int8_weight_only'}"]  # fmt: skip
    result = subprocess.run(cli, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "quantized 14 linear layers with int8_weight_only" in result.stdout
    dirs["int8_weight_only"] = root / "int8_weight_only"
    for scheme in SCHEMES[1:]:
        summary = _quantize(tiny_assets.checkpoint_dir, root / scheme,
                            f"quantization.scheme={scheme}")  # fmt: skip
        dirs[scheme] = summary["output_dir"]
    return dirs


def _tokens() -> torch.Tensor:
    return torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_directory_equals_quantize_on_load_bit_for_bit(
    scheme: str, quantized: dict[str, Path], tiny_assets: Any
) -> None:
    saved = load_generation_model(quantized[scheme], dtype=torch.float32, device=CPU)
    on_load = load_generation_model(
        tiny_assets.checkpoint_dir, dtype=torch.float32, device=CPU, quantize=scheme
    )
    assert saved.quantized_modules == on_load.quantized_modules
    assert len(saved.quantized_modules) == 14
    assert "output" not in saved.quantized_modules
    with torch.no_grad():
        assert torch.equal(saved.checkpoint.model(_tokens()), on_load.checkpoint.model(_tokens()))
    manifest = json.loads((quantized[scheme] / QUANTIZATION_MANIFEST).read_text())
    assert manifest["scheme"] == scheme
    assert manifest["device_type"] == "cpu"
    # torchao 0.18 cannot write the CPU int4 packing to safetensors: that one falls back to .pt.
    expected_file = "model.pt" if scheme == "int4_weight_only" else "model.safetensors"
    assert manifest["weights_file"] == expected_file
    assert (quantized[scheme] / "tokenizer.json").is_file()
    config = json.loads((quantized[scheme] / "config.json").read_text())
    assert ("quantization_config" in config) == (expected_file == "model.safetensors")


def _linear_inputs(model: nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(
            lambda _m, args, _out, name=name: captured.__setitem__(name, args[0].detach())
        )
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    ]
    with torch.no_grad():
        model(tokens)
    for hook in hooks:
        hook.remove()
    return captured


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_error_within_tune_quant_bounds(
    scheme: str, quantized: dict[str, Path], tiny_assets: Any
) -> None:
    float_model = load_generation_model(tiny_assets.checkpoint_dir, dtype=torch.float32,
                                        device=CPU).checkpoint.model  # fmt: skip
    saved = load_generation_model(quantized[scheme], dtype=torch.float32, device=CPU)
    q_modules = dict(saved.checkpoint.model.named_modules())
    f_modules = dict(float_model.named_modules())
    inputs = _linear_inputs(float_model, _tokens())
    worst = 0.0
    with torch.no_grad():
        for name in saved.quantized_modules:
            ref = f_modules[name](inputs[name])
            err = ((q_modules[name](inputs[name]) - ref).norm() / ref.norm()).item()
            worst = max(worst, err)
            assert err < LAYER_BOUNDS[scheme], f"{scheme} {name}: relative error {err:.4f}"
        ref = float_model(_tokens())
        logits_err = ((saved.checkpoint.model(_tokens()) - ref).norm() / ref.norm()).item()
    # Not a no-op: the worst layer shows at least a fifth of the bound's error.
    assert worst > LAYER_BOUNDS[scheme] / 5, f"{scheme}: suspiciously small error {worst:.2e}"
    # Through two blocks the layers' errors compound: at most twice one layer's bound.
    assert logits_err < 2 * LAYER_BOUNDS[scheme], f"{scheme}: logits error {logits_err:.4f}"


def test_generate_recipe_decodes_the_same_from_the_quantized_directory(
    quantized: dict[str, Path], tiny_assets: Any
) -> None:
    path, _ = find_config("generate/tiny_cpu", "generate")
    common = ["output.print=false", "sampling.max_new_tokens=12", "sampling.stop_at_eos=false"]
    from_dir = run_generate(load_config(path, GenerateConfig, [
        *common, f"model.checkpoint_dir={quantized['int8_dynamic_int8_weight']}"]))  # fmt: skip
    on_load = run_generate(load_config(path, GenerateConfig, [
        *common, f"model.checkpoint_dir={tiny_assets.checkpoint_dir}",
        "model.quantize=int8_dynamic_int8_weight"]))  # fmt: skip
    ids = [r.completion_ids for r in from_dir["records"]]
    assert ids == [r.completion_ids for r in on_load["records"]]
    assert all(len(row) == 12 for row in ids)
    assert len(from_dir["quantized_modules"]) == 14


def _broken_copy(source: Path, dest: Path) -> Path:
    """``source``'s config and tokenizer with unreadable weights: loading them would fail."""
    shutil.copytree(source, dest)
    (dest / "model.safetensors").write_bytes(b"not a safetensors file")
    return dest


def test_unsupported_scheme_or_device_fails_before_loading(
    tiny_assets: Any, tmp_path: Path
) -> None:
    broken = _broken_copy(tiny_assets.checkpoint_dir, tmp_path / "broken")
    # int4 on CUDA needs bfloat16 weights: a config error naming the scheme and the dtype.
    with pytest.raises(ConfigValidationError, match=r"int4_weight_only.*bfloat16"):
        _quantize(broken, tmp_path / "out", "quantization.scheme=int4_weight_only", "device=cuda")
    # A layer whose in_features is no multiple of the int4 group (48): named, before loading.
    odd = make_tiny_checkpoint(tmp_path / "odd", hidden_size=48, num_layers=1, num_heads=2,
                               num_kv_heads=2, intermediate_size=64)  # fmt: skip
    odd_broken = _broken_copy(odd, tmp_path / "odd_broken")
    from tune.quant import UnsupportedSchemeError

    with pytest.raises(UnsupportedSchemeError, match=r"layers\.0\.attn\.q_proj.*in_features=48"):
        _quantize(odd_broken, tmp_path / "out2", "quantization.scheme=int8_dynamic_int4_weight")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out2").exists()


def test_output_dir_must_be_new_and_safetensors_must_be_writable(
    tiny_assets: Any, tmp_path: Path
) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ConfigValidationError, match=r"output_dir.*not empty"):
        _quantize(tiny_assets.checkpoint_dir, tmp_path / "full")
    with pytest.raises(ConfigValidationError, match=r"weights_format.*safetensors"):
        _quantize(tiny_assets.checkpoint_dir, tmp_path / "new",
                  "quantization.scheme=int4_weight_only", "weights_format=safetensors")  # fmt: skip


def test_quantized_directory_refuses_another_dtype_an_adapter_or_quantize(
    quantized: dict[str, Path],
) -> None:
    # The manifest checks themselves are tune-quant's (tests/test_quantized_dir.py).
    with pytest.raises(ValueError, match=r"quantized from float32, asked for bfloat16"):
        load_generation_model(quantized["int8_weight_only"], dtype=torch.bfloat16, device=CPU)
    with pytest.raises(ValueError, match="already quantized"):
        load_generation_model(quantized["int8_weight_only"], dtype=torch.float32, device=CPU,
                              quantize="int8_weight_only")  # fmt: skip


@pytest.mark.parametrize("scheme", ["int8_weight_only", "int8_dynamic_int4_weight"])
def test_transformers_loads_the_quantized_directory_to_the_same_logits(
    scheme: str, quantized: dict[str, Path]
) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(quantized[scheme])
    assert type(hf.model.layers[0].self_attn.q_proj.weight).__name__ != "Parameter"
    assert type(hf.lm_head.weight) is nn.Parameter  # modules_to_not_convert kept it float
    ours = load_generation_model(quantized[scheme], dtype=torch.float32, device=CPU)
    with torch.no_grad():
        assert torch.equal(hf(_tokens()).logits, ours.checkpoint.model(_tokens()))


def test_eval_recipe_scores_the_quantized_directory_as_quantize_on_load(
    quantized: dict[str, Path], tiny_assets: Any
) -> None:
    from tune.recipes.eval.config import EvalConfig
    from tune.recipes.eval.loop import run as run_eval

    path, _ = find_config("eval/tiny_cpu_eval", "eval")
    common = ["output.print=false", f"perplexity.source={tiny_assets.data_file}",
              "perplexity.max_batches=2"]  # fmt: skip
    scheme = "int8_dynamic_int4_weight"

    def loss(*overrides: str) -> float:
        return run_eval(load_config(path, EvalConfig, [*common, *overrides]))["perplexity"]["loss"]

    from_dir = loss(f"model.checkpoint_dir={quantized[scheme]}")
    on_load = loss(f"model.checkpoint_dir={tiny_assets.checkpoint_dir}", f"model.quantize={scheme}")
    full = loss(f"model.checkpoint_dir={tiny_assets.checkpoint_dir}")
    assert from_dir == on_load
    # A random model's loss sits near ln(vocab) whatever its weights: int4 moves it, slightly.
    assert abs(from_dir - full) > 1e-5
