"""Knowledge distillation into a LoRA student in a plain PyTorch loop, from tune's libraries alone.

    pip install tune-models tune-peft tune-data tune-train tune-checkpoint
    python examples/embedded/distill_loop.py --student <hf dir> --teacher <hf dir> \
        --data instructions.jsonl --steps 10

Rows are `{"instruction", "input", "output"}`; the loss on the answer tokens is
`ce_weight * cross-entropy + (1 - ce_weight) * KL(teacher || student)` (tune.train's
distillation step), normalised over every answer token of the optimizer step. Student and
teacher share the tokenizer. Each step prints `{"step": n, "loss": ..., "kl": ...}`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from tune.checkpoint import load_hf_checkpoint
from tune.data import InstructionBuilder, StreamingLoader, Tokenizer, load_source
from tune.models import model_from_checkpoint_dir
from tune.peft import LoraConfig, apply_lora
from tune.train import GradientAccumulator, clip_grad_norm, constant_schedule_with_warmup
from tune.train.steps.distillation import DistillLossSettings, distill_micro_batch_loss

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load(directory: Path) -> nn.Module:
    """A tune model with the weights of an HF directory (built on meta, filled in place)."""
    ckpt = model_from_checkpoint_dir(directory, device="meta", dtype=torch.float32)
    load_hf_checkpoint(ckpt.model, directory, key_map=ckpt.hf_to_native_key,
                       dtype=torch.float32, device=torch.device("cpu"))  # fmt: skip
    ckpt.model.init_buffers(torch.device("cpu"))
    return ckpt.model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--data", required=True, help="a JSONL file of instruction rows")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ce-weight", type=float, default=0.5)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--accumulate", type=int, default=2)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    student = load(args.student)
    apply_lora(student, LoraConfig(r=8, alpha=16, targets=TARGETS, exclude=["output"]))
    student.train()
    teacher = load(args.teacher).requires_grad_(False).eval()

    tokenizer = Tokenizer.from_dir(args.student)
    rows, _ = load_source(args.data)
    loader = StreamingLoader(
        rows, InstructionBuilder(tokenizer), batch_size=args.micro_batch,
        max_seq_len=args.max_seq_len, seed=args.seed, shuffle=True, epochs=None, drop_last=True,
    )  # fmt: skip
    settings = DistillLossSettings(kind="forward", ce_weight=args.ce_weight, chunk_size=512)

    trainable = [q for q in student.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    scheduler = constant_schedule_with_warmup(optimizer, warmup_steps=0)
    accumulator = GradientAccumulator()  # the unit is the answer token
    batches = iter(loader)
    for step in range(1, args.steps + 1):
        micro_batches = [next(batches) for _ in range(args.accumulate)]
        tokens = accumulator.start_step([(mb["labels"] != -100).sum() for mb in micro_batches])
        kl_sum = 0.0
        for mb in micro_batches:
            loss = distill_micro_batch_loss(student, teacher, mb, settings)
            accumulator.scale(loss.total).backward()
            kl_sum += float(loss.kl_sum)
        metrics = accumulator.finish_step()
        clip_grad_norm(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        kl = kl_sum / max(int(tokens), 1)
        print(json.dumps({"step": step, "loss": metrics["loss"], "kl": kl}), flush=True)


if __name__ == "__main__":
    main()
