"""What every peer runner shares (stdlib + torch only: it is imported from three environments).

A runner trains ``warmup + steps`` steps on the fixture's saved batches and writes one JSON
result: per-step losses and step times, the digests of the batches it trained on (computed from
the tensors it fed the model), and its peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

import torch

LORA_TARGETS_HF = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_R, LORA_ALPHA = 8, 16.0
LR, BETAS, EPS, WEIGHT_DECAY = 2e-4, (0.9, 0.999), 1e-8, 0.0
MAX_GRAD_NORM = 1.0


def set_threads(threads: int = 1) -> None:
    """``threads`` intra-op threads and one inter-op thread (the runner's whole process)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set once in this process
        torch.set_num_interop_threads(1)


def runner_args(description: str) -> argparse.Namespace:
    """The command line every runner takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--fixture", type=Path, required=True, help="fixture directory")
    parser.add_argument("--method", choices=["lora", "full"], required=True)
    parser.add_argument("--packed", action="store_true")
    parser.add_argument("--steps", type=int, required=True, help="warm-up + measured steps")
    parser.add_argument("--work-dir", type=Path, required=True, help="scratch + result.json")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    parser.add_argument("--flat", action="store_true",
                        help="padding-free: each padded batch as one row of its real tokens")  # fmt: skip
    return parser.parse_args()


def load_batches(fixture: Path, packed: bool, steps: int) -> dict[str, Any]:
    """The saved batches (first ``steps``), their real-token counts and digests."""
    name = "packed" if packed else "unpacked"
    saved = torch.load(fixture / f"batches_{name}.pt", weights_only=True)
    if len(saved["batches"]) < steps:
        raise ValueError(f"{fixture}: {len(saved['batches'])} saved batches < {steps} steps")
    return {k: v[:steps] if isinstance(v, list) else v for k, v in saved.items()}


def batch_digest(batch: dict[str, torch.Tensor]) -> str:
    """sha256 (16 hex digits) over the tokens and labels of a batch: what a step trained on."""
    h = hashlib.sha256()
    for key in ("tokens", "labels"):
        h.update(batch[key].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def flatten_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A padded batch as one [1, real tokens] row: the rows' real tokens end to end, positions
    restarting per row (the layout of transformers' ``DataCollatorWithFlattening``). The labels
    are already aligned with the tokens, so each row keeps its own targets."""
    keep = batch["attention_mask"].bool()
    return {
        "tokens": batch["tokens"][keep].unsqueeze(0),
        "labels": batch["labels"][keep].unsqueeze(0),
        "positions": batch["positions"][keep].unsqueeze(0),
    }


def block_causal_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """[B, T, T] bool: query i sees key j when both are in the same document and j <= i."""
    same = document_ids.unsqueeze(2) == document_ids.unsqueeze(1)
    t = document_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    return same & causal


def peak_rss_bytes() -> int:
    """The process's peak resident set size since it started."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def write_result(
    work_dir: Path,
    *,
    library: str,
    version: str,
    losses: list[float],
    step_times: list[float],
    digests: list[str],
    notes: str = "",
) -> None:
    """Write ``result.json`` (one record per run) into ``work_dir``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "library": library,
        "version": version,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "losses": losses,
        "step_times_s": step_times,
        "digests": digests,
        "peak_rss_bytes": peak_rss_bytes(),
        "notes": notes,
    }
    (work_dir / "result.json").write_text(json.dumps(record, indent=1))


def trainer_arguments(args: Any) -> dict[str, Any]:
    """The ``TrainingArguments`` (or TRL ``SFTConfig``) settings every Trainer-based runner shares:
    the fixture's optimizer and constant LR, sequential sampling over the saved batches."""
    return {
        "output_dir": str(args.work_dir / "trainer"),
        "per_device_train_batch_size": 1,
        "max_steps": args.steps,
        "learning_rate": LR,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "optim": "adamw_torch",
        "adam_beta1": BETAS[0],
        "adam_beta2": BETAS[1],
        "adam_epsilon": EPS,
        "weight_decay": WEIGHT_DECAY,
        "max_grad_norm": MAX_GRAD_NORM,
        "train_sampling_strategy": "sequential",
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "logging_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": True,
        "seed": 0,
    }
