"""The shared fixture of the peer benchmark: checkpoint, tokenizer, rows and the exact batches.

Runs in the tune environment. The batches are the ones the ``sft`` recipe's loader yields for the
benchmark config (same source, seed, batch size, max length, packing), saved once so the peer
runners train on the same token sequences in the same order.

Usage: python benchmarks/peers/fixture.py OUT_DIR --steps N
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from runner_support import batch_digest

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


def make_checkpoint(out: Path) -> Path:
    """Write 2,000 synthetic rows, a byte-level BPE tokenizer and a random Llama-3 checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tune.data import Tokenizer
    from tune.data.synthetic import save_tiny_tokenizer, synthetic_instruction_rows, write_jsonl

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


def dump_batches(model_dir: Path, data_file: Path, packing: bool, steps: int, path: Path) -> None:
    """Save the first ``steps`` batches of the recipe's training loader (same args as the recipe)."""
    from tune.data import Tokenizer, build_sample_builder, make_loader, split_source

    tok = Tokenizer.from_dir(model_dir)
    builder = build_sample_builder(
        tok, "instruction", column_map={}, chat_template=None, train_on_input=False
    )
    train, _ = split_source(str(data_file), "train", None, 0.0, FIXTURE_SEED)
    loader = make_loader(
        train, builder, batch_size=BATCH_SIZE, max_seq_len=MAX_SEQ_LEN, packing=packing,
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
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = make_checkpoint(args.out)
    for packing in (False, True):
        name = "packed" if packing else "unpacked"
        dump_batches(model_dir, args.out / "data.jsonl", packing, args.steps,
                     args.out / f"batches_{name}.pt")  # fmt: skip
    from safetensors.torch import load_file

    n_params = sum(t.numel() for t in load_file(str(model_dir / "model.safetensors")).values())
    from tune.data import Tokenizer

    # The BPE stops merging when the synthetic corpus runs out of pairs (well under 8192); the
    # model keeps vocab 8192, so the embedding and LM head are full size.
    tokenizer_vocab = Tokenizer.from_dir(model_dir).vocab_size
    (args.out / "fixture.json").write_text(
        json.dumps({"parameters": n_params, "tokenizer_vocab": tokenizer_vocab, **MODEL_SIZES})
    )


if __name__ == "__main__":
    main()
