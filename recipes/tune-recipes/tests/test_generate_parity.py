"""The generate recipe decodes exactly what transformers (and peft) decode on the same directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tune.recipes.config import load_config
from tune.recipes.discovery import find_config
from tune.recipes.generate.config import GenerateConfig
from tune.recipes.generate.loop import run
from tune_testing import TinyAssets, make_tiny_assets, run_in_process, tiny_overrides

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

MESSAGES = [
    [{"role": "user", "content": "Add 3 and 4."}],
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Name a colour of the sky on a clear summer day."},
    ],
    [{"role": "user", "content": "Reverse the word stop."}],
]
RAW = ["The quick brown fox", "Once upon a time, in a small village by the sea,", "1 2 3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base, and the PEFT adapter and merged HF directories of a 2-step LoRA sft run."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("generate_parity")
    assets: TinyAssets = make_tiny_assets(root / "assets", num_rows=48)
    summary = run_in_process(
        "sft", "sft/tiny_cpu_lora",
        tiny_overrides(assets, root / "sft", "training.max_steps=2", "training.optimizer.lr=0.05",
                       "training.lr_schedule.warmup_steps=0", "eval.every_n_steps=null",
                       "eval.before_training=false", "data.validation_fraction=0",
                       "data.max_seq_len=64", "checkpointing.save_every_n_steps=null",
                       "checkpointing.save_merged=true", "logging.loggers=[]"),
    )  # fmt: skip
    return {
        "base": assets.checkpoint_dir,
        "adapter": Path(summary["adapter_dir"]),
        "merged": Path(summary["model_dir"]),
        "root": root,
    }


def _generate(overrides: list[str]) -> dict[str, Any]:
    path, _ = find_config("generate/tiny_cpu", "generate")
    config = load_config(path, GenerateConfig, ["output.print=false", *overrides])
    return run(config)


def _ids(records: list[Any]) -> list[list[int]]:
    return [r.completion_ids for r in records]


def _hf_greedy(model: Any, prompt_ids: list[int], max_new: int, eos: list[int]) -> list[int]:
    tokens = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(tokens, attention_mask=torch.ones_like(tokens), do_sample=False,
                             max_new_tokens=max_new, eos_token_id=eos, pad_token_id=0)  # fmt: skip
    return out[0, len(prompt_ids) :].tolist()


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(rendered if isinstance(rendered, list) else rendered["input_ids"])


def test_chat_generation_equals_transformers_greedy_token_for_token(
    trained: dict[str, Path],
) -> None:
    base = trained["base"]
    result = _generate([f"model.checkpoint_dir={base}", f"prompts.items={MESSAGES}",
                        "sampling.max_new_tokens=12", "batch_size=3"])  # fmt: skip
    hf_tok = transformers.AutoTokenizer.from_pretrained(base)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(base).eval()
    eos = [hf_tok.eos_token_id]
    records = result["records"]
    for messages, record in zip(MESSAGES, records, strict=True):
        prompt_ids = _chat_ids(hf_tok, messages)
        assert record.prompt_tokens == len(prompt_ids)
        assert record.prompt_text == hf_tok.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        assert record.completion_ids == _hf_greedy(hf_model, prompt_ids, 12, eos)
    # Stop tokens: pick a token the first row really produces mid-way and stop there.
    first = records[0].completion_ids
    stop = first[4]
    stopped = _generate([f"model.checkpoint_dir={base}", f"prompts.items={MESSAGES}",
                         "sampling.max_new_tokens=12", "batch_size=3",
                         f"sampling.stop_token_ids=[{stop}]"])  # fmt: skip
    for messages, record in zip(MESSAGES, stopped["records"], strict=True):
        expected = _hf_greedy(hf_model, _chat_ids(hf_tok, messages), 12, [*eos, stop])
        assert record.completion_ids == expected
    row0 = stopped["records"][0]
    assert row0.completion_ids == first[: first.index(stop) + 1]
    assert row0.stop_reason == "stop_token"
    assert row0.completion_tokens == first.index(stop) + 1


def test_raw_generation_equals_transformers_greedy(trained: dict[str, Path]) -> None:
    base = trained["base"]
    result = _generate([f"model.checkpoint_dir={base}", f"prompts.items={RAW}",
                        "prompts.chat=false", "sampling.max_new_tokens=10", "batch_size=2"])  # fmt: skip
    hf_tok = transformers.AutoTokenizer.from_pretrained(base)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(base).eval()
    for text, record in zip(RAW, result["records"], strict=True):
        prompt_ids = hf_tok(text)["input_ids"]
        assert record.prompt_text == text
        assert record.prompt_tokens == len(prompt_ids)
        assert record.completion_ids == _hf_greedy(hf_model, prompt_ids, 10, [hf_tok.eos_token_id])
    assert result["generated_tokens"] == sum(len(r.completion_ids) for r in result["records"])
    assert result["tokens_per_s"] > 0


def test_base_plus_adapter_equals_merged_dir_and_peft(trained: dict[str, Path]) -> None:
    common = [f"prompts.items={MESSAGES}", "sampling.max_new_tokens=12", "batch_size=3"]
    base_only = _generate([f"model.checkpoint_dir={trained['base']}", *common])
    with_adapter = _generate([f"model.checkpoint_dir={trained['base']}",
                              f"model.adapter_dir={trained['adapter']}", *common])  # fmt: skip
    merged_in_memory = _generate([f"model.checkpoint_dir={trained['base']}",
                                  f"model.adapter_dir={trained['adapter']}",
                                  "model.merge_adapter=true", *common])  # fmt: skip
    merged_dir = _generate([f"model.checkpoint_dir={trained['merged']}", *common])
    assert len(with_adapter["adapted_modules"]) == 14  # 7 projections x 2 layers
    assert _ids(with_adapter["records"]) != _ids(base_only["records"])  # the adapter matters
    assert _ids(with_adapter["records"]) == _ids(merged_dir["records"])
    assert _ids(merged_in_memory["records"]) == _ids(merged_dir["records"])

    # The reference: peft's PeftModel over the transformers base, greedy.
    hf_tok = transformers.AutoTokenizer.from_pretrained(trained["base"])
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(trained["base"])
    peft_model = peft.PeftModel.from_pretrained(hf_base, trained["adapter"]).eval()
    for messages, record in zip(MESSAGES, with_adapter["records"], strict=True):
        expected = _hf_greedy(peft_model, _chat_ids(hf_tok, messages), 12, [hf_tok.eos_token_id])
        assert record.completion_ids == expected


def test_sampling_is_seeded_and_top_k_1_is_greedy(trained: dict[str, Path]) -> None:
    common = [f"model.checkpoint_dir={trained['base']}", f"prompts.items={RAW}",
              "prompts.chat=false", "sampling.max_new_tokens=8", "sampling.stop_at_eos=false"]  # fmt: skip
    greedy = _ids(_generate(common)["records"])
    top1 = _ids(_generate([*common, "sampling.temperature=0.7", "sampling.top_k=1"])["records"])
    assert top1 == greedy
    sampled = [_ids(_generate([*common, "sampling.temperature=1.5", f"sampling.seed={s}"])["records"])
               for s in (1, 1, 2)]  # fmt: skip
    assert sampled[0] == sampled[1]
    assert sampled[0] != sampled[2]
    assert all(len(row) == 8 for row in sampled[0])


def test_int8_weight_only_equals_its_dequantized_float_twin(trained: dict[str, Path]) -> None:
    from tune.data import Tokenizer
    from tune.models import generate
    from tune.quant import is_quantized_weight
    from tune.recipes.common.generation_model import load_generation_model

    common = [f"model.checkpoint_dir={trained['base']}", f"prompts.items={RAW}",
              "prompts.chat=false", "sampling.max_new_tokens=10", "sampling.stop_at_eos=false"]  # fmt: skip
    result = _generate([*common, "model.quantize=int8_weight_only"])
    assert len(result["quantized_modules"]) == 14
    assert "output" not in result["quantized_modules"]

    twin = load_generation_model(trained["base"], dtype=torch.float32, device=torch.device("cpu"),
                                 quantize="int8_weight_only").checkpoint.model  # fmt: skip
    original = load_generation_model(trained["base"], dtype=torch.float32,
                                     device=torch.device("cpu")).checkpoint.model  # fmt: skip
    for name in result["quantized_modules"]:
        linear = twin.get_submodule(name)
        assert is_quantized_weight(linear.weight)
        linear.weight = torch.nn.Parameter(linear.weight.dequantize(), requires_grad=False)
        assert not torch.equal(linear.weight, original.get_submodule(name).weight)  # really rounded
    tokenizer = Tokenizer.from_dir(trained["base"])
    prompts = [tokenizer.encode(text) for text in RAW]
    assert _ids(result["records"]) == generate(twin, prompts, max_new_tokens=10)


def test_int8_decode_equals_its_dequantized_float_twin(trained: dict[str, Path]) -> None:
    from tune.data import Tokenizer
    from tune.models import generate
    from tune.quant import Int8DecodeLinear, quantize_for_decode
    from tune.recipes.common.generation_model import load_generation_model

    common = [f"model.checkpoint_dir={trained['base']}", f"prompts.items={RAW}",
              "prompts.chat=false", "sampling.max_new_tokens=10", "sampling.stop_at_eos=false"]  # fmt: skip
    result = _generate([*common, "sampling.quantize=int8"])
    twin = load_generation_model(trained["base"], dtype=torch.float32,
                                 device=torch.device("cpu")).checkpoint.model  # fmt: skip
    swapped = quantize_for_decode(twin, use_kernel=False)
    assert "output" in swapped
    assert len(swapped) == 15
    for name in swapped:  # the dequantized weights as plain Linears: the float reference
        parent, _, child = name.rpartition(".")
        linear = twin.get_submodule(name)
        assert isinstance(linear, Int8DecodeLinear)
        setattr(twin.get_submodule(parent) if parent else twin, child, linear.to_linear())
    prompts = [Tokenizer.from_dir(trained["base"]).encode(text) for text in RAW]
    assert _ids(result["records"]) == generate(twin, prompts, max_new_tokens=10)


@pytest.mark.parametrize("use_dora", [False, True])
def test_adapter_written_by_peft_generates_as_peft_does(
    trained: dict[str, Path], tmp_path: Path, use_dora: bool
) -> None:
    torch.manual_seed(0)
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(trained["base"])
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                           use_dora=use_dora, init_lora_weights=False, task_type="CAUSAL_LM")  # fmt: skip
    peft_model = peft.get_peft_model(hf_base, lora).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    result = _generate([f"model.checkpoint_dir={trained['base']}",
                        f"model.adapter_dir={tmp_path / 'adapter'}", f"prompts.items={MESSAGES}",
                        "sampling.max_new_tokens=10", "batch_size=3"])  # fmt: skip
    assert len(result["adapted_modules"]) == 6  # 3 projections x 2 layers
    hf_tok = transformers.AutoTokenizer.from_pretrained(trained["base"])
    changed = 0
    for messages, record in zip(MESSAGES, result["records"], strict=True):
        prompt_ids = _chat_ids(hf_tok, messages)
        expected = _hf_greedy(peft_model, prompt_ids, 10, [hf_tok.eos_token_id])
        assert record.completion_ids == expected
        with peft_model.disable_adapter():
            changed += _hf_greedy(peft_model, prompt_ids, 10, [hf_tok.eos_token_id]) != expected
    assert changed > 0  # the adapter changes what is generated
