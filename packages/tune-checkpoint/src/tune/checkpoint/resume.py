"""Resume a training run exactly, and only from a checkpoint that belongs to it.

``save_training_state`` commits a step (weights, optimizer, scheduler, data position, RNG, small
extra values, the config) through a ``CheckpointManager``. ``resume_run`` finds the step to go on
from, refuses it when its settings or input files differ from this run's (a ``ResumePolicy``
says which settings may change), and restores everything. In one process the state is plain
state dicts (weights as safetensors, the rest with ``torch.save``); with ``distributed=True``
model and optimizer are DCP shards written by every rank (FSDP2, TP), loadable at another world
size. Use::

    policy = ResumePolicy(invariant_keys=("data.path", "seed"), free_keys=("logging",),
                          override_key="resume_overrides")
    manager = CheckpointManager("runs/exp/checkpoints", keep_last_n=2)
    step, extra = resume_run(manager, "auto", config, policy=policy, model=model,
                             optimizer=optimizer, scheduler=scheduler, loader=loader,
                             inputs=fingerprint_inputs({"data.path": config["data"]["path"]}))
    while step < max_steps:
        ...  # one optimizer step
        step += 1
        save_training_state(manager, step, model=model, optimizer=optimizer,
                            scheduler=scheduler, data_state=loader.state_dict(),
                            extra=extra, config=config)

Configs are compared as ``tune.checkpoint.resume_policy`` describes. Pass the config with its
secrets already redacted: it is written to ``config.json`` and compared as is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tune.checkpoint.errors import (
    CorruptCheckpointError,
    NoCheckpointFoundError,
    ResumeMismatchError,
    StateDictMismatchError,
    first_keys,
)
from tune.checkpoint.fingerprints import Fingerprints, changed_inputs
from tune.checkpoint.resume_policy import ResumePolicy, changed_settings, check_resume_compatible
from tune.checkpoint.training_state import (
    MODEL_DIR,
    SHARDED_DIR,
    CheckpointManager,
    TrainingState,
)

if TYPE_CHECKING:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

logger = logging.getLogger(__name__)


def find_resume_step(
    manager: CheckpointManager,
    resume: str,
    config: Mapping[str, Any],
    policy: ResumePolicy,
    inputs: Fingerprints | None = None,
) -> Path | None:
    """The committed step to resume from, after checking it belongs to this run; None: start fresh.

    Args:
        manager: the run's checkpoint manager.
        resume: ``"auto"`` (the latest step under ``manager.root`` if any), ``"never"``, or a
            step directory / a directory of steps.
        config: this run's (redacted) config.
        policy: which settings may differ from the step's.
        inputs: this run's input fingerprints (``fingerprint_inputs``), compared with the step's
            ``extra["inputs"]``; None compares none.

    Raises:
        NoCheckpointFoundError: an explicit path holds no committed step.
        CorruptCheckpointError: committed steps exist under ``auto`` but none is valid.
        ResumeMismatchError: the step was written with other settings or other input files.
    """
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
                f"file, or {policy.start_over}"
            ) from err
        return None
    try:
        target = manager.resolve(None if resume == "auto" else resume)
    except NoCheckpointFoundError as err:
        raise NoCheckpointFoundError(
            f"{policy.resume_key}={resume!r}: {err} ({policy.resume_key}=auto starts fresh only "
            "when the output directory has no checkpoints)"
        ) from err
    saved = manager.load(target, restore_rng=False, load_model_state=False)
    check_resume_compatible(saved.config, config, target, policy)
    saved_inputs = (saved.extra or {}).get("inputs")
    if inputs is None:
        return target
    if saved_inputs is None:
        logger.warning("%s keeps no input fingerprints: input files not compared", target)
    elif changed := changed_inputs(saved_inputs, inputs):
        raise ResumeMismatchError(
            f"{target} was written while reading other files: {'; '.join(changed)}; resuming "
            f"would draw other samples or token ids. Restore the files, or {policy.start_over}"
        )
    return target


def _options(trainable_only: bool, flatten: bool = True) -> StateDictOptions:
    # Adapter runs save only trainable tensors; loading them must not report the frozen base
    # weights (already loaded from the base checkpoint) as missing. The optimizer state is
    # flattened to one key per parameter and value ("state.<fqn>.exp_avg",
    # "param_groups.<fqn>.lr"), so a rank that holds other parameters (another pipeline stage,
    # another expert shard) finds its own entries whatever layout saved the step.
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(
        ignore_frozen_params=trainable_only, strict=not trainable_only,
        flatten_optimizer_state_dict=flatten,
    )  # fmt: skip


def _flattened_optimizer(sharded_dir: Path) -> bool:
    """Whether a DCP step holds the flattened optimizer state (steps written before it was
    flattened hold one ``optimizer.param_groups`` list)."""
    from tune.checkpoint.dcp_safe_read import read_dcp_metadata

    keys = read_dcp_metadata(str(sharded_dir)).state_dict_metadata
    return "optimizer.param_groups" not in keys


def save_training_state(
    manager: CheckpointManager,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    data_state: Any = None,
    extra: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    trainable_only: bool = False,
    distributed: bool = False,
) -> Path:
    """Commit step ``step``: weights, optimizer, scheduler, data position, RNG, extra, config.

    Args:
        manager: where the step is committed (``manager.root/step_<step>``).
        step: the number of optimizer steps taken.
        model: the trained module (FSDP2/TP-sharded when ``distributed``).
        optimizer: its optimizer.
        scheduler: an LR scheduler (anything with ``state_dict()``), or None.
        data_state: this rank's data-loader position (``loader.state_dict()``).
        extra: small values saved with the step (counters; ``resume_run`` adds ``inputs``).
        config: this run's config, secrets already redacted (written as ``config.json``).
        trainable_only: save only parameters with ``requires_grad`` (adapter runs: the frozen
            base is reloaded from its own checkpoint).
        distributed: every rank calls; model and optimizer go to DCP shards.

    Returns:
        The committed step directory.
    """
    scheduler_state = None if scheduler is None else scheduler.state_dict()
    common: dict[str, Any] = dict(
        scheduler_state=scheduler_state,
        data_state=data_state,
        extra=None if extra is None else dict(extra),
        config=None if config is None else dict(config),
    )
    if distributed:  # DCP is imported only here: ~0.5 s that a single-device run never pays
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(trainable_only))
        return manager.save(
            step, sharded_state={"model": model_sd, "optimizer": optim_sd}, **common
        )
    keep = {n for n, p in model.named_parameters() if p.requires_grad} if trainable_only else None
    model_state = {
        k: v.detach().clone() for k, v in model.state_dict().items() if keep is None or k in keep
    }
    return manager.save(
        step, model_state=model_state, optimizer_state=optimizer.state_dict(), **common
    )


def _apply_current_hyperparameters(
    optimizer: torch.optim.Optimizer, scheduler: Any, groups: list[dict[str, Any]], base_lrs: Any
) -> None:
    """Put this run's optimizer settings and base learning rates back after a state load.

    Loading a state dict restores the saved run's ``lr``, ``weight_decay``, betas and the
    scheduler's ``base_lrs``. A changed value gets this far only when the resume policy accepted
    it, so the current one is the one to use.
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


def _load_model_state(
    model: nn.Module, saved: Mapping[str, torch.Tensor], trainable_only: bool, where: Path
) -> None:
    expected: Sequence[str] = (
        [n for n, p in model.named_parameters() if p.requires_grad]
        if trainable_only
        else list(model.state_dict())
    )
    missing, unexpected = set(expected) - set(saved), set(saved) - set(expected)
    if missing or unexpected:
        raise StateDictMismatchError(
            f"{where}/model: weights do not match this model: missing {first_keys(missing)}; "
            f"unexpected {first_keys(unexpected)}"
        )
    with torch.no_grad():
        params = dict(model.state_dict(keep_vars=True))
        for name in expected:
            target = params[name]
            if target.shape != saved[name].shape:
                raise StateDictMismatchError(
                    f"{where}/model: {name} has shape {tuple(saved[name].shape)}, "
                    f"the model expects {tuple(target.shape)}"
                )
            target.copy_(saved[name])


def load_training_state(
    manager: CheckpointManager,
    path: str | Path | None,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    trainable_only: bool = False,
    distributed: bool = False,
) -> TrainingState:
    """Restore model, optimizer, scheduler and this rank's RNG from a committed step.

    The optimizer's current hyperparameters (all but ``lr``) and the scheduler's current
    ``base_lrs`` are kept over the saved ones, so a setting changed on purpose takes effect.

    Args:
        manager: the run's checkpoint manager.
        path: a step directory, or None for the latest under ``manager.root``.
        model: the module to load into (FSDP2/TP-sharded when ``distributed``).
        optimizer: its optimizer.
        scheduler: the LR scheduler, or None.
        trainable_only: the step holds only parameters with ``requires_grad``.
        distributed: every rank calls; model and optimizer come from DCP shards.

    Returns:
        The loaded state (``data_state``, ``extra``, ``config``, ``step``).

    Raises:
        CorruptCheckpointError: the step holds no weights or optimizer state.
        StateDictMismatchError: saved weights' names or shapes differ from the model's.
    """
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    base_lrs = getattr(scheduler, "base_lrs", None)
    if not distributed:
        # A step written by several ranks holds DCP shards only; DCP reads them into one
        # process's plain model as well (no process group needed).
        step_dir = manager.resolve(path)
        distributed = not (step_dir / MODEL_DIR).is_dir() and (step_dir / SHARDED_DIR).is_dir()
        path = step_dir
    if distributed:
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        path = manager.resolve(path)
        options = _options(trainable_only, _flattened_optimizer(path / SHARDED_DIR))
        model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
        sharded: dict[str, Any] = {"model": model_sd, "optimizer": optim_sd}
        state = manager.load(path, sharded_state=sharded, load_model_state=False)
        set_state_dict(
            model,
            optimizer,
            model_state_dict=sharded["model"],
            optim_state_dict=sharded["optimizer"],
            options=options,
        )
    else:
        state = manager.load(path)
        if state.model_state is None or state.optimizer_state is None:
            missing = "model/ weights" if state.model_state is None else "optimizer state"
            raise CorruptCheckpointError(f"{state.path}: no {missing} saved in this step")
        _load_model_state(model, state.model_state, trainable_only, state.path)
        optimizer.load_state_dict(state.optimizer_state)
    if scheduler is not None:
        scheduler.load_state_dict(state.scheduler_state)
    _apply_current_hyperparameters(optimizer, scheduler, groups, base_lrs)
    logger.info("resumed from %s (step %d)", state.path, state.step)
    return state


def resume_run(
    manager: CheckpointManager,
    resume: str,
    config: Mapping[str, Any],
    *,
    policy: ResumePolicy,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    loader: Any = None,
    inputs: Fingerprints | None = None,
    extra: Mapping[str, Any] | None = None,
    trainable_only: bool = False,
    distributed: bool = False,
) -> tuple[int, dict[str, Any]]:
    """Continue from the resume step if there is one (checked by ``find_resume_step``).

    Args:
        manager: the run's checkpoint manager.
        resume: ``"auto"``, ``"never"`` or a path (see ``find_resume_step``).
        config: this run's (redacted) config.
        policy: which settings may differ from the step's.
        model: the module to restore (FSDP2/TP-sharded when ``distributed``).
        optimizer: its optimizer.
        scheduler: the LR scheduler, or None.
        loader: the training loader; ``loader.load_state_dict(data_state)`` restores its position.
        inputs: this run's input fingerprints, checked against the step's and kept in ``extra``.
        extra: the initial extra values of a fresh run (counters saved with every step).
        trainable_only: steps hold only parameters with ``requires_grad`` (adapters).
        distributed: every rank calls; model and optimizer are DCP shards.

    Returns:
        ``(step, extra)``: 0 and ``extra`` for a fresh run, else the saved ones. ``extra`` holds
        ``inputs`` (save it with every step) and, when the policy accepted changed settings,
        ``resume_overrides``: a list of ``{"step", "changed": {key: [saved, current]}}``.
    """
    initial = dict(extra or {})
    if inputs is not None:
        initial["inputs"] = inputs
    target = find_resume_step(manager, resume, config, policy, inputs)
    if target is None:
        return 0, initial
    state = load_training_state(
        manager,
        target,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        trainable_only=trainable_only,
        distributed=distributed,
    )
    restored = {**initial, **(state.extra or {})}
    if inputs is not None:
        restored["inputs"] = inputs
    free = (*policy.free_keys, *([policy.override_key] if policy.override_key else []))
    if changes := changed_settings(state.config or {}, config, free):  # accepted above
        history = list(restored.get("resume_overrides", []))
        history.append({"step": state.step, "changed": {k: list(v) for k, v in changes.items()}})
        restored["resume_overrides"] = history
    if loader is not None:
        loader.load_state_dict(state.data_state)
    return state.step, restored
