"""Every bundled quantize and eval config validates (paths missing here are warnings only), and
the scheme check of a quantize config tells a machine without CUDA from an impossible request."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tune.recipes
from tune.config import ConfigValidationError, ValidationContext, validate_config
from tune.recipes.config import load_config
from tune.recipes.eval.config import EvalConfig
from tune.recipes.quantize.config import QuantizeConfig

CONFIGS = Path(tune.recipes.__file__).parent / "configs"
BUNDLED = [("eval", EvalConfig, p) for p in sorted((CONFIGS / "eval").glob("*.yaml"))] + [
    ("quantize", QuantizeConfig, p) for p in sorted((CONFIGS / "quantize").glob("*.yaml"))
]


@pytest.mark.parametrize(
    ("recipe", "schema", "path"), BUNDLED, ids=lambda v: getattr(v, "stem", "")
)
def test_every_bundled_config_validates(recipe: str, schema: type, path: Path) -> None:
    cfg = load_config(path, schema, recipe=recipe, validate=False)
    issues = validate_config(cfg, ValidationContext(1, missing_paths="warn"))
    assert all(i.severity == "warning" for i in issues), issues
    allowed = {"model.checkpoint_dir", "model.adapter_dir", "perplexity.source", "device"}
    allowed.add("lm_eval.tasks")  # a machine without lm_eval (tune-recipes[eval])
    assert {i.key for i in issues} <= allowed, issues
    if any(i.key == "device" for i in issues):  # only a CUDA config on a machine without CUDA
        assert cfg.device == "cuda"
        assert not torch.cuda.is_available()


def test_bundled_sets_cover_schemes_and_formats() -> None:
    quantize = [load_config(p, QuantizeConfig, recipe="quantize", validate=False)
                for _, s, p in BUNDLED if s is QuantizeConfig]  # fmt: skip
    assert {c.device for c in quantize} >= {"cpu", "cuda"}
    assert len({c.quantization.scheme for c in quantize}) >= 2
    evals = [load_config(p, EvalConfig, recipe="eval", validate=False)
             for _, s, p in BUNDLED if s is EvalConfig]  # fmt: skip
    assert {c.perplexity.format for c in evals} >= {"instruction", "chat", "text"}
    assert any(c.lm_eval.tasks for c in evals)


def test_impossible_scheme_is_an_error_even_as_a_template() -> None:
    path = CONFIGS / "quantize" / "qwen2_5_0_5b_int4_cuda.yaml"
    cfg = load_config(path, QuantizeConfig, ["model.dtype=float32"], recipe="quantize",
                      validate=False)  # fmt: skip
    with pytest.raises(ConfigValidationError, match=r"quantization\.scheme.*bfloat16"):
        validate_config(cfg, ValidationContext(1, missing_paths="warn"))
