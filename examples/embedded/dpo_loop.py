"""DPO with LoRA in a plain PyTorch loop, from tune's libraries alone (no tune-recipes).

    pip install tune-models tune-peft tune-data tune-train tune-checkpoint
    python examples/embedded/dpo_loop.py --checkpoint <hf dir> --data pairs.jsonl --steps 10

Rows are `{"prompt", "chosen", "rejected"}`. The reference model is the policy with its LoRA
adapters switched off (the base), handed to tune.train's preference step as a callable. Each
optimizer step prints `{"step": n, "loss": ...}`; the loop is yours to change (another loss from
`tune.train.PreferenceObjective`, a frozen copy as the reference, your own logging).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from tune.checkpoint import load_hf_checkpoint, save_peft_adapter
from tune.data import PreferenceBuilder, StreamingLoader, Tokenizer, load_source
from tune.models import model_from_checkpoint_dir
from tune.peft import LoraConfig, apply_lora, disable_adapters, export_peft_adapter
from tune.train import GradientAccumulator, clip_grad_norm, constant_schedule_with_warmup
from tune.train.steps.preference import (
    PreferenceObjective,
    batch_logprobs,
    micro_batch_preference,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="an HF checkpoint directory")
    p.add_argument("--data", required=True, help="a JSONL file of preference pairs")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--micro-batch", type=int, default=4, help="pairs per forward")
    p.add_argument("--accumulate", type=int, default=2, help="micro-batches per step")
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", type=Path, default=None, help="write the PEFT adapter here")
    args = p.parse_args()

    torch.manual_seed(args.seed)  # the LoRA A matrices are drawn from it
    ckpt = model_from_checkpoint_dir(args.checkpoint, device="meta", dtype=torch.float32)
    load_hf_checkpoint(ckpt.model, args.checkpoint, key_map=ckpt.hf_to_native_key,
                       dtype=torch.float32, device=torch.device("cpu"))  # fmt: skip
    model = ckpt.model
    model.init_buffers(torch.device("cpu"))
    apply_lora(model, LoraConfig(r=8, alpha=16, targets=TARGETS, exclude=["output"]))
    model.train()

    tokenizer = Tokenizer.from_dir(args.checkpoint)
    rows, _ = load_source(args.data)
    loader = StreamingLoader(
        rows, PreferenceBuilder(tokenizer), batch_size=args.micro_batch,
        max_seq_len=args.max_seq_len, seed=args.seed, shuffle=True, epochs=None, drop_last=True,
    )  # fmt: skip

    objective = PreferenceObjective("dpo", beta=args.beta)

    def reference(batch: Mapping[str, Tensor]) -> Tensor:  # the base: adapters off
        with disable_adapters(model):
            return batch_logprobs(model, batch, average=objective.average, fused=True)

    trainable = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    scheduler = constant_schedule_with_warmup(optimizer, warmup_steps=0)
    accumulator = GradientAccumulator()  # the unit is the pair: each step averages its pairs
    batches = iter(loader)
    for step in range(1, args.steps + 1):
        micro_batches = [next(batches) for _ in range(args.accumulate)]
        accumulator.start_step([mb["tokens"].shape[0] // 2 for mb in micro_batches])
        for mb in micro_batches:  # chosen rows first, then the rejected ones
            result = micro_batch_preference(model, mb, objective, reference=reference, fused=True)
            accumulator.scale(result.losses.sum()).backward()
        metrics = accumulator.finish_step()
        clip_grad_norm(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        print(json.dumps({"step": step, "loss": metrics["loss"]}), flush=True)

    if args.output_dir is not None:
        tensors, config = export_peft_adapter(
            model, key_map=ckpt.native_to_hf_key, base_model_name_or_path=str(args.checkpoint)
        )
        save_peft_adapter(args.output_dir / "adapter", tensors, config, prefix="")


if __name__ == "__main__":
    main()
