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
from tune.recipes.common.run_directory import model_inputs
from tune.recipes.config.redaction import redact

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


# Keys that may change on resume without a word: they change what is logged, saved or evaluated,
# or how the work is spread over ranks (DCP reshards), never the training trajectory.
RESUME_FREE_KEYS = (
    "logging",
    "eval",
    "distributed",
    "device",
    "allow_imports",
    "checkpointing.output_dir",
    "checkpointing.resume",
    "checkpointing.resume_overrides",
    "checkpointing.keep_last_n",
    "checkpointing.save_every_n_steps",
    "checkpointing.save_merged",
    "checkpointing.save_adapter",
    "checkpointing.save_quantized",
)
OVERRIDE_KEY = "checkpointing.resume_overrides"


class ResumeMismatchError(ValueError):
    """A checkpoint belongs to a run with different data, tokenizer, model or method."""


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every non-mapping value of a config tree."""
    if not isinstance(tree, Mapping):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for name, value in tree.items():
        out.update(_leaves(value, f"{prefix}{name}."))
    return out


def _covered(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def changed_settings(
    saved: Mapping[str, Any], current: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """Every setting that differs between a checkpoint's config and this run's (free keys aside).

    Keys absent from the saved config (added to the schema since it was written) are skipped.
    """
    before, now = _leaves(saved), _leaves(current)
    return {
        key: (before[key], now.get(key))
        for key in sorted(before)
        if before[key] != now.get(key) and not _covered(key, RESUME_FREE_KEYS)
    }


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
) -> dict[str, tuple[Any, Any]]:
    """The settings that changed since ``step_dir`` was written, after refusing forbidden changes.

    A key of ``RESUME_INVARIANT_KEYS`` (or of a recipe's ``extra_keys``: its teacher, loss,
    rollout shape, ...) may never change: the data stream or the weights would differ. Any
    other change (``training.optimizer.lr``, ``training.max_steps``, ...) must be listed in
    ``checkpointing.resume_overrides``; it is then applied and returned.

    Raises:
        ResumeMismatchError: naming each key, with its saved and current values.
    """
    if saved is None:
        raise ResumeMismatchError(
            f"{step_dir}: no saved config; cannot check it belongs to this run"
        )
    invariant = (*RESUME_INVARIANT_KEYS, *extra_keys)
    changed = [
        f"{key}: saved {_lookup(saved, key)!r}, now {_lookup(current, key)!r}"
        for key in invariant
        if _lookup(saved, key) != _lookup(current, key)
    ]
    if changed:
        raise ResumeMismatchError(
            f"{step_dir} was written by a run with other settings ({'; '.join(changed)}); "
            "use another checkpointing.output_dir, or checkpointing.resume=never to start over there"
        )
    allowed = list(_lookup(current, OVERRIDE_KEY) or [])
    changes = {
        k: v for k, v in changed_settings(saved, current).items() if not _covered(k, invariant)
    }
    refused = {k: v for k, v in changes.items() if not _covered(k, allowed)}
    if refused:
        listed = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in refused.items())
        raise ResumeMismatchError(
            f"{step_dir} was saved with other settings ({listed}). Resuming would silently keep "
            f"the saved ones. To apply the new values, pass {OVERRIDE_KEY}=[{','.join(refused)}]; "
            "or restore them, or use another checkpointing.output_dir"
        )
    for key, (before, after) in changes.items():
        logger.warning("resume: %s changed from %r to %r (listed in %s)", key, before, after,
                       OVERRIDE_KEY)  # fmt: skip
    return changes


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
        CorruptCheckpointError: committed steps exist under ``auto`` but none is valid.
        ResumeMismatchError: the step was written with other settings or other input files.
    """
    config = redact(config)  # checkpoints keep redacted configs: compare like with like
    if resume == "never":
        return None
    if resume == "auto" and manager.latest() is None:
        committed = manager.step_dirs()
        if not committed:
            return None
        # Committed steps exist but none is valid: starting fresh would silently retrain (and
        # the next save would replace them). Name what is wrong with the newest instead.
        try:
            manager.resolve(committed[-1][1])
        except CorruptCheckpointError as err:
            raise CorruptCheckpointError(
                f"{err}; no valid step is left in {manager.root} to resume from. Restore the "
                "file, or set checkpointing.resume=never to start over (the steps are kept aside)"
            ) from err
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


def _hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def _apply_current_hyperparameters(
    optimizer: torch.optim.Optimizer, scheduler: Any, groups: list[dict[str, Any]], base_lrs: Any
) -> None:
    """Put this run's optimizer settings and base learning rates back after a state load.

    Loading a state dict restores the saved run's ``lr``, ``weight_decay``, betas and the
    scheduler's ``base_lrs``. A changed value reaches this point only when it was listed in
    ``checkpointing.resume_overrides``, so the current one is the one to use.
    """
    for group, fresh in zip(optimizer.param_groups, groups, strict=True):
        for key, value in fresh.items():
            if key not in ("lr", "initial_lr"):
                group[key] = value
    if base_lrs is None or list(scheduler.base_lrs) == list(base_lrs):
        return
    scheduler.base_lrs = list(base_lrs)
    lambdas = getattr(scheduler, "lr_lambdas", None)
    for i, group in enumerate(optimizer.param_groups):
        group["initial_lr"] = base_lrs[i]
        factor = lambdas[i](scheduler.last_epoch) if lambdas is not None else 1.0
        group["lr"] = base_lrs[i] * factor
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


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
    """Commit step ``step``: weights (trainable only for adapters), optimizer, scheduler, data, RNG.

    ``config`` is saved with its secrets redacted (``tune.recipes.config.redact``).
    """
    config = redact(config)
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
    groups, base_lrs = _hyperparameters(optimizer), getattr(scheduler, "base_lrs", None)
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
    _apply_current_hyperparameters(optimizer, scheduler, groups, base_lrs)
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
            ``tokenizer.path``), fingerprinted into ``extra["inputs"]`` with every model,
            adapter and tokenizer directory the config names.
        model, optimizer, scheduler, trainable_only, distributed: as for ``load_training_state``.
        guard: the run's ``NonFiniteGuard`` (its counters are restored).
        loader: the training loader (its position is restored).
        extra: the recipe's initial extra state (counters saved with every step).

    Returns:
        ``(step, extra)``: 0 and the initial extra for a fresh run, else the saved ones.
    """
    # The weights a run starts from (base, teacher, reference, adapter) are inputs too.
    inputs = fingerprint_inputs({**dict(model_inputs(config)), **sources})
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
    changes = changed_settings(state.config or {}, redact(config))
    if changes:  # allowed by find_resume_step; recorded in every later checkpoint
        history = list(restored.get("resume_overrides", []))
        history.append({"step": state.step, "changed": {k: list(v) for k, v in changes.items()}})
        restored["resume_overrides"] = history
    guard.load_state_dict(restored.get("guard", guard.state_dict()))
    loader.load_state_dict(state.data_state)
    return state.step, restored
