"""Save and restore everything a run needs to continue bit-exactly.

One process: plain state dicts (trainable weights as safetensors, optimizer/scheduler with
``torch.save``). Several processes: model and optimizer as DCP shards written by every rank.
Either way ``CheckpointManager`` commits the step atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from tune.checkpoint import (
    CheckpointManager,
    CorruptCheckpointError,
    NoCheckpointFoundError,
    TrainingState,
)
from tune.recipes.common.input_fingerprints import (
    Fingerprints,
    changed_inputs,
    fingerprint_inputs,
)

logger = logging.getLogger(__name__)

# Config keys whose change makes a checkpoint unusable for resuming (the data stream or the
# weights it refers to would differ).
RESUME_INVARIANT_KEYS = (
    "model.checkpoint_dir",
    "tokenizer.path",
    "data.source",
    "data.format",
    "data.max_seq_len",
    "data.packing",
    "data.seed",
    "training.method",
    "training.global_batch_size",
    "training.seed",
)


class ResumeMismatchError(ValueError):
    """A checkpoint belongs to a run with different data, tokenizer, model or method."""


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def check_resume_compatible(
    saved: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    step_dir: Path,
    extra_keys: Sequence[str] = (),
) -> None:
    """Refuse to resume from ``step_dir`` when a key of ``RESUME_INVARIANT_KEYS`` (or of a
    recipe's ``extra_keys``: its teacher, loss, rollout shape, ...) changed, naming each."""
    if saved is None:
        raise ResumeMismatchError(
            f"{step_dir}: no saved config; cannot check it belongs to this run"
        )
    changed = [
        f"{key}: saved {_lookup(saved, key)!r}, now {_lookup(current, key)!r}"
        for key in (*RESUME_INVARIANT_KEYS, *extra_keys)
        if _lookup(saved, key) != _lookup(current, key)
    ]
    if changed:
        raise ResumeMismatchError(
            f"{step_dir} was written by a run with other settings ({'; '.join(changed)}); "
            "use another checkpointing.output_dir, or checkpointing.resume=never to start over there"
        )


def find_resume_step(
    manager: CheckpointManager,
    resume: str,
    config: Mapping[str, Any],
    inputs: Fingerprints,
    extra_keys: Sequence[str] = (),
) -> Path | None:
    """The committed step to resume from, after checking it belongs to this run; None: start fresh.

    Args:
        manager: the run's checkpoint manager.
        resume: ``checkpointing.resume``: ``"auto"`` (latest step if any), ``"never"``, or a path.
        config: this run's resolved (redacted) config.
        inputs: this run's input fingerprints (``fingerprint_inputs``), saved as
            ``extra["inputs"]`` with every step.
        extra_keys: the recipe's own config keys that must not change (beyond
            ``RESUME_INVARIANT_KEYS``).

    Raises:
        NoCheckpointFoundError: an explicit resume path (or ``auto`` over a directory holding
            only uncommitted steps) has no committed step.
        ResumeMismatchError: the step was written with other settings or other input files.
    """
    if resume == "never" or (resume == "auto" and manager.latest() is None):
        return None
    try:
        target = manager.resolve(None if resume == "auto" else resume)
    except NoCheckpointFoundError as err:
        raise NoCheckpointFoundError(
            f"checkpointing.resume={resume!r}: {err} (resume=auto starts fresh only when "
            "the output directory has no checkpoints)"
        ) from err
    saved = manager.load(target, restore_rng=False, load_model_state=False)
    check_resume_compatible(saved.config, config, target, extra_keys)
    saved_inputs = (saved.extra or {}).get("inputs")
    if saved_inputs is None:
        logger.warning("%s keeps no input fingerprints: data/tokenizer files not compared", target)
    elif changed := changed_inputs(saved_inputs, inputs):
        raise ResumeMismatchError(
            f"{target} was written while reading other files: {'; '.join(changed)}; "
            "resuming would draw other samples or token ids. Restore the files, or use another "
            "checkpointing.output_dir (or checkpointing.resume=never) to start over"
        )
    return target


def _options(trainable_only: bool) -> StateDictOptions:
    # Adapter runs save only trainable tensors; loading them must not report the frozen base
    # weights (already loaded from the base checkpoint) as missing.
    return StateDictOptions(ignore_frozen_params=trainable_only, strict=not trainable_only)


def save_training_state(
    manager: CheckpointManager,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data_state: Any,
    extra: Mapping[str, Any],
    config: Mapping[str, Any],
    trainable_only: bool,
    distributed: bool,
) -> Path:
    """Commit step ``step``: weights (trainable only for adapters), optimizer, scheduler, data, RNG."""
    if distributed:
        model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(trainable_only))
        return manager.save(
            step,
            scheduler_state=scheduler.state_dict(),
            data_state=data_state,
            extra=dict(extra),
            config=dict(config),
            sharded_state={"model": model_sd, "optimizer": optim_sd},
        )
    keep = {n for n, p in model.named_parameters() if p.requires_grad} if trainable_only else None
    model_state = {
        k: v.detach().clone() for k, v in model.state_dict().items() if keep is None or k in keep
    }
    return manager.save(
        step,
        model_state=model_state,
        optimizer_state=optimizer.state_dict(),
        scheduler_state=scheduler.state_dict(),
        data_state=data_state,
        extra=dict(extra),
        config=dict(config),
    )


def load_training_state(
    manager: CheckpointManager,
    path: str | Path | None,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainable_only: bool,
    distributed: bool,
) -> TrainingState:
    """Restore model, optimizer and scheduler from a committed step (RNG is restored too)."""
    if distributed:
        model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(trainable_only))
        sharded: dict[str, Any] = {"model": model_sd, "optimizer": optim_sd}
        state = manager.load(path, sharded_state=sharded, load_model_state=False)
        set_state_dict(
            model,
            optimizer,
            model_state_dict=sharded["model"],
            optim_state_dict=sharded["optimizer"],
            options=_options(trainable_only),
        )
    else:
        state = manager.load(path)
        if state.model_state is None or state.optimizer_state is None:
            missing = "model/ weights" if state.model_state is None else "optimizer state"
            raise CorruptCheckpointError(f"{state.path}: no {missing} saved in this step")
        _load_model_state(model, state.model_state, trainable_only, state.path)
        optimizer.load_state_dict(state.optimizer_state)
    scheduler.load_state_dict(state.scheduler_state)
    logger.info("resumed from %s (step %d)", state.path, state.step)
    return state


def _load_model_state(
    model: nn.Module, saved: Mapping[str, torch.Tensor], trainable_only: bool, where: Path
) -> None:
    expected: Sequence[str] = (
        [n for n, p in model.named_parameters() if p.requires_grad]
        if trainable_only
        else list(model.state_dict())
    )
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{where}/model: weights do not match this model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        params = dict(model.state_dict(keep_vars=True))
        for name in expected:
            target = params[name]
            if target.shape != saved[name].shape:
                raise ValueError(
                    f"{where}/model: {name} has shape {tuple(saved[name].shape)}, "
                    f"the model expects {tuple(target.shape)}"
                )
            target.copy_(saved[name])


def resume_run(
    manager: CheckpointManager,
    resume: str,
    config: Mapping[str, Any],
    *,
    sources: Mapping[str, str | Path | None],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    guard: Any,
    loader: Any,
    trainable_only: bool,
    distributed: bool,
    extra: Mapping[str, Any],
    extra_keys: Sequence[str] = (),
) -> tuple[int, dict[str, Any]]:
    """Fingerprint the inputs, then continue from the resume step if there is one.

    Args:
        manager, resume, config, extra_keys: as for ``find_resume_step``.
        sources: config key -> the local file/directory it names (``data.source``,
            ``tokenizer.path``), fingerprinted into ``extra["inputs"]``.
        model, optimizer, scheduler, trainable_only, distributed: as for ``load_training_state``.
        guard: the run's ``NonFiniteGuard`` (its counters are restored).
        loader: the training loader (its position is restored).
        extra: the recipe's initial extra state (counters saved with every step).

    Returns:
        ``(step, extra)``: 0 and the initial extra for a fresh run, else the saved ones.
    """
    inputs = fingerprint_inputs(sources)
    target = find_resume_step(manager, resume, config, inputs, extra_keys)
    if target is None:
        return 0, {**extra, "inputs": inputs}
    state = load_training_state(
        manager,
        target,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        trainable_only=trainable_only,
        distributed=distributed,
    )
    restored = {**extra, **(state.extra or {}), "inputs": inputs}
    guard.load_state_dict(restored.get("guard", guard.state_dict()))
    loader.load_state_dict(state.data_state)
    return state.step, restored
