"""`tune run eval` perplexity equals a hand computation (plain torch over transformers/peft logits);
the scorers themselves are tested in tune-train (tests/test_evaluation.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tune.config import ConfigValidationError
from tune.data import InstructionBuilder, Tokenizer
from tune.data.synthetic import write_jsonl
from tune.recipes.config import load_config
from tune.recipes.discovery import find_config
from tune.recipes.eval.config import EvalConfig
from tune.recipes.eval.loop import run as run_eval

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
tokenizers = pytest.importorskip("tokenizers")

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is 33 + 65? The answer is 98.",
    "How many letters are in the word island? Six.",
    "Name a primary colour: red, blue or yellow.",
    "A short line.",
]


def _hf(checkpoint_dir: Path) -> Any:
    torch.set_num_threads(1)
    return transformers.AutoModelForCausalLM.from_pretrained(checkpoint_dir).eval()


def _token_logprobs(model: Any, ids: list[int]) -> torch.Tensor:
    """log p(ids[t+1] | ids[:t+1]) for every t, from the reference model's logits."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()  # [T, V]
    return F.log_softmax(logits[:-1], dim=-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def _eval(overrides: list[str]) -> dict[str, Any]:
    path, _ = find_config("eval/tiny_cpu_eval", "eval")
    return run_eval(load_config(path, EvalConfig, ["output.print=false", *overrides]))


@pytest.mark.parametrize("padding_free", ["true", "false"])
def test_tune_run_eval_text_perplexity_equals_hand_computation(
    padding_free: str, tiny_assets: Any, tmp_path: Path
) -> None:
    ckpt = tiny_assets.checkpoint_dir
    data = write_jsonl([{"text": t} for t in TEXTS], tmp_path / "text.jsonl")
    report_file = tmp_path / "report.json"
    cli = [sys.executable, "-m", "tune.recipes", "run", "eval", "--config", "eval/tiny_cpu_eval",
           f"model.checkpoint_dir={ckpt}", f"perplexity.source={data}", "perplexity.format=text",
           "perplexity.tokens=all", "perplexity.batch_size=2", f"output.file={report_file}",
           f"perplexity.padding_free={padding_free}"]  # fmt: skip
    result = subprocess.run(cli, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_file.read_text())["perplexity"]

    # By hand: the raw tokenizer's ids (+ EOS; this tokenizer has no BOS), transformers' logits,
    # log-softmax, the mean negative log-likelihood of every next token.
    raw = tokenizers.Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    eos = raw.token_to_id("<|im_end|>")
    model = _hf(ckpt)
    nll, count = 0.0, 0
    for text in TEXTS:
        ids = [*raw.encode(text, add_special_tokens=False).ids, eos]
        logprobs = _token_logprobs(model, ids)
        nll -= float(logprobs.sum())
        count += len(ids) - 1
    assert report["tokens"] == count
    assert report["sequences"] == len(TEXTS)
    assert report["batches"] == 3
    assert report["loss"] == pytest.approx(nll / count, rel=1e-5)
    assert report["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert f"perplexity {report['perplexity']:.4f}" in result.stdout


def test_assistant_only_perplexity_with_a_peft_adapter_equals_hand_computation(
    tiny_assets: Any, tmp_path: Path
) -> None:
    ckpt = tiny_assets.checkpoint_dir
    rows = [json.loads(line) for line in tiny_assets.data_file.read_text().splitlines()[:7]]
    data = write_jsonl(rows, tmp_path / "instructions.jsonl")
    # A PEFT adapter with non-zero B (so it changes the outputs), written by peft itself.
    torch.manual_seed(0)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                           init_lora_weights=False, task_type="CAUSAL_LM")  # fmt: skip
    reference = peft.get_peft_model(_hf(ckpt), lora).eval()
    reference.save_pretrained(tmp_path / "adapter")

    report = _eval([f"model.checkpoint_dir={ckpt}", f"model.adapter_dir={tmp_path / 'adapter'}",
                    f"perplexity.source={data}", "perplexity.format=instruction",
                    "perplexity.tokens=assistant", "perplexity.batch_size=3"])["perplexity"]  # fmt: skip

    # By hand over the same tokens: the chat-rendered example, scored where labels are kept.
    builder = InstructionBuilder(Tokenizer.from_dir(ckpt), None, train_on="assistant")
    nll, count, all_tokens = 0.0, 0, 0
    for i, row in enumerate(rows):
        sample = builder(row, i)
        tokens, labels = sample["tokens"], torch.tensor(sample["labels"])
        kept = labels[:-1] != -100  # labels[t] is the target at t, i.e. tokens[t + 1]
        assert torch.equal(labels[:-1][kept], torch.tensor(tokens[1:])[kept])
        nll -= float(_token_logprobs(reference, tokens)[kept].sum())
        count += int(kept.sum())
        all_tokens += len(tokens) - 1
    assert 0 < count < all_tokens / 2  # only the short answers (and their end token) count
    assert report["tokens"] == count
    assert report["loss"] == pytest.approx(nll / count, rel=1e-5)
    base = _eval([f"model.checkpoint_dir={ckpt}", f"perplexity.source={data}",
                  "perplexity.format=instruction"])["perplexity"]  # fmt: skip
    assert abs(base["loss"] - report["loss"]) > 1e-3  # the adapter was applied


def test_eval_config_errors_name_their_key(tiny_assets: Any, tmp_path: Path) -> None:
    ckpt = tiny_assets.checkpoint_dir
    with pytest.raises(ConfigValidationError, match="nothing to evaluate"):
        _eval([f"model.checkpoint_dir={ckpt}", "perplexity.source=null"])
    with pytest.raises(ConfigValidationError, match=r"output\.file: must end in \.json"):
        _eval([f"model.checkpoint_dir={ckpt}", f"perplexity.source={tiny_assets.data_file}",
               f"output.file={tmp_path / 'r.txt'}"])  # fmt: skip
    with pytest.raises(ConfigValidationError, match=r"perplexity\.batch_size"):
        _eval([f"model.checkpoint_dir={ckpt}", f"perplexity.source={tiny_assets.data_file}",
               "perplexity.batch_size=0"])  # fmt: skip
