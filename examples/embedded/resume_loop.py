"""Save and resume a plain PyTorch loop with tune-checkpoint alone.

    python examples/embedded/resume_loop.py --output-dir /tmp/run --stop-at 5  # "crashes"
    python examples/embedded/resume_loop.py --output-dir /tmp/run  # goes on from step 4 to 8

Every second step is committed atomically. The rerun checks that the step belongs to this run
(same seed, data and script; the length may change), restores weights, optimizer, schedule, RNG
and data position, and prints the losses an uninterrupted run prints.
"""

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from tune.checkpoint import (
    CheckpointManager,
    ResumePolicy,
    claim_run_directory,
    fingerprint_inputs,
    resume_run,
    save_training_state,
)

POLICY = ResumePolicy(invariant_keys=("seed", "data"), free_keys=("steps",))


class Stream:
    """Batches that depend only on their position, so the position is all a resume needs."""

    position = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.position)
        self.position += 1
        x = torch.randn(16, 8, generator=g)  # [B, D]
        return x, x.sum(-1, keepdim=True).sin()  # [B, 1]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--stop-at", type=int, default=None, help="stop after this step (a crash)")
    args = p.parse_args()
    config: dict = {"seed": 0, "data": "synthetic-sin", "steps": 8, "lr": 1e-2}
    torch.manual_seed(config["seed"])
    model = nn.Sequential(nn.Linear(8, 32), nn.Dropout(0.1), nn.GELU(), nn.Linear(32, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + 0.1 * s))
    stream = Stream()
    with claim_run_directory(args.output_dir, {"script": __file__}, command=sys.argv):
        manager = CheckpointManager(args.output_dir / "checkpoints", keep_last_n=2)
        inputs = fingerprint_inputs({"script": __file__})  # an edited script is another run
        step, extra = resume_run(manager, "auto", config, policy=POLICY, inputs=inputs, model=model,
                                 optimizer=opt, scheduler=sched, loader=stream)  # fmt: skip
        while step < (args.stop_at or config["steps"]):
            x, y = stream.next()
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            print(f"step {step} loss {loss.item():.8f}")
            if step % 2 == 0:
                save_training_state(manager, step, model=model, optimizer=opt, scheduler=sched,
                                    data_state=stream.state_dict(), extra=extra, config=config)  # fmt: skip


if __name__ == "__main__":
    main()
