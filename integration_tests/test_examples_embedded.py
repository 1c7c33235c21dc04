"""examples/embedded/transformers_lora_loop.py: tune's pieces inside someone else's training loop.

The example fine-tunes a stock `transformers` Llama with tune.peft/data/train/checkpoint only. It
runs here in a subprocess in which `tune.recipes`, `tune.models`, `tune.dist` and `tune.quant`
cannot be imported, and its source is checked to import none of them. The test then recomputes
the held-out loss itself (transformers + peft + plain `F.cross_entropy`), loads the PEFT
directory with `peft` and with tune.peft and compares logits, and resumes an interrupted run.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

import tune.checkpoint  # noqa: E402
import tune.peft  # noqa: E402
from tune.data import InstructionBuilder, StreamingLoader, Tokenizer  # noqa: E402

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "embedded" / "transformers_lora_loop.py"
FORBIDDEN = ("tune.recipes", "tune.models", "tune.dist", "tune.quant")
ALLOWED = {"tune.peft", "tune.data", "tune.train", "tune.checkpoint"}
STEPS, SAVE_EVERY = 6, 3
# Runs the example with the forbidden packages made unimportable (None in sys.modules).
LAUNCHER = (
    "import runpy, sys\n"
    f"for name in {FORBIDDEN!r}:\n"
    "    sys.modules[name] = None\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def _run_example(out: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(EXAMPLE), "--output-dir", str(out),
         "--steps", str(STEPS), "--save-every", str(SAVE_EVERY)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """(output dir, summary.json, stdout) of one uninterrupted run."""
    out = tmp_path_factory.mktemp("embedded") / "run"
    stdout = _run_example(out)
    return out, json.loads((out / "summary.json").read_text()), stdout


def _load_base(base_dir: str) -> torch.nn.Module:
    return transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()


def _heldout_batches(summary: dict) -> list[dict[str, torch.Tensor]]:
    builder = InstructionBuilder(Tokenizer.from_dir(summary["base_dir"]))
    loader = StreamingLoader(
        summary["heldout_file"], builder, batch_size=4, max_seq_len=128, shuffle=False,
        drop_last=False,
    )  # fmt: skip
    return list(loader)


@torch.no_grad()
def _heldout_loss(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    total, count = 0.0, 0
    for batch in batches:
        logits = model(input_ids=batch["tokens"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"]
        total += float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum"))
        count += int((labels != -100).sum())
    return total / count


def test_example_source_imports_only_the_four_libraries() -> None:
    tree = ast.parse(EXAMPLE.read_text(), filename=str(EXAMPLE))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    tune_modules = {m for m in modules if m == "tune" or m.startswith("tune.")}
    assert not [m for m in tune_modules if m.startswith(FORBIDDEN) or m == "tune"], tune_modules
    assert {".".join(m.split(".")[:2]) for m in tune_modules} == ALLOWED
    assert "transformers" in modules


def test_labels_are_aligned_and_heldout_loss_goes_down(run) -> None:
    out, summary, stdout = run
    batches = _heldout_batches(summary)
    for batch in batches:  # labels[t] is the token at t + 1, so the example does not shift
        trained = batch["labels"][:, :-1] != -100
        assert trained.any()
        assert torch.equal(batch["labels"][:, :-1][trained], batch["tokens"][:, 1:][trained])

    before = _heldout_loss(_load_base(summary["base_dir"]), batches)
    trained_model = peft.PeftModel.from_pretrained(_load_base(summary["base_dir"]), out / "adapter")
    after = _heldout_loss(trained_model.eval(), batches)
    # The example's own numbers, recomputed independently (transformers + peft + F.cross_entropy).
    assert before == pytest.approx(summary["heldout_loss_before"], rel=1e-5)
    assert after == pytest.approx(summary["heldout_loss_after"], rel=1e-5)
    assert after < before - 0.05, (before, after)
    assert summary["steps"] == STEPS
    assert f"PEFT adapter saved to {summary['adapter_dir']}" in stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))


def test_peft_loads_the_adapter_with_the_tune_peft_logits(run) -> None:
    out, summary, _ = run
    adapter_dir = out / "adapter"
    saved = load_file(adapter_dir / "adapter_model.safetensors")
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["target_modules"] == ["k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert len(saved) == 2 * 2 * 5  # 2 layers x 5 projections x (lora_A, lora_B)

    peft_model = peft.PeftModel.from_pretrained(_load_base(summary["base_dir"]), adapter_dir).eval()
    peft_state = peft_model.state_dict()
    for key, value in saved.items():  # every saved tensor landed in peft's model, unchanged
        peft_key = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        )
        assert torch.equal(peft_state[peft_key], value), key

    tune_model = _load_base(summary["base_dir"])
    state, adapter_config = tune.checkpoint.load_peft_adapter(adapter_dir, prefix="")
    adapted = tune.peft.load_peft_adapter(tune_model, state, adapter_config)
    assert len(adapted) == 10

    base = _load_base(summary["base_dir"])
    batch = _heldout_batches(summary)[0]
    inputs = {"input_ids": batch["tokens"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        peft_logits = peft_model(**inputs).logits
        tune_logits = tune_model(**inputs).logits
        base_logits = base(**inputs).logits
    real = batch["attention_mask"].bool()
    assert (peft_logits - tune_logits)[real].abs().max() < 1e-5
    assert (peft_logits - base_logits)[real].abs().max() > 1e-2  # the adapter is not a no-op


def test_interrupted_run_resumes_to_the_same_adapter(run, tmp_path: Path) -> None:
    out, _, _ = run
    # As if the run had died after the save at step 3: only the base and that state survive.
    resumed = tmp_path / "resumed"
    shutil.copytree(out / "base", resumed / "base")
    shutil.copytree(out / "state" / f"step_{SAVE_EVERY}", resumed / "state" / f"step_{SAVE_EVERY}")
    stdout = _run_example(resumed)
    assert f"at step {SAVE_EVERY}" in stdout

    full = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again] == list(range(SAVE_EVERY + 1, STEPS + 1))
    assert [r["loss"] for r in again] == [r["loss"] for r in full[SAVE_EVERY:]]
    expected = load_file(out / "adapter" / "adapter_model.safetensors")
    actual = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
