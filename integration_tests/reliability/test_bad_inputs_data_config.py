"""Bad data, tokenizer and config inputs: each stops before step 0 with a message naming it.

Runs go through the real sft loop (in this process, for speed) or the real CLI where the
launcher matters. "Before step 0" is checked by the metrics file holding no step.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tune.dist.testing import clean_env, run_launch
from tune_testing import TinyAssets, tune_command

pytestmark = pytest.mark.integration


def _write_rows(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(assets: TinyAssets, n: int = 24) -> list[dict[str, Any]]:
    lines = assets.data_file.read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


def _chat_rows(n: int = 16) -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": f"say {i}"},
                      {"role": "assistant", "content": f"{i} {i}"}]}
        for i in range(n)
    ]  # fmt: skip


# ---- data ---------------------------------------------------------------------------------


def test_malformed_jsonl_row_names_file_and_line(in_process: Any, tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    lines = in_process.runs.assets.data_file.read_text().splitlines()[:20]
    lines[4] = '{"instruction": "unterminated'
    data.write_text("\n".join(lines) + "\n")
    err = in_process.fails(f"data.source={data}")
    assert f"{data}:5" in str(err)


def test_missing_column_names_the_column_and_the_available_ones(
    in_process: Any, tmp_path: Path
) -> None:
    rows = _rows(in_process.runs.assets)
    for row in rows:
        del row["output"]
    data = _write_rows(tmp_path / "rows.jsonl", rows)
    err = in_process.fails(f"data.source={data}")
    assert "['output'] not found" in str(err), err
    assert "available columns" in str(err), err


def test_column_missing_in_one_row_names_the_row(in_process: Any, tmp_path: Path) -> None:
    rows = _rows(in_process.runs.assets)
    del rows[6]["output"]
    data = _write_rows(tmp_path / "rows.jsonl", rows)
    err = in_process.fails(f"data.source={data}")
    assert "'output'" in str(err), err
    assert "6" in str(err), err


def test_unknown_role_names_the_role_and_the_example(in_process: Any, tmp_path: Path) -> None:
    rows = _chat_rows()
    rows[3]["messages"][0]["role"] = "wizard"
    data = _write_rows(tmp_path / "chat.jsonl", rows)
    with pytest.raises(ValueError, match="wizard") as info:
        in_process.run(f"data.source={data}", "data.format=chat")
    assert "example 3" in str(info.value), info.value


@pytest.mark.parametrize("row", [3, 13])
def test_bad_row_is_named_by_its_place_in_the_file_with_a_held_out_fraction(
    row: int, in_process: Any, tmp_path: Path
) -> None:
    # The hold-out split shuffles the rows; the row checks run on the file before it.
    rows = _chat_rows()
    rows[row]["messages"][0]["role"] = "wizard"
    data = _write_rows(tmp_path / "chat.jsonl", rows)
    with pytest.raises(ValueError, match="wizard") as info:
        in_process.run(f"data.source={data}", "data.format=chat", "data.validation_fraction=0.25")
    assert f"example {row}:" in str(info.value), info.value


def test_unknown_role_fails_before_step_0(in_process: Any, tmp_path: Path) -> None:
    rows = _chat_rows()
    rows[3]["messages"][0]["role"] = "wizard"
    data = _write_rows(tmp_path / "chat.jsonl", rows)
    in_process.fails(f"data.source={data}", "data.format=chat")


def test_empty_assistant_turn_is_named(in_process: Any, tmp_path: Path) -> None:
    rows = _chat_rows()
    rows[5]["messages"][1]["content"] = ""
    data = _write_rows(tmp_path / "chat.jsonl", rows)
    err = in_process.fails(f"data.source={data}", "data.format=chat")
    assert "example 5" in str(err), err
    assert "assistant" in str(err), err


def test_empty_dataset_names_the_source(in_process: Any, tmp_path: Path) -> None:
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    err = in_process.fails(f"data.source={data}")
    assert str(data) in str(err), err
    assert "0 rows" in str(err), err


def test_too_long_under_policy_error_names_the_example(in_process: Any) -> None:
    err = in_process.fails("data.max_seq_len=8", "data.truncation=error")
    assert "max_seq_len=8" in str(err), err
    assert "example" in str(err), err


def test_too_long_under_policy_drop_is_counted_and_all_dropped_stops(in_process: Any) -> None:
    err = in_process.fails("data.max_seq_len=8", "data.truncation=drop")
    assert "no usable samples" in str(err), err
    assert "dropped_too_long=240" in str(err), err


def test_too_long_under_policy_truncate_trains_on_the_cut_examples(
    in_process: Any, tmp_path: Path
) -> None:
    rows = _rows(in_process.runs.assets)
    for row in rows:
        row["output"] = " ".join([row["output"]] * 60)  # answers far beyond 48 tokens
    data = _write_rows(tmp_path / "long.jsonl", rows)
    summary = in_process.run(f"data.source={data}", "data.max_seq_len=48",
                             "data.truncation=truncate", "training.max_steps=1")  # fmt: skip
    assert summary["step"] == 1
    assert math.isfinite(summary["loss"])


def test_zero_trainable_tokens_is_an_error(in_process: Any, tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": f"no answer {i}"}]} for i in range(16)]
    data = _write_rows(tmp_path / "no_answers.jsonl", rows)
    err = in_process.fails(f"data.source={data}", "data.format=chat")
    assert "no usable samples" in str(err), err
    assert "dropped_no_labels=16" in str(err), err


def test_template_whose_replies_cannot_be_found_is_refused_before_loading(
    in_process: Any, tmp_path: Path
) -> None:
    """A template without `{% generation %}` markers trains on the replies it renders (found by
    rendering prefixes); one that renders the last reply differently cannot, and is refused."""
    data = _write_rows(tmp_path / "chat.jsonl", _chat_rows())
    template = tmp_path / "last_turn_differs.jinja"
    template.write_text(
        "{% for m in messages %}{{ m['role'] }}: "
        "{% if loop.last and m['role'] == 'assistant' %}[final] {% endif %}"
        "{{ m['content'] }}\n{% endfor %}"
    )
    err = in_process.fails(
        f"data.source={data}", "data.format=chat", f"tokenizer.chat_template={template}"
    )
    assert "tokenizer.chat_template" in str(err), err
    assert "last_turn_differs.jinja" in str(err), err


def test_pad_equal_to_eos_still_trains_on_eos(runs: Any, tmp_path: Path) -> None:
    """Padding is masked by the attention mask, not by token id: a pad == eos tokenizer keeps eos."""
    from tune.data import InstructionBuilder, Tokenizer, collate_padded

    tok_dir = tmp_path / "tok"
    shutil.copytree(runs.assets.checkpoint_dir, tok_dir)
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    config["pad_token"] = config["eos_token"]
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = Tokenizer.from_dir(tok_dir)
    assert tokenizer.pad_id == tokenizer.eos_id
    builder = InstructionBuilder(tokenizer)
    rows = _rows(runs.assets, 2)
    samples = [builder(rows[0], 0), builder({**rows[1], "output": rows[1]["output"] * 5}, 1)]
    batch = collate_padded(samples, pad_id=tokenizer.pad_id)
    n = len(samples[0]["tokens"])
    assert batch["tokens"].shape[1] > n  # the short row is padded, with the eos id
    assert (batch["tokens"][0, n:] == tokenizer.eos_id).all()
    assert (batch["labels"][0] == tokenizer.eos_id).sum() == 1  # its own eos is a target
    assert (batch["labels"][0, n:] == -100).all()  # the padding is not
    assert (batch["attention_mask"][0, n:] == 0).all()


def test_tokenizer_larger_than_the_embedding_names_both_sizes(
    in_process: Any, tmp_path: Path
) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    tok_dir = tmp_path / "big_tok"
    shutil.copytree(in_process.runs.assets.checkpoint_dir, tok_dir)
    tok = HFTokenizer.from_file(str(tok_dir / "tokenizer.json"))
    tok.add_tokens([f"<extra_{i}>" for i in range(600)])
    tok.save(str(tok_dir / "tokenizer.json"))
    err = in_process.fails(f"tokenizer.path={tok_dir}")
    assert "512" in str(err), err
    assert str(tok.get_vocab_size()) in str(err), err


# ---- config -------------------------------------------------------------------------------


def test_unknown_override_key_is_named_with_a_suggestion(in_process: Any) -> None:
    err = in_process.fails("training.optimizer.lrr=0.1")
    assert "training.optimizer.lrr: unknown key" in str(err), err
    assert "did you mean 'training.optimizer.lr'" in str(err), err


def test_misspelled_key_in_a_yaml_file_names_file_and_line(in_process: Any, tmp_path: Path) -> None:
    import tune.recipes

    bundled = Path(tune.recipes.__file__).parent / "configs" / "sft" / "tiny_cpu_lora.yaml"
    text = bundled.read_text().replace("  micro_batch_size:", "  micro_bacth_size:")
    path = tmp_path / "typo.yaml"
    path.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "micro_bacth_size" in t)
    err = in_process.fails(config=str(path))
    assert f"{path}:{line}" in str(err), err
    assert "micro_batch_size" in str(err), err


@pytest.mark.parametrize("lr", ["0", "-1e-4"])
def test_learning_rate_not_positive(in_process: Any, lr: str) -> None:
    err = in_process.fails(f"training.optimizer.lr={lr}")
    assert "training.optimizer.lr" in str(err), err


def test_warmup_longer_than_training(in_process: Any) -> None:
    err = in_process.fails("training.lr_schedule.warmup_steps=5")  # 2 steps in all
    assert "training.lr_schedule.warmup_steps" in str(err), err
    assert "(2)" in str(err), err


def test_lora_targets_matching_nothing_name_the_patterns(in_process: Any) -> None:
    err = in_process.fails("training.lora.targets=[qkv_proj_typo]")
    assert "qkv_proj_typo" in str(err), err


def test_component_injection_of_os_system_is_refused_at_parse_time(
    in_process: Any, tmp_path: Path
) -> None:
    sentinel = tmp_path / "pwned"
    err = in_process.fails("training.optimizer.name=os.system", f"data.source={sentinel}")
    assert "os.system" in str(err), err
    assert "allow" in str(err), err
    assert not sentinel.exists()


def test_batch_not_divisible_by_ranks_fails_in_the_launcher_before_any_rank(
    runs: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    command = runs.multi_rank(out, "training.global_batch_size=6")  # 6 % (2 ranks x 2) != 0
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=clean_env())
    assert result.returncode == 2
    assert "training.global_batch_size" in result.stderr
    assert "= 4" in result.stderr
    assert "process group up" not in result.stderr  # no rank was started
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_bad_yaml_syntax_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("recipe: sft\nmodel:\n  checkpoint_dir: [unclosed\n")
    result = subprocess.run(
        tune_command("sft", str(path), []),
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(path) in result.stderr, result.stderr[-2000:]
    assert "line 3" in result.stderr, result.stderr[-2000:]


def test_config_for_another_recipe_fails(tmp_path: Path) -> None:
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump({"recipe": "generate"}))
    result = subprocess.run(
        tune_command("sft", str(path), []),
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert result.returncode == 2
    assert "generate" in result.stderr


@pytest.mark.distributed
def test_bad_row_read_by_one_rank_stops_every_rank_without_a_hang(
    runs: Any, tmp_path: Path
) -> None:
    rows = _chat_rows(16)
    rows[3]["messages"][0]["role"] = "wizard"  # read by one rank only, inside the first epoch
    data = _write_rows(tmp_path / "chat.jsonl", rows)
    command = runs.multi_rank(
        tmp_path / "out", f"data.source={data}", "data.format=chat", "training.max_steps=4"
    )
    # a healthy run fails within its first step; a hang is killed after 75 s (TimeoutError)
    result = run_launch(command, 75.0, tmp_path / "stderr.txt")
    assert result.returncode != 0
    assert "wizard" in result.stderr
    assert "example 3" in result.stderr
