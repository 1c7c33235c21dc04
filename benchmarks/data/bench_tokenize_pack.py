"""Tokenize + pack throughput (tokens/s) on the 2,000-row synthetic instruction fixture.

Runs single-threaded and reports ratios measured in one run, alternating the variants:
  raw       tokenizers encode_batch of the rendered chats (a lower bound on tokenization cost)
  hf        transformers apply_chat_template with return_assistant_tokens_mask (peer reference)
  tune      tune.data InstructionBuilder per row (render + tokenize + assistant labels)
  loader    tune.data StreamingLoader end to end: shuffle, tokenize, best-fit pack, collate
Also prints the packing fill of the loader's rows.

    python benchmarks/data/bench_tokenize_pack.py [--repeats 3] [--max-seq-len 512]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets
import torch

from tune.data import InstructionBuilder, StreamingLoader, Tokenizer
from tune.data.synthetic import save_tiny_tokenizer, synthetic_instruction_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--template", default="llama3")
    args = parser.parse_args()
    torch.set_num_threads(1)

    path = save_tiny_tokenizer(tempfile.mkdtemp(), args.template, vocab_size=1024)
    tok = Tokenizer.from_dir(path)
    rows = synthetic_instruction_rows(2000)
    dataset = datasets.Dataset.from_list(rows)
    builder = InstructionBuilder(tok)
    conversations = [builder.messages(row) for row in rows]
    texts = [builder.template.render(c).text for c in conversations]
    total_tokens = sum(len(ids) for ids in tok.encode_batch(texts, add_bos=False))

    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(path)
    except ImportError:  # transformers is a test-only dependency
        hf = None

    def raw() -> int:
        return sum(len(ids) for ids in tok.encode_batch(texts, add_bos=False))

    def hf_chat() -> int:
        n = 0
        for conversation in conversations:
            out = hf.apply_chat_template(
                conversation, return_dict=True, return_assistant_tokens_mask=True
            )
            n += len(out["input_ids"])
        return n

    def tune_rows() -> int:
        return sum(len(builder(row, i)["tokens"]) for i, row in enumerate(rows))

    fill = {}

    def loader() -> int:
        stream = StreamingLoader(dataset, builder, batch_size=8, max_seq_len=args.max_seq_len,
                                 packing="best_fit", buffer_size=64, drop_last=False)  # fmt: skip
        n_rows = 0
        for batch in stream:
            n_rows += batch["tokens"].shape[0]
        fill["value"] = stream.stats.tokens_kept / (n_rows * args.max_seq_len)
        return stream.stats.tokens_kept

    variants = {"raw": raw, "tune": tune_rows, "loader": loader}
    if hf is not None:
        variants["hf"] = hf_chat
    times: dict[str, list[float]] = {name: [] for name in variants}
    tokens: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, fn in variants.items():  # A B C D A B C D: machine noise hits all alike
            start = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - start)

    print(
        f"2,000 rows, {total_tokens} tokens, template {args.template}, vocab {tok.vocab_size}, 1 thread"
    )
    print(f"{'variant':<8} {'best s':>8} {'tokens/s':>12} {'vs tune':>8}")
    base = min(times["tune"])
    for name in variants:
        best = min(times[name])
        print(f"{name:<8} {best:8.3f} {tokens[name] / best:12,.0f} {base / best:8.2f}x")
    print(f"packing fill (best_fit, max_seq_len={args.max_seq_len}): {fill['value']:.4f}")


if __name__ == "__main__":
    main()
