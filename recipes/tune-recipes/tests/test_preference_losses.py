"""Every preference loss through the recipe: the logged step-1 loss equals tune.train's formula
on the same pairs, with log-probs computed independently (transformers models, HF tokenization,
one unpadded sequence at a time)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

import tune.recipes.common.finetune_method as finetune_method
import tune.recipes.preference.setup as pref_setup
from tune.data.synthetic import write_preference_data
from tune.train import (
    dpo_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    reference_free_dpo_loss,
    simpo_loss,
)
from tune.train.loggers import read_jsonl_metrics
from tune_testing import (
    NF4_FRIENDLY_SIZES,
    TinyAssets,
    make_tiny_checkpoint,
    run_in_process,
    tiny_overrides,
)

PAIRS = 4  # one optimizer step: 2 micro-batches of 2 pairs


@pytest.fixture(scope="module")
def assets(tiny_assets: TinyAssets, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("preference_losses")
    # Another random model of the same shape: a reference different from the policy makes
    # every reference-based loss depend on both models at step 1.
    reference = make_tiny_checkpoint(root / "reference", seed=7, **NF4_FRIENDLY_SIZES)
    return {**write_preference_data(root), "reference": reference}


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _logp(model: Any, tokenizer: Any, prompt: str, answer: str, average: bool) -> float:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    enc = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = torch.tensor([enc["input_ids"]])
    trained = torch.tensor(enc["assistant_masks"][1:], dtype=torch.bool)
    with torch.no_grad():
        logp = F.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
    picked = logp.gather(-1, ids[0, 1:, None])[:, 0][trained]
    return float(picked.mean() if average else picked.sum())


def _expected_loss(name: str, assets: dict[str, Path], checkpoint_dir: Path) -> float:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    policy = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(assets["reference"], dtype=torch.float32)
    average = name in ("ipo", "simpo", "orpo")

    def logps(model: Any, pairs: list[tuple[str, str]]) -> torch.Tensor:
        return torch.tensor([_logp(model, tokenizer, p, a, average) for p, a in pairs])

    if name == "kto":
        rows = _rows(assets["unpaired"])
        examples = [(r["prompt"], r["completion"]) for r in rows[:PAIRS]]
        # KL pairs: prompt i with the completion of the next row of the dataset.
        mismatched = [(rows[i]["prompt"], rows[i + 1]["completion"]) for i in range(PAIRS)]
        desirable = torch.tensor([bool(r["label"]) for r in rows[:PAIRS]])
        z0 = (logps(policy, mismatched) - logps(reference, mismatched)).mean().clamp(min=0)
        result = kto_loss(
            logps(policy, examples), logps(reference, examples), desirable, z0, beta=0.1
        )
        return float(result.losses.mean())
    rows = _rows(assets["paired"])[:PAIRS]
    pc = logps(policy, [(r["prompt"], r["chosen"]) for r in rows])
    pr = logps(policy, [(r["prompt"], r["rejected"]) for r in rows])
    rc = logps(reference, [(r["prompt"], r["chosen"]) for r in rows])
    rr = logps(reference, [(r["prompt"], r["rejected"]) for r in rows])
    formulas = {
        "dpo": lambda: dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1),
        "ipo": lambda: ipo_loss(pc, pr, rc, rr, tau=0.1),
        "simpo": lambda: simpo_loss(pc, pr, beta=2.0, gamma=1.0),
        "orpo": lambda: orpo_loss(pc, pr, lambda_=0.1),
        "reference_free_dpo": lambda: reference_free_dpo_loss(pc, pr, beta=0.1),
    }
    return float(formulas[name]().losses.mean())


CASES = [
    ("dpo", True),
    ("dpo", False),
    ("ipo", True),
    ("simpo", True),
    ("orpo", False),
    ("kto", True),
    ("reference_free_dpo", True),
]


@pytest.mark.parametrize(("name", "fused"), CASES)
def test_step1_loss_equals_the_formula(
    name: str, fused: bool, tiny_assets: TinyAssets, assets: dict[str, Path], tmp_path: Path
) -> None:
    extra = [
        "training.method=full", f"training.loss.name={name}", "training.loss.label_smoothing=0.1",
        f"training.fused_logprobs={str(fused).lower()}", "training.max_steps=1",
        "training.lr_schedule.warmup_steps=0",
        f"training.global_batch_size={PAIRS}", "training.micro_batch_size=2",
        "data.shuffle=false", "data.validation_fraction=0", "eval.before_training=false",
        "eval.every_n_steps=null", "checkpointing.save_every_n_steps=null",
        f"data.format={'unpaired' if name == 'kto' else 'paired'}",
    ]  # fmt: skip
    if name in ("dpo", "ipo", "kto"):
        extra.append(f"model.reference_checkpoint_dir={assets['reference']}")
    data = assets["unpaired" if name == "kto" else "paired"]
    out = tmp_path / name
    run_in_process(
        "preference",
        "preference/tiny_cpu_dpo_lora",
        tiny_overrides(TinyAssets(tiny_assets.checkpoint_dir, data), out, *extra),
    )
    logged = read_jsonl_metrics(out / "metrics.jsonl")[1]
    expected = _expected_loss(name, assets, tiny_assets.checkpoint_dir)
    assert logged == pytest.approx(expected, rel=2e-6, abs=1e-7)
    if name in ("dpo", "ipo", "kto"):  # the reference is really the other model
        assert abs(logged - {"dpo": math.log(2), "ipo": 25.0, "kto": 0.5}[name]) > 1e-3


def test_full_dpo_reference_is_a_frozen_copy(
    tiny_assets: TinyAssets,
    assets: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Full tuning without reference_checkpoint_dir: the checkpoint is loaded a second time,
    # frozen; the policy moves away from it while it stays equal to the checkpoint.
    models: list[Any] = []
    real_load = pref_setup.load_pretrained

    def recording_load(*args: Any, **kwargs: Any) -> Any:
        ckpt = real_load(*args, **kwargs)
        models.append(ckpt.model)
        return ckpt

    monkeypatch.setattr(pref_setup, "load_pretrained", recording_load)
    monkeypatch.setattr(finetune_method, "load_pretrained", recording_load)  # the policy
    out = tmp_path / "full"
    run_in_process(
        "preference", "preference/tiny_cpu_dpo_lora",
        tiny_overrides(TinyAssets(tiny_assets.checkpoint_dir, assets["paired"]), out,
                       "training.method=full", "training.max_steps=3",
                       "training.optimizer.lr=1e-4", "eval.before_training=false",
                       "eval.every_n_steps=null", "checkpointing.save_every_n_steps=null"),
    )  # fmt: skip
    assert len(models) == 2
    policy, reference = models
    assert not any(p.requires_grad for p in reference.parameters())
    fresh = real_load(tiny_assets.checkpoint_dir, dtype=torch.float32, device=torch.device("cpu"))
    for (name, ref_p), fresh_p in zip(
        reference.named_parameters(), fresh.model.parameters(), strict=True
    ):
        assert torch.equal(ref_p, fresh_p), name
    moved = dict(policy.named_parameters())["layers.0.attn.q_proj.weight"]
    assert not torch.equal(
        moved, dict(fresh.model.named_parameters())["layers.0.attn.q_proj.weight"]
    )
    losses = read_jsonl_metrics(out / "metrics.jsonl")
    assert losses[1] == pytest.approx(math.log(2), abs=1e-6)
    # the trained policy is written as an HF directory that transformers loads
    written = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32)
    hf_q = written.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(hf_q, moved.detach())
