"""GRPO with verifiable rewards in a plain PyTorch loop, from tune's libraries alone.

    pip install tune-models tune-data tune-train tune-checkpoint
    python examples/embedded/grpo_loop.py --checkpoint <hf dir> --data arithmetic.jsonl --steps 5

Rows are `{"prompt", "answer"}`. Each step samples a group of completions per prompt with the
live policy (tune.models' `generate`, passed to tune.train.rl's `PolicyGenerationBackend`), scores
them with tune.train.rl's rewards (the last integer equals the answer; `Answer: <n>` format), turns
the rewards into group-normalised advantages (`sample_and_score`) and takes one clipped
policy-gradient step (`policy_backward`). Prints one JSON line per step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tune.checkpoint import load_hf_checkpoint
from tune.data import PromptAnswerBuilder, StreamingLoader, Tokenizer, load_source
from tune.models import generate, model_from_checkpoint_dir
from tune.train import GradientAccumulator, clip_grad_norm, constant_schedule_with_warmup
from tune.train.rl import (
    PolicyGenerationBackend,
    PolicyLossSettings,
    SamplingSettings,
    answer_format,
    exact_answer,
    policy_backward,
    prompt_rows,
    sample_and_score,
    sampling_seed,
    weighted_reward,
)

REWARDS = [weighted_reward(exact_answer), weighted_reward(answer_format, weight=0.1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", required=True, help="a JSONL file of prompts with answers")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--prompts", type=int, default=16, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=64, help="rollouts per forward")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    ckpt = model_from_checkpoint_dir(args.checkpoint, device="meta", dtype=torch.float32)
    load_hf_checkpoint(ckpt.model, args.checkpoint, key_map=ckpt.hf_to_native_key,
                       dtype=torch.float32, device=torch.device("cpu"))  # fmt: skip
    model = ckpt.model
    model.init_buffers(torch.device("cpu"))
    model.train()

    tokenizer = Tokenizer.from_dir(args.checkpoint)
    rows, _ = load_source(args.data)
    loader = StreamingLoader(
        rows, PromptAnswerBuilder(tokenizer), batch_size=args.prompts, max_seq_len=128,
        truncation="drop", seed=args.seed, shuffle=True, epochs=None, drop_last=True,
    )  # fmt: skip
    stops = (tokenizer.eos_id,) if tokenizer.eos_id is not None else ()
    sampling = SamplingSettings(args.max_new_tokens, temperature=1.0, stop_tokens=stops)
    backend = PolicyGenerationBackend(model, generate, pad_id=tokenizer.pad_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    scheduler = constant_schedule_with_warmup(optimizer, warmup_steps=0)
    accumulator = GradientAccumulator()  # the unit is the completion token
    settings = PolicyLossSettings(clip_eps=0.2)

    batches = iter(loader)
    for step in range(args.steps):
        batch = next(batches)
        scored = sample_and_score(
            backend, tokenizer, prompt_rows(batch), batch["answers"], group_size=args.group,
            sampling=sampling, seed=sampling_seed(args.seed, step, rank=0), rewards=REWARDS,
            scale_rewards=True, pad_id=tokenizer.pad_id,
        )  # fmt: skip
        update = policy_backward(
            model, scored.batch, settings=settings, micro_batch_size=args.micro_batch,
            accumulator=accumulator,
        )  # fmt: skip
        clip_grad_norm(list(model.parameters()), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        record = {"step": step + 1, "loss": update["loss"],
                  "reward": float(scored.total_reward.mean())}  # fmt: skip
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
