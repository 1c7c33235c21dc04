"""Prompt files, stop strings and the output file of the generate recipe (the prompt and stop
rules themselves are tested in tune-data and tune-models)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tune.data import Tokenizer, read_prompt_file
from tune.recipes.config import load_config
from tune.recipes.discovery import find_config
from tune.recipes.generate.config import GenerateConfig
from tune.recipes.generate.loop import run
from tune_testing import make_tiny_checkpoint

transformers = pytest.importorskip("transformers")

PROMPTS = ["Translate cat to French.", "What is two plus two?", "Write a haiku about rain."]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return make_tiny_checkpoint(tmp_path_factory.mktemp("generate_inputs") / "base", vocab_size=300)


def _run(base: Path, *overrides: str) -> dict[str, Any]:
    path, _ = find_config("generate/tiny_cpu", "generate")
    return run(load_config(path, GenerateConfig, [f"model.checkpoint_dir={base}", "output.print=false",
                                                  "sampling.max_new_tokens=8", *overrides]))  # fmt: skip


def test_jsonl_and_txt_files_give_the_config_items_results(base: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(
        json.dumps({"prompt": PROMPTS[0]}) + "\n\n"
        + json.dumps({"messages": [{"role": "user", "content": PROMPTS[1]}]}) + "\n"
        + json.dumps({"prompt": PROMPTS[2], "id": 7}) + "\n"
    )  # fmt: skip
    out = tmp_path / "out" / "completions.jsonl"
    from_file = _run(base, f"prompts.file={jsonl}", "prompts.items=[]", f"output.file={out}",
                     "batch_size=2")  # fmt: skip
    from_items = _run(base, f"prompts.items={PROMPTS}", "batch_size=3")
    assert [r.where for r in from_file["records"]] == [f"{jsonl}:1", f"{jsonl}:3", f"{jsonl}:4"]
    assert [r.completion_ids for r in from_file["records"]] == [
        r.completion_ids for r in from_items["records"]
    ]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [r.to_json() for r in from_file["records"]]
    assert set(lines[0]) == {"where", "prompt", "prompt_text", "completion", "prompt_tokens",
                             "completion_tokens", "stop_reason"}  # fmt: skip
    assert lines[1]["prompt"] == [{"role": "user", "content": PROMPTS[1]}]
    tokenizer = Tokenizer.from_dir(base)
    for line, record in zip(lines, from_file["records"], strict=True):
        assert line["prompt_tokens"] == len(tokenizer.encode(line["prompt_text"], add_bos=False))
        assert line["completion_tokens"] == len(record.completion_ids)
        ids = record.completion_ids
        kept = ids[:-1] if record.stop_reason == "eos" else ids
        assert line["completion"] == tokenizer.decode(kept, skip_special_tokens=True)

    txt = tmp_path / "prompts.txt"
    txt.write_text("\n".join(PROMPTS) + "\n\n")
    assert [p.text for p in read_prompt_file(txt)] == PROMPTS
    raw_file = _run(base, f"prompts.file={txt}", "prompts.items=[]", "prompts.chat=false")
    raw_items = _run(base, f"prompts.items={PROMPTS}", "prompts.chat=false")
    assert [r.prompt_text for r in raw_file["records"]] == PROMPTS
    assert [r.completion_ids for r in raw_file["records"]] == [
        r.completion_ids for r in raw_items["records"]
    ]


def test_stop_string_cuts_the_completion(base: Path) -> None:
    tokenizer = Tokenizer.from_dir(base)
    common = [f"prompts.items={PROMPTS[:1]}", "prompts.chat=false", "sampling.max_new_tokens=16",
              "sampling.stop_at_eos=false"]  # fmt: skip
    full = _run(base, *common)["records"][0]
    text = tokenizer.decode(full.completion_ids, skip_special_tokens=True)
    # A stop string from the middle of the text: a later token's printable text.
    stop = next(
        s
        for s in (tokenizer.decode([t]) for t in full.completion_ids[3:])
        if s.strip() and "\ufffd" not in s and text.find(s) > 0
    )
    cut = _run(base, *common, f"sampling.stop_strings=[{json.dumps(stop)}]")["records"][0]
    assert cut.stop_reason == "stop_string"
    assert cut.completion == text[: text.find(stop)]
    k = cut.completion_tokens
    assert stop in tokenizer.decode(full.completion_ids[:k])
    assert stop not in tokenizer.decode(full.completion_ids[: k - 1])


def test_cli_prints_completions_and_writes_jsonl(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "tune.recipes", "run", "generate", "--config", "generate/tiny_cpu",
         f"model.checkpoint_dir={base}", f"output.file={out}", "sampling.max_new_tokens=6"],
        capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2  # the bundled config's two prompts
    assert "[1/2] prompts.items.0" in result.stdout
    assert "tokens/s" in result.stdout
    for record in records:
        assert f"  → {record['completion']}" in result.stdout
    in_process = _run(base, f"output.file={tmp_path / 'inproc.jsonl'}", "sampling.max_new_tokens=6")
    assert records == [r.to_json() for r in in_process["records"]]
