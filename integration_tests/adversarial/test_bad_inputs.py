"""Every bad input is one line naming the file and row, key or tensor (class: bad input)."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tune.recipes.discovery import find_config

from .conftest import SHORT, Assets, Expect, tune_cli, write_rows

pytestmark = pytest.mark.integration

KLASS = "bad input"


def _good_rows(n: int = 12) -> list[dict[str, Any]]:
    return [
        {"instruction": f"What is {i} + 1?", "input": "", "output": str(i + 1)} for i in range(n)
    ]


def _chat_rows(n: int = 12) -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": f"{i} + 1?"},
                      {"role": "assistant", "content": str(i + 1)}]}
        for i in range(n)
    ]  # fmt: skip


# ---- config files ---------------------------------------------------------------------------


def _config(assets: Assets, tmp_path: Path) -> dict[str, Any]:
    path, _ = find_config("sft/tiny_cpu_lora", "sft")
    tree = yaml.safe_load(path.read_text())
    tree["model"]["checkpoint_dir"] = str(assets.base)
    tree["data"]["source"] = str(assets.sft.data_file)
    tree["checkpointing"]["output_dir"] = str(tmp_path / "out")
    return tree


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda t: t.encode() + b"# caf\xe9\n", ["cfg.yaml:", "not UTF-8", "0xe9"]),
        (lambda t: t + "training: [unclosed\n", ["cfg.yaml", "not valid YAML"]),
        (lambda t: "- a\n- b\n", ["cfg.yaml", "must be a mapping"]),
        (lambda t: t.replace("  optimizer:", "  optimzer:"), ["training.optimzer", "unknown key"]),
        (lambda t: t.replace("max_steps: 60", "max_steps: sixty"), ["training.max_steps"]),
        (lambda t: t.replace("lr: 0.001", "lr: -0.001"), ["training.optimizer.lr"]),
        (lambda t: t.replace("alpha: 16", "alpha: 1.0e+30"), ["training.lora.alpha"]),
        (lambda t: t.replace("alpha: 16", "alpha: .nan"), ["training.lora.alpha"]),
        (lambda t: t.replace("r: 8", "r: 0"), ["training.lora.r"]),
        (
            lambda t: t.replace("alpha: 16", "alpha: 16\n    dropout: 1.5"),
            ["training.lora.dropout"],
        ),
        (lambda t: t.replace("recipe: sft", "recipe: grpo"), ["recipe", "not 'sft'"]),
        (
            lambda t: t.replace("global_batch_size: 8", "global_batch_size: 0"),
            ["training.global_batch_size"],
        ),
    ],
    ids=[
        "non-utf8",
        "invalid-yaml",
        "top-level-list",
        "unknown-key",
        "wrong-type",
        "negative-lr",
        "lora-alpha-1e30",
        "lora-alpha-nan",
        "lora-r-0",
        "lora-dropout-1.5",
        "other-recipe",
        "batch-0",
    ],
)
def test_a_bad_config_file_is_named_by_key_and_line(
    edit: Callable[[str], str | bytes],
    needles: list[str],
    assets: Assets,
    tmp_path: Path,
    expect: Expect,
) -> None:
    text = yaml.safe_dump(_config(assets, tmp_path), sort_keys=False)
    text = "recipe: sft\n" + text.replace("recipe: sft\n", "")
    edited = edit(text)
    config = tmp_path / "cfg.yaml"
    config.write_bytes(edited if isinstance(edited, bytes) else edited.encode())
    expect.refused(KLASS, ["run", "sft", "--config", str(config)], *needles)
    assert not (tmp_path / "out").exists()


# ---- data files -----------------------------------------------------------------------------


def _jsonl_with(tmp_path: Path, line: int, raw: bytes) -> Path:
    lines = [json.dumps(r).encode() for r in _good_rows()]
    lines[line - 1] = raw
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize(
    ("raw", "needles"),
    [
        (b'{"instruction": "caf\xe9", "input": "", "output": "1"}', ["data.jsonl:3", "UTF-8"]),
        (b'{"instruction": "x", "input": "", "output": ', ["data.jsonl:3", "malformed JSON"]),
        (b'{"instruction": 3, "input": "", "output": "1"}', ["data.jsonl:3", "'instruction'"]),
        (b'{"instruction": "x", "input": "", "output": ["a"]}', ["data.jsonl:3", "'output'"]),
        (b'{"instruction": "x", "input": "", "output": {"a": 1}}', ["data.jsonl:3", "'output'"]),
        (b'{"instruction": "x", "input": "", "output": null}', ["data.jsonl", "'output'"]),
        (b'{"instruction": "x", "input": ""}', ["data.jsonl", "output"]),
        (b'{"instruction": "\\ud800", "input": "", "output": "1"}', ["data.jsonl:3"]),
        (b'{"instruction": "x\xee\x83\xb0", "input": "", "output": "1"}', ["data.jsonl:3"]),
        (b"[1, 2, 3]", ["data.jsonl:3"]),
    ],
    ids=[
        "non-utf8",
        "malformed-json",
        "int-text",
        "list-text",
        "dict-text",
        "null-text",
        "missing-column",
        "lone-surrogate",
        "reserved-char",
        "row-not-object",
    ],
)
def test_a_bad_data_row_is_named_before_step_0(
    raw: bytes, needles: list[str], assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    data = _jsonl_with(tmp_path, 3, raw)
    argv = [*assets.argv("sft", tmp_path / "out", *SHORT), f"data.source={data}"]
    expect.refused(KLASS, argv, *needles, intact=(data,))
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("kind", ["empty", "missing", "directory"])
def test_a_data_source_that_is_not_a_data_file_is_named(
    kind: str, assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    data = tmp_path / "data.jsonl"
    if kind == "empty":
        data.write_text("")
    elif kind == "directory":
        data.mkdir()
    argv = [*assets.argv("sft", tmp_path / "out", *SHORT), f"data.source={data}"]
    expect.refused(KLASS, argv, "data.jsonl")


@pytest.mark.parametrize(
    ("message", "needles"),
    [
        ({"role": "user", "content": 7}, ["chat.jsonl", "content"]),
        ({"role": "user", "content": [{"type": "text"}]}, ["chat.jsonl", "content"]),
        ({"role": "wizard", "content": "hi"}, ["chat.jsonl", "wizard"]),
        ({"role": "user"}, ["chat.jsonl", "content"]),
    ],
    ids=["int-content", "list-content", "unknown-role", "no-content"],
)
def test_a_bad_chat_message_is_named(
    message: dict[str, Any], needles: list[str], assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    rows = _chat_rows()
    rows[4]["messages"][0] = message
    data = write_rows(tmp_path / "chat.jsonl", rows)
    argv = [
        *assets.argv("sft", tmp_path / "out", *SHORT),
        f"data.source={data}",
        "data.format=chat",
    ]
    expect.refused(KLASS, argv, *needles)


@pytest.mark.parametrize(
    ("template", "needles"),
    [
        (
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
            ["sandbox limit"],
        ),
        ("{% for i in range(10**9) %}{% endfor %}", ["chat template"]),
        ("{{ 'x' * 10**10 }}", ["chat template"]),
        ("{% for m in messages %}{{ m.content }", ["chat template"]),
        ("{{ messages.__class__.__mro__ }}", ["chat template"]),
    ],
    ids=["nested-loops", "huge-range", "huge-string", "syntax-error", "dunder-access"],
)
def test_a_hostile_chat_template_fails_fast_and_named(
    template: str, needles: list[str], assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    data = write_rows(tmp_path / "chat.jsonl", _chat_rows())
    argv = [
        *assets.argv("sft", tmp_path / "out", *SHORT),
        f"data.source={data}", "data.format=chat", f"tokenizer.chat_template={template}",
    ]  # fmt: skip
    expect.refused(KLASS, argv, *needles)


@pytest.mark.parametrize(
    ("pair", "needles"),
    [
        ({"chosen": "", "rejected": "5"}, ["paired.jsonl", "'chosen'", "empty"]),
        ({"chosen": "5", "rejected": "5"}, ["paired.jsonl", "identical"]),
        ({"chosen": 5, "rejected": "6"}, ["paired.jsonl", "'chosen'"]),
        ({"chosen": "5", "rejected": "  "}, ["paired.jsonl", "'rejected'", "empty"]),
    ],
    ids=["empty-chosen", "identical", "int-chosen", "blank-rejected"],
)
def test_a_useless_preference_pair_is_refused(
    pair: dict[str, Any], needles: list[str], assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    rows = [{"prompt": f"{i} + 1?", "chosen": str(i + 1), "rejected": str(i)} for i in range(16)]
    rows[5].update(pair)
    data = write_rows(tmp_path / "paired.jsonl", rows)
    argv = [*assets.argv("preference", tmp_path / "out"), f"data.source={data}"]
    expect.refused(KLASS, argv, *needles)


# ---- tokenizer and checkpoint files -------------------------------------------------------


@pytest.mark.parametrize(
    ("corrupt", "needles"),
    [
        (lambda p: p.write_text(p.read_text()[: len(p.read_text()) // 2]), ["tokenizer.json"]),
        (lambda p: p.write_bytes(b"\x00\x01binary"), ["tokenizer.json"]),
        (lambda p: p.write_text("[1, 2]"), ["tokenizer.json"]),
        (lambda p: p.unlink(), ["tokenizer.json"]),
        (
            lambda p: p.write_text(json.dumps({"version": "1.0", "model": "nope"})),
            ["tokenizer.json"],
        ),
    ],
    ids=["truncated", "binary", "list", "missing", "bad-model"],
)
def test_a_broken_tokenizer_file_is_named(
    corrupt: Callable[[Path], Any],
    needles: list[str],
    assets: Assets,
    base_copy: Callable[[str], Path],
    tmp_path: Path,
    expect: Expect,
) -> None:
    base = base_copy("base")
    corrupt(base / "tokenizer.json")
    expect.refused(KLASS, assets.argv("sft", tmp_path / "out", *SHORT, base=base), *needles)


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        ({"num_attention_heads": 0}, ["config.json", "num_attention_heads", "0"]),
        ({"rms_norm_eps": -1}, ["config.json", "rms_norm_eps"]),
        ({"hidden_size": "big"}, ["config.json", "hidden_size"]),
        ({"vocab_size": -5}, ["config.json", "vocab_size"]),
        ({"tie_word_embeddings": "false"}, ["config.json", "tie_word_embeddings"]),
        ({"num_key_value_heads": 3}, ["config.json", "num_key_value_heads"]),
        ({"rope_theta": float("nan")}, ["config.json", "rope_theta"]),
        ({"num_hidden_layers": 1.5}, ["config.json", "num_hidden_layers"]),
    ],
    ids=[
        "heads-0",
        "eps-negative",
        "hidden-str",
        "vocab-negative",
        "bool-str",
        "kv-heads",
        "rope-nan",
        "layers-float",
    ],
)
def test_a_bad_config_json_is_named_by_key(
    edit: dict[str, Any],
    needles: list[str],
    assets: Assets,
    base_copy: Callable[[str], Path],
    tmp_path: Path,
    expect: Expect,
) -> None:
    base = base_copy("base")
    config = json.loads((base / "config.json").read_text())
    config.update(edit)
    (base / "config.json").write_text(json.dumps(config))
    expect.refused(KLASS, assets.argv("sft", tmp_path / "out", *SHORT, base=base), *needles)


@pytest.mark.parametrize(
    ("text", "needles"),
    [("[1, 2]", ["config.json"]), ('{"model_type": "llama", ', ["config.json"])],
)
def test_a_config_json_that_is_not_an_object_is_named(
    text: str,
    needles: list[str],
    assets: Assets,
    base_copy: Callable[[str], Path],
    tmp_path: Path,
    expect: Expect,
) -> None:
    base = base_copy("base")
    (base / "config.json").write_text(text)
    expect.refused(KLASS, assets.argv("sft", tmp_path / "out", *SHORT, base=base), *needles)


def _rewrite_safetensors(
    path: Path, edit: Callable[[dict[str, Any], bytes], tuple[Any, bytes]]
) -> None:
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8 : 8 + size]), raw[8 + size :]
    header, data = edit(header, data)
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def _metadata_list(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
    return {**h, "__metadata__": ["format", "pt"]}, d


def _overlap(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
    names = [k for k in h if k != "__metadata__"]
    h[names[1]]["data_offsets"] = list(h[names[0]]["data_offsets"])  # two tensors, one range
    return h, d


def _truncated(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
    return h, d[: len(d) // 2]


def _unknown_dtype(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
    name = next(k for k in h if k != "__metadata__")
    h[name]["dtype"] = "F128"
    return h, d


def _wrong_size(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
    name = next(k for k in h if k != "__metadata__")
    h[name]["shape"] = [h[name]["shape"][0] * 2, *h[name]["shape"][1:]]
    return h, d


@pytest.mark.parametrize(
    "edit", [_metadata_list, _overlap, _truncated, _unknown_dtype, _wrong_size],
    ids=["metadata-list", "overlapping-offsets", "truncated-data", "unknown-dtype", "shape-size"],
)  # fmt: skip
def test_a_malformed_safetensors_file_is_named(
    edit: Callable[[dict[str, Any], bytes], tuple[Any, bytes]],
    assets: Assets,
    base_copy: Callable[[str], Path],
    tmp_path: Path,
    expect: Expect,
) -> None:
    base = base_copy("base")
    _rewrite_safetensors(base / "model.safetensors", edit)
    argv = assets.argv("sft", tmp_path / "out", *SHORT, base=base)
    expect.refused(KLASS, argv, "model.safetensors")


@pytest.mark.parametrize("content", [b"", b"\xff" * 4, struct.pack("<Q", 10**9) + b"{}"])
def test_a_weights_file_that_is_not_safetensors_is_named(
    content: bytes,
    assets: Assets,
    base_copy: Callable[[str], Path],
    tmp_path: Path,
    expect: Expect,
) -> None:
    base = base_copy("base")
    (base / "model.safetensors").write_bytes(content)
    argv = assets.argv("sft", tmp_path / "out", *SHORT, base=base)
    expect.refused(KLASS, argv, "model.safetensors")


# ---- runs that train nothing, resume targets ------------------------------------------------


def _poison(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
    # NaN into the final norm's weight: every loss is NaN, whatever the batch
    name = "model.norm.weight"
    start, end = h[name]["data_offsets"]
    nan = struct.pack("<f", float("nan")) * ((end - start) // 4)
    return h, d[:start] + nan + d[end:]


@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_a_run_whose_every_step_is_non_finite_fails_and_writes_nothing(
    policy: str,
    assets: Assets,
    base_copy: Callable[[str], Path],
    tmp_path: Path,
    expect: Expect,
) -> None:
    base = base_copy("base")
    _rewrite_safetensors(base / "model.safetensors", _poison)
    out = tmp_path / "out"
    argv = [*assets.argv("sft", out, *SHORT, base=base), f"training.nonfinite={policy}",
            "training.max_steps=2"]  # fmt: skip
    expect.refused(KLASS, argv, "non-finite")
    assert not (out / "adapter").exists()
    assert not (out / "model").exists()


@pytest.mark.parametrize("target", ["step_9", "/nonexistent/step_1"])
def test_a_missing_resume_target_is_named(
    target: str, assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    argv = [*assets.argv("sft", tmp_path / "out", *SHORT), f"checkpointing.resume={target}"]
    expect.refused(KLASS, argv, "checkpointing.resume")


def test_a_corrupt_optimizer_file_is_named_and_nothing_is_deleted(
    assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    out = tmp_path / "out"
    argv = assets.argv("sft", out, *SHORT)
    assert tune_cli(argv)[0] == 0
    optimizer = out / "checkpoints" / "step_1" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    expect.refused(KLASS, [*argv, "training.max_steps=2", "checkpointing.resume_overrides=[training]"],
                   "optimizer.pt", intact=(out / "checkpoints",))  # fmt: skip


@pytest.mark.parametrize("recipe", ["generate", "eval", "sft"])
def test_a_tokenizer_larger_than_the_embedding_is_named(
    recipe: str, assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    tokenizer = Path(shutil.copytree(assets.base, tmp_path / "tokenizer"))
    hf = HFTokenizer.from_file(str(tokenizer / "tokenizer.json"))
    hf.add_tokens([f"<extra_{i}>" for i in range(64)])  # ids past the 512-row embedding
    hf.save(str(tokenizer / "tokenizer.json"))
    if recipe == "sft":
        argv = [*assets.argv("sft", tmp_path / "out", *SHORT), f"tokenizer.path={tokenizer}"]
    else:
        config = {"generate": "generate/tiny_cpu", "eval": "eval/tiny_cpu_eval"}[recipe]
        argv = ["run", recipe, "--config", config, f"model.checkpoint_dir={assets.base}",
                f"tokenizer.path={tokenizer}"]  # fmt: skip
        if recipe == "eval":
            argv.append(f"perplexity.source={assets.sft.data_file}")
    expect.refused(KLASS, argv, "tokenizer", "embeds only 512")
