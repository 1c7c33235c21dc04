"""lm-evaluation-harness on tune models: local tasks (YAML + jsonl in tmp_path, no hub) run end to
end through `tune run eval`, and every score equals a hand computation over transformers' logits."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

lm_eval = pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from lm_eval.api.instance import Instance  # noqa: E402

from tune.data.synthetic import write_jsonl  # noqa: E402
from tune.recipes.eval.lm_eval_adapter import TuneLM  # noqa: E402
from tune_testing import make_tiny_checkpoint  # noqa: E402

QUESTIONS = [
    {"question": "What is 2 + 3?", "choices": ["5", "6", "23"], "label": 0, "answer": "5"},
    {"question": "Name a colour of the sky.", "choices": ["green", "blue"], "label": 1, "answer": "blue"},
    {"question": "Reverse the word stop.", "choices": ["pots", "tops", "spot"], "label": 0, "answer": "pots"},
    {"question": "How many legs has a cat?", "choices": ["two", "four"], "label": 1, "answer": "four"},
]  # fmt: skip
TEXTS = [
    {"text": "The quick brown fox jumps over the lazy dog."},
    {"text": "Once upon a time, in a small village by the sea, lived a cat."},
]

TASKS = {
    "tune_tiny_mc": """task: tune_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {questions}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
metadata:
  version: 1.0
""",
    "tune_tiny_rolling": """task: tune_tiny_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {texts}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
metadata:
  version: 1.0
""",
    "tune_tiny_gen": """task: tune_tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {questions}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
metadata:
  version: 1.0
""",
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lm_eval")
    text = [q["question"] + " " + " ".join(q["choices"]) for q in QUESTIONS]
    ckpt = make_tiny_checkpoint(root / "ckpt", tokenizer_text=text * 4 + [t["text"] for t in TEXTS])
    questions = write_jsonl(QUESTIONS, root / "questions.jsonl")
    texts = write_jsonl(TEXTS, root / "texts.jsonl")
    tasks = root / "tasks"
    tasks.mkdir()
    for name, body in TASKS.items():
        (tasks / f"{name}.yaml").write_text(body.format(questions=questions, texts=texts))
    return {"ckpt": ckpt, "tasks": tasks, "root": root}


class Reference:
    """Hand computations: the raw tokenizer's ids and transformers' log-softmax."""

    def __init__(self, ckpt: Path) -> None:
        self.model = transformers.AutoModelForCausalLM.from_pretrained(ckpt).eval()
        self.tok = tokenizers.Tokenizer.from_file(str(ckpt / "tokenizer.json"))
        self.eos = self.tok.token_to_id("<|im_end|>")

    def ids(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def logprobs(self, ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(torch.tensor([ids])).logits[0].double()
        return F.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]

    def continuation(self, context: str, continuation: str) -> float:
        whole, context_ids = self.ids(context + continuation), self.ids(context)
        n = len(whole) - len(context_ids)
        return float(self.logprobs(whole)[-n:].sum())

    def rolling(self, text: str) -> float:  # no BOS in this tokenizer: EOS is the prefix
        return float(self.logprobs([self.eos, *self.ids(text)]).sum())

    def greedy(self, context: str, max_new: int) -> str:
        ids = torch.tensor([self.ids(context)])
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=max_new, eos_token_id=[self.eos],
                                      pad_token_id=0)  # fmt: skip
        return self.tok.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=False)


def test_adapter_loglikelihoods_equal_hand_computation(assets: dict[str, Path]) -> None:
    lm = TuneLM.create_from_arg_string(f"checkpoint_dir={assets['ckpt']},batch_size=3")
    ref = Reference(assets["ckpt"])
    pairs = [
        (f"Question: {q['question']}\nAnswer:", f" {c}") for q in QUESTIONS for c in q["choices"]
    ]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    got = lm.loglikelihood(requests)
    for (context, continuation), (logprob, _) in zip(pairs, got, strict=True):
        assert logprob == pytest.approx(ref.continuation(context, continuation), rel=1e-5)
    rolling = lm.loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, (t["text"],), i) for i, t in enumerate(TEXTS)]
    )
    for text, score in zip(TEXTS, rolling, strict=True):
        assert score == pytest.approx(ref.rolling(text["text"]), rel=1e-5)
    # generate_until: transformers' greedy tokens, cut at the request's stop string.
    contexts = [f"Question: {q['question']}\nAnswer:" for q in QUESTIONS]
    kwargs = {"until": ["?"], "max_gen_toks": 5, "do_sample": False}
    texts = lm.generate_until(
        [Instance("generate_until", {}, (c, kwargs), i) for i, c in enumerate(contexts)]
    )
    expected = [ref.greedy(c, 5).split("?")[0].split("<|im_end|>")[0] for c in contexts]
    assert texts == expected
    assert any(texts)  # something was generated


def test_tune_run_eval_runs_local_lm_eval_tasks_end_to_end(assets: dict[str, Path]) -> None:
    report_file = assets["root"] / "report.json"
    cli = [sys.executable, "-m", "tune.recipes", "run", "eval", "--config", "eval/tiny_cpu_eval",
           f"model.checkpoint_dir={assets['ckpt']}", "perplexity.source=null",
           "lm_eval.tasks=[tune_tiny_mc,tune_tiny_rolling,tune_tiny_gen]",
           f"lm_eval.include_path={assets['tasks']}", "lm_eval.batch_size=4",
           f"output.file={report_file}"]  # fmt: skip
    result = subprocess.run(cli, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads(report_file.read_text())["lm_eval"]
    ref = Reference(assets["ckpt"])

    # multiple choice: the hand-computed argmax over each question's choices.
    correct = []
    for q in QUESTIONS:
        context = f"Question: {q['question']}\nAnswer:"
        scores = [ref.continuation(context, f" {c}") for c in q["choices"]]
        correct.append(float(max(range(len(scores)), key=scores.__getitem__) == q["label"]))
    assert results["tune_tiny_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct))

    # rolling: word perplexity = exp(-sum of log-likelihoods / words).
    ll = sum(ref.rolling(t["text"]) for t in TEXTS)
    words = sum(len(re.split(r"\s+", t["text"])) for t in TEXTS)
    word_ppl = results["tune_tiny_rolling"]["word_perplexity,none"]
    assert word_ppl == pytest.approx(math.exp(-ll / words), rel=1e-5)

    # generation: transformers' greedy decode, cut at the stop string, against the answers.
    hits = [
        float(ref.greedy(f"Question: {q['question']}\nAnswer:", 6).split("\n")[0].split(
            "<|im_end|>")[0] == q["answer"])
        for q in QUESTIONS
    ]  # fmt: skip
    assert results["tune_tiny_gen"]["exact_match,none"] == pytest.approx(sum(hits) / len(hits))
    assert "tune_tiny_mc: acc=" in result.stdout
