"""What the sft recipe writes loads in `transformers` and `peft` with the tune model's logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tune.checkpoint import load_peft_adapter as read_peft_dir
from tune.peft import load_peft_adapter
from tune.recipes.common.model_loading import load_pretrained
from tune_testing import TinyAssets, run_in_process, tiny_overrides

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

CPU = torch.device("cpu")


def _batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (2, 12), generator=gen)
    mask = torch.ones_like(tokens)
    mask[1, :4] = 0  # left padding on the second row
    return tokens, mask


def _hf_logits(model: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens, attention_mask=mask).logits


def _tune_logits(model: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(tokens, positions=positions, attention_mask=mask)


@pytest.mark.parametrize("method", ["lora", "dora", "moe_lora"])
def test_adapter_and_merged_outputs_load_in_peft_and_transformers(
    method: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # moe_lora: a Qwen3-MoE with adapters on attention and on every expert (target_parameters)
    tiny_assets = request.getfixturevalue("moe_assets" if "moe" in method else "tiny_assets")
    out = tmp_path / method
    summary = run_in_process(
        "sft", f"sft/tiny_cpu_{method}",
        tiny_overrides(tiny_assets, out, "training.max_steps=4",
                       "training.lr_schedule.warmup_steps=1", "eval.every_n_steps=null",
                       "checkpointing.save_merged=true", "checkpointing.save_adapter=true"),
    )  # fmt: skip
    adapter_dir, model_dir = Path(summary["adapter_dir"]), Path(summary["model_dir"])

    # tune: the base plus the adapter read back from the PEFT directory
    ckpt = load_pretrained(tiny_assets.checkpoint_dir, dtype=torch.float32, device=CPU)
    tensors, adapter_config = read_peft_dir(adapter_dir, prefix="")
    load_peft_adapter(ckpt.model, tensors, adapter_config, key_map=ckpt.native_to_hf_key)
    tokens, mask = _batch(ckpt.config.vocab_size)
    ours = _tune_logits(ckpt.model.eval(), tokens, mask)
    base_only = _tune_logits(
        load_pretrained(tiny_assets.checkpoint_dir, dtype=torch.float32, device=CPU).model.eval(),
        tokens,
        mask,
    )
    assert (ours - base_only).abs().max() > 1e-4  # the adapter really changed the model

    hf_base = transformers.AutoModelForCausalLM.from_pretrained(tiny_assets.checkpoint_dir)
    with_adapter = peft.PeftModel.from_pretrained(hf_base, adapter_dir).eval()
    torch.testing.assert_close(_hf_logits(with_adapter, tokens, mask)[mask.bool()],
                               ours[mask.bool()], atol=1e-5, rtol=0)  # fmt: skip

    merged = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.testing.assert_close(_hf_logits(merged, tokens, mask)[mask.bool()],
                               ours[mask.bool()], atol=1e-5, rtol=0)  # fmt: skip


def test_full_finetune_directory_loads_in_transformers(
    tiny_assets: TinyAssets, tmp_path: Path
) -> None:
    out = tmp_path / "full"
    summary = run_in_process(
        "sft", "sft/tiny_cpu_full",
        tiny_overrides(tiny_assets, out, "training.max_steps=3",
                       "training.lr_schedule.warmup_steps=1", "eval.every_n_steps=null"),
    )  # fmt: skip
    model_dir = Path(summary["model_dir"])
    ours = load_pretrained(model_dir, dtype=torch.float32, device=CPU).model.eval()
    base = load_pretrained(tiny_assets.checkpoint_dir, dtype=torch.float32, device=CPU).model.eval()
    tokens, mask = _batch(ours.tok_embeddings.weight.shape[0])
    trained_logits = _tune_logits(ours, tokens, mask)
    assert (trained_logits - _tune_logits(base, tokens, mask)).abs().max() > 1e-4
    theirs = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.testing.assert_close(_hf_logits(theirs, tokens, mask)[mask.bool()],
                               trained_logits[mask.bool()], atol=1e-5, rtol=0)  # fmt: skip
