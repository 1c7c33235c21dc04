"""GRPO with verifiable rewards in a plain PyTorch loop, from tune's libraries alone.

    pip install tune-models tune-data tune-train tune-checkpoint
    python examples/embedded/grpo_loop.py --checkpoint <hf dir> --data arithmetic.jsonl --steps 5

Rows are `{"prompt", "answer"}`. Each step samples a group of completions per prompt with the
live policy (tune.models' `generate`), scores them with tune.train's rewards (the last integer
equals the answer; `Answer: <n>` format), turns the rewards into group-normalised advantages and
takes one clipped policy-gradient step (tune.train's GRPO step). Prints one JSON line per step.
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
from tune.train.steps.grpo import (
    PolicyLossSettings,
    RolloutBatch,
    policy_backward,
    rollout_advantages,
    rollout_tensors,
    sampling_seed,
)
from tune.train.steps.rewards import RewardInputs, answer_format, exact_answer

REWARDS = ((exact_answer, 1.0), (answer_format, 0.1))  # (function, weight)


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
    stops = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    scheduler = constant_schedule_with_warmup(optimizer, warmup_steps=0)
    accumulator = GradientAccumulator()  # the unit is the completion token
    settings = PolicyLossSettings(clip_eps=0.2)

    batches = iter(loader)
    for step in range(args.steps):
        batch = next(batches)
        prompts = [row[mask.bool()].tolist() for row, mask in zip(batch["tokens"],
                   batch["attention_mask"], strict=True)]  # fmt: skip
        repeated = [prompt for prompt in prompts for _ in range(args.group)]
        generator = torch.Generator().manual_seed(sampling_seed(args.seed, step, rank=0))
        with torch.no_grad():
            sampled = generate(model, repeated, max_new_tokens=args.max_new_tokens,
                               temperature=1.0, stop_tokens=stops, pad_id=tokenizer.pad_id,
                               generator=generator)  # fmt: skip
        completions = [_cut_at_stop(row, stops) for row in sampled]
        inputs = RewardInputs(
            prompts=[tokenizer.decode(q) for q in prompts for _ in range(args.group)],
            completions=[tokenizer.decode(c, skip_special_tokens=True) for c in completions],
            answers=[a for a in batch["answers"] for _ in range(args.group)],
            completion_tokens=[len(c) for c in completions],
        )
        rewards = sum(w * torch.tensor(fn(inputs), dtype=torch.float32) for fn, w in REWARDS)
        tokens, labels = rollout_tensors(repeated, completions, tokenizer.pad_id)
        advantages = rollout_advantages(rewards, args.group, scale_by_std=True)
        update = policy_backward(
            model, RolloutBatch(tokens, labels, advantages), settings=settings,
            micro_batch_size=args.micro_batch, accumulator=accumulator,
        )  # fmt: skip
        clip_grad_norm(list(model.parameters()), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        record = {"step": step + 1, "loss": update["loss"], "reward": float(rewards.mean())}
        print(json.dumps(record), flush=True)


def _cut_at_stop(tokens: list[int], stops: list[int]) -> list[int]:
    """``tokens`` up to and including the first stop token."""
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[: i + 1]
    return tokens


if __name__ == "__main__":
    main()
