"""The recipes' resume policy over ``tune.checkpoint.resume``: which keys may change, redaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tune import checkpoint
from tune.checkpoint import CheckpointManager, ResumePolicy
from tune.recipes.common.run_directory import model_inputs
from tune.train.loggers.redaction import redact_secrets

# Config keys whose change makes a checkpoint unusable for resuming (the data stream or the
# weights it refers to would differ).
RESUME_INVARIANT_KEYS = (
    "model.checkpoint_dir", "tokenizer.path", "data.source", "data.sources", "data.format",
    "data.max_seq_len", "data.packing", "data.seed", "training.method",
    "training.global_batch_size", "training.seed",
)  # fmt: skip
# Keys that may change on resume without a word: they change what is logged, saved or evaluated,
# or how the work is spread over ranks (DCP reshards), never the training trajectory.
RESUME_FREE_KEYS = (
    "logging", "eval", "distributed", "device", "allow_imports", "checkpointing.output_dir",
    "checkpointing.resume", "checkpointing.keep_last_n", "checkpointing.save_every_n_steps",
    "checkpointing.save_merged", "checkpointing.save_adapter", "checkpointing.save_quantized",
    "checkpointing.save_gguf",
)  # fmt: skip
OVERRIDE_KEY = "checkpointing.resume_overrides"
POLICY = ResumePolicy(
    RESUME_INVARIANT_KEYS, RESUME_FREE_KEYS, OVERRIDE_KEY, resume_key="checkpointing.resume",
    start_over="use another checkpointing.output_dir, or checkpointing.resume=never to start over",
)  # fmt: skip


def resume_run(
    manager: CheckpointManager,
    resume: str,
    config: Mapping[str, Any],
    *,
    sources: Mapping[str, str | Path | None],
    guard: Any,
    extra_keys: Sequence[str] = (),
    **state: Any,
) -> tuple[int, dict[str, Any]]:
    """``tune.checkpoint.resume_run`` (``state``: its keyword arguments) for a recipe config.

    Args:
        sources: config key -> local path (``data.source``), fingerprinted with every model,
            adapter and tokenizer directory the config names.
        guard: the run's ``NonFiniteGuard`` (its counters are restored).
        extra_keys: the recipe's own keys that must not change (teacher, loss, rollout shape).
    """
    inputs = checkpoint.fingerprint_inputs(
        {**dict(model_inputs(config)), **sources},
        select={"tokenizer.path": checkpoint.TOKENIZER_FILES},
    )
    policy = replace(POLICY, invariant_keys=(*RESUME_INVARIANT_KEYS, *extra_keys))
    step, extra = checkpoint.resume_run(
        manager, resume, redact_secrets(config), policy=policy, inputs=inputs, **state
    )
    guard.load_state_dict(extra.get("guard", guard.state_dict()))
    return step, extra


def save_training_state(
    manager: CheckpointManager, step: int, *, config: Mapping[str, Any], **state: Any
) -> Path:
    """``tune.checkpoint.save_training_state`` with the config's secrets redacted."""
    return checkpoint.save_training_state(manager, step, config=redact_secrets(config), **state)
