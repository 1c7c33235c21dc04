"""The pieces together: a tiny LM trained with fused CE, accumulation, clipping, a schedule and
the guard learns (its loss goes down) and logs what happened."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from tune.train import (
    GradientAccumulator,
    JsonlLogger,
    NonFiniteGuard,
    ThroughputMeter,
    clip_grad_norm,
    cosine_schedule_with_warmup,
    count_trained_tokens,
    fused_linear_cross_entropy,
)


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 48, dim: int = 32) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.output = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok_embeddings(tokens)
        return self.norm(x + self.mlp(x))  # hidden states (B, T, D)


def test_tiny_lm_learns_a_bigram_task_and_logs_each_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    sched = cosine_schedule_with_warmup(opt, warmup_steps=3, total_steps=40, min_lr_ratio=0.1)
    acc, guard = GradientAccumulator(), NonFiniteGuard("skip", max_skipped=2)
    meter, log = ThroughputMeter(), JsonlLogger(tmp_path / "metrics.jsonl")
    # target: next token = (token * 5 + 1) % 48; micro-batches of different lengths
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(40):
        micro = []
        for length in (5, 17, 9):
            tokens = torch.randint(0, 48, (1, length), generator=g)
            labels = (tokens * 5 + 1) % 48
            labels[:, :2] = -100
            micro.append((tokens, labels))
        meter.start()
        acc.start_step([count_trained_tokens(lbl) for _, lbl in micro])
        for tokens, labels in micro:
            out = fused_linear_cross_entropy(
                model(tokens), model.output.weight, labels, chunk_size=8
            )
            acc.scale(out).backward()
        metrics = acc.finish_step()
        norm = clip_grad_norm(model.parameters(), max_norm=1.0)
        guard.step(opt, step=step, loss=metrics["loss"], grad_norm=norm, scheduler=sched)
        metrics.update(grad_norm=norm, lr=sched.get_last_lr()[0], **guard.metrics())
        metrics.update(meter.stop(sum(t.numel() for t, _ in micro)))
        log.log(metrics, step=step)
        losses.append(metrics["loss"])
    log.close()
    assert losses[0] > math.log(48) * 0.8  # starts near chance (ln 48 = 3.87)
    assert sum(losses[-5:]) / 5 < 0.3 * losses[0]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 40
    assert records[-1]["skipped_steps"] == 0
    assert records[0]["num_tokens"] == 3 + 15 + 7
    assert records[-1]["lr"] < records[5]["lr"]
    assert records[-1]["tokens_per_s"] > 0
