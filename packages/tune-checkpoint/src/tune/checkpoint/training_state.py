"""Training state for exact resume: step directories written aside, committed by atomic rename."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tune.checkpoint.commit import (
    MANIFEST_NAME,
    torch_save_durable,
    verify_directory,
    write_manifest,
)
from tune.checkpoint.dcp import load_sharded, save_sharded
from tune.checkpoint.errors import (
    CheckpointError,
    CorruptCheckpointError,
    NoCheckpointFoundError,
)
from tune.checkpoint.rng_state import capture_rng_state, restore_rng_state
from tune.checkpoint.safe_torch_load import torch_load_weights_only
from tune.checkpoint.safetensors_dir import (
    DEFAULT_MAX_SHARD_BYTES,
    load_safetensors_dir,
    save_safetensors_dir,
)
from tune.checkpoint.step_commit import (
    STEP_DIR,
    commit_step,
    delete_step,
    discard_scratch,
    find_latest,
    recover,
)

logger = logging.getLogger(__name__)

_STEP_DIR = STEP_DIR
MODEL_DIR, SHARDED_DIR = "model", "sharded"


@dataclass
class TrainingState:
    """What `CheckpointManager.load` returns; absent parts are None.

    Args:
        path: the committed step directory.
        step: the step it was saved at.
        model_state: full model (or adapter) state dict, when saved and requested.
        optimizer_state: optimizer `state_dict()`.
        scheduler_state: LR scheduler `state_dict()`.
        data_state: this rank's data-loader position.
        extra: small values such as the epoch.
        config: the resolved run config (dict from JSON, or YAML text).
        rng_restored: whether this rank's RNG states were restored.
    """

    path: Path
    step: int
    model_state: dict[str, torch.Tensor] | None = None
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    data_state: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    config: Any = None
    rng_restored: bool = False


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def _all_ranks_agree(step: int) -> Iterator[None]:
    """Run one phase of a save on every rank, then agree: when any rank failed, all raise.

    A plain barrier would leave the other ranks waiting for a rank that raised until the process
    group's timeout; here every rank learns which rank failed and why, and raises at once (the
    failing rank re-raises its own error).
    """
    error: Exception | None = None
    try:
        yield
    except Exception as err:  # re-raised below, after the other ranks are told
        error = err
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        if error is not None:
            raise error
        return
    reports: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(reports, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
    if failed:
        rank, report = failed[0]
        raise CheckpointError(
            f"checkpoint step_{step} was not committed: rank {rank} failed: {report}"
        )


@contextlib.contextmanager
def _naming_the_step(step: int, tmp: Path) -> Iterator[None]:
    """Re-raise an OSError with the step being written in its message (write() names no file)."""
    try:
        yield
    except OSError as err:
        what = f"writing checkpoint step_{step} into {tmp} failed: {err.strerror or err}"
        if err.errno is None:
            raise OSError(what) from err
        if err.filename is None:
            raise OSError(err.errno, what) from err
        raise OSError(err.errno, what, err.filename) from err


def _load(path: Path) -> Any:
    return torch_load_weights_only(path)


class CheckpointManager:
    """Save and resume training state under `root/step_<n>` with crash-safe commits.

    A save writes everything into `root/.step_<n>.tmp`, flushes it, writes `manifest.json`
    (sizes and sha256 of every file) last, renames the directory to `step_<n>` and flushes the
    parent; only then does retention delete old steps. Saving a step again keeps the committed
    copy (as `.step_<n>.old`) until the new one is renamed in. A crash at any point leaves a
    complete copy of the newest committed step (or of the new one), which `latest` finds and the
    next save commits (see `tune.checkpoint.step_commit`). Take a `RunLock` on the run directory
    so that only one process saves into `root`. In a distributed run every
    rank calls `save`/`load`: rank 0 writes the full states, each rank its RNG and data position,
    and all ranks write `sharded_state` (DCP) together; `root` must be on a filesystem all ranks
    share.

    Args:
        root: directory holding the step directories.
        keep_last_n: keep this many newest committed steps (None keeps all).
        fsync: flush files and directories to stable storage (turn off only for tests).
        checksums: store sha256 digests in the manifest.
        max_shard_size: largest model weight shard in bytes or e.g. `"5GB"`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        keep_last_n: int | None = None,
        fsync: bool = True,
        checksums: bool = True,
        max_shard_size: int | str = DEFAULT_MAX_SHARD_BYTES,
    ) -> None:
        if keep_last_n is not None and keep_last_n < 1:
            raise ValueError(f"keep_last_n must be >= 1 or None, got {keep_last_n}")
        self.root = Path(root)
        self.keep_last_n = keep_last_n
        self.fsync = fsync
        self.checksums = checksums
        self.max_shard_size = max_shard_size

    def step_dir(self, step: int) -> Path:
        """The committed directory of `step`."""
        return self.root / f"step_{step}"

    def save(
        self,
        step: int,
        *,
        model_state: Mapping[str, torch.Tensor] | None = None,
        optimizer_state: Mapping[str, Any] | None = None,
        scheduler_state: Mapping[str, Any] | None = None,
        data_state: Any = None,
        extra: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | str | None = None,
        sharded_state: dict[str, Any] | None = None,
        save_rng: bool = True,
        rng_state: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write one step and commit it atomically; returns the committed `step_<n>` directory.

        Args:
            step: the optimizer step (directory `step_<step>`); saving a step again replaces it.
            model_state: full model or adapter state dict (rank 0's is written).
            optimizer_state: optimizer `state_dict()` (rank 0's).
            scheduler_state: LR scheduler `state_dict()` (rank 0's).
            data_state: data-loader position (each rank's own).
            extra: small values (epoch, tokens seen, ...; rank 0's).
            config: the resolved run config: a JSON-able mapping or YAML text.
            sharded_state: DCP state (e.g. FSDP2 model and optimizer), written by every rank.
            save_rng: store this rank's python/numpy/torch/CUDA RNG states.
            rng_state: states captured earlier with `capture_rng_state` (default: capture now).

        Raises:
            OSError: writing failed (e.g. ENOSPC); the message names the step and its scratch
                directory `.step_<n>.tmp`, errno is kept. Committed steps are left as they were;
                the next save removes the scratch directory.
            CheckpointError: on every other rank when one rank failed (naming it and its error):
                no rank waits for a failed one until the process-group timeout.
        """
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        rank, world = _rank_world()
        tmp = self.root / f".step_{step}.tmp"
        with _all_ranks_agree(step):
            pass  # every rank is done reading (a load may use a scratch copy) before renames
        with _all_ranks_agree(step):
            if rank == 0:
                self.root.mkdir(parents=True, exist_ok=True)
                self.recover()
                tmp.mkdir()
        with _all_ranks_agree(step), _naming_the_step(step, tmp):
            if save_rng:
                rng = dict(rng_state) if rng_state is not None else capture_rng_state()
                torch_save_durable(tmp / f"rng_rank{rank}.pt", rng, self.fsync)
            if data_state is not None:
                torch_save_durable(tmp / f"data_rank{rank}.pt", data_state, self.fsync)
            if sharded_state is not None:
                save_sharded(tmp / SHARDED_DIR, sharded_state)
            if rank == 0:
                self._write_rank0_files(
                    tmp, model_state, optimizer_state, scheduler_state, extra, config
                )
        final = self.step_dir(step)
        with _all_ranks_agree(step):
            if rank == 0:
                try:
                    with _naming_the_step(step, tmp):
                        write_manifest(tmp, step, world, self.checksums, self.fsync)
                        self._commit(tmp, final)
                except Exception:
                    discard_scratch(tmp)  # reported as not committed: never commit it later
                    raise
                self._apply_retention(keep=final)
        return final

    def _write_rank0_files(
        self,
        tmp: Path,
        model_state: Mapping[str, torch.Tensor] | None,
        optimizer_state: Mapping[str, Any] | None,
        scheduler_state: Mapping[str, Any] | None,
        extra: Mapping[str, Any] | None,
        config: Mapping[str, Any] | str | None,
    ) -> None:
        if model_state is not None:
            save_safetensors_dir(
                tmp / MODEL_DIR, model_state, max_shard_size=self.max_shard_size, fsync=self.fsync
            )
        for name, obj in (
            ("optimizer.pt", optimizer_state),
            ("scheduler.pt", scheduler_state),
            ("extra.pt", extra),
        ):
            if obj is not None:
                torch_save_durable(tmp / name, dict(obj), self.fsync)
        if config is not None:
            text = config if isinstance(config, str) else json.dumps(config, indent=2, default=str)
            name = "config.yaml" if isinstance(config, str) else "config.json"
            with open(tmp / name, "w") as f:
                f.write(text)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())

    def _commit(self, tmp: Path, final: Path) -> None:
        commit_step(tmp, final, self.fsync)
        logger.info("committed checkpoint %s", final)

    def recover(self) -> None:
        """Repair what an interrupted save left under `root` (one process only; `save` calls it).

        A complete `.step_<n>.tmp` / `.old` / `.deleting` copy whose `step_<n>` is missing or
        incomplete is renamed to `step_<n>`; scratch that is incomplete or superseded is deleted.
        """
        recover(self.root, self.fsync)

    def _apply_retention(self, keep: Path) -> None:
        if self.keep_last_n is None:
            return
        steps = [p for _, p in self.step_dirs() if p != keep]
        for path in steps[: max(0, len(steps) - (self.keep_last_n - 1))]:
            delete_step(path)
            logger.info("retention: removed %s", path)

    def step_dirs(self) -> list[tuple[int, Path]]:
        """`(step, directory)` of every `step_<n>` directory, oldest first (not validated)."""
        if not self.root.is_dir():
            return []
        found = [
            (int(m.group(1)), p)
            for p in self.root.iterdir()
            if (m := _STEP_DIR.fullmatch(p.name)) and p.is_dir()
        ]
        return sorted(found)

    def latest(self, checksums: bool = False) -> Path | None:
        """The newest step directory that passes its manifest check, or None.

        Directories that fail (no manifest, missing or truncated files) are skipped with a
        warning. When a save or retention was killed between renames, the complete copy it left
        (`.step_<n>.tmp`, `.old` or `.deleting`) is returned; the next `save` (or `recover`)
        commits it as `step_<n>`. Nothing is renamed or deleted here.

        Args:
            checksums: also verify sha256 digests (reads every byte).
        """
        return find_latest(self.root, checksums)

    def resolve(self, path: str | os.PathLike[str] | None = None, checksums: bool = False) -> Path:
        """The step directory to resume from: `path` itself if it is one, else the latest under it.

        Raises:
            NoCheckpointFoundError: nothing valid there; resuming never silently starts fresh.
            CorruptCheckpointError: `path` is a step directory that fails its manifest check.
        """
        target = self.root if path is None else Path(path)
        if (target / MANIFEST_NAME).exists() or _STEP_DIR.fullmatch(target.name):
            verify_directory(target, checksums)
            return target
        found = CheckpointManager(target).latest(checksums) if target.is_dir() else None
        if found is None:
            raise NoCheckpointFoundError(
                f"{target}: no committed, valid checkpoint to resume from (expected step_<n> "
                f"directories with a {MANIFEST_NAME}); refusing to start from scratch silently"
            )
        return found

    def load(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        sharded_state: dict[str, Any] | None = None,
        restore_rng: bool = True,
        load_model_state: bool = True,
        checksums: bool = False,
    ) -> TrainingState:
        """Load a step (default: the latest under `root`) and restore this rank's RNG states.

        Args:
            path: a step directory, or a root to take the latest from (default `root`).
            sharded_state: template DCP state filled in place (may use another world size).
            restore_rng: restore python/numpy/torch/CUDA RNG states of this rank.
            load_model_state: read `model/` into `model_state` (else load it yourself, e.g. with
                `load_hf_checkpoint(model, state.path / "model")` into a meta model).
            checksums: verify sha256 digests before loading.

        Raises:
            NoCheckpointFoundError: no valid checkpoint at `path`.
            CorruptCheckpointError: the chosen directory fails its manifest check.
        """
        step_dir = self.resolve(path, checksums)
        manifest = verify_directory(step_dir, checksums=False)
        rank, world = _rank_world()
        state = TrainingState(path=step_dir, step=int(manifest["step"]))
        if load_model_state and (step_dir / MODEL_DIR).is_dir():
            state.model_state = load_safetensors_dir(step_dir / MODEL_DIR)
        for attr, name in (
            ("optimizer_state", "optimizer.pt"),
            ("scheduler_state", "scheduler.pt"),
        ):
            if (step_dir / name).is_file():
                setattr(state, attr, _load(step_dir / name))
        if (step_dir / "extra.pt").is_file():
            state.extra = _load(step_dir / "extra.pt")
        if (step_dir / "config.json").is_file():
            state.config = json.loads((step_dir / "config.json").read_text())
        elif (step_dir / "config.yaml").is_file():
            state.config = (step_dir / "config.yaml").read_text()
        saved_world = manifest.get("world_size", 1)
        data_file = step_dir / f"data_rank{rank}.pt"
        if data_file.is_file():
            state.data_state = _load(data_file)
        rng_file = step_dir / f"rng_rank{rank}.pt"
        if restore_rng and rng_file.is_file():
            restore_rng_state(_load(rng_file))
            state.rng_restored = True
        if world != saved_world:
            logger.warning(
                "%s was saved at world size %d, loading at %d: per-rank data and RNG states of "
                "ranks that differ are not exact",
                step_dir,
                saved_world,
                world,
            )
        if sharded_state is not None:
            if not (step_dir / SHARDED_DIR).is_dir():
                raise CorruptCheckpointError(f"{step_dir}: no {SHARDED_DIR}/ (DCP) state saved")
            load_sharded(step_dir / SHARDED_DIR, sharded_state)
        return state
