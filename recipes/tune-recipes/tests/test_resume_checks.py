"""The recipes' resume wrapper: its key lists, redaction, fingerprinted inputs, guard counters.

The mechanics (exact continuation, the policy, fingerprints) are tested in tune-checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tune.checkpoint import CheckpointManager, ResumeMismatchError
from tune.recipes.common.train_state import resume_run, save_training_state
from tune.recipes.grpo.setup import GRPO_RESUME_KEYS
from tune.train import NonFiniteGuard
from tune.train.loggers.redaction import REDACTED


class Loader:
    position = 0

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]


def _config(tmp_path: Path, **rollout: int) -> dict[str, Any]:
    return {
        "model": {"checkpoint_dir": str(tmp_path / "base")},
        "tokenizer": {"path": str(tmp_path / "base")},
        "data": {"source": "org/hub-rows"},
        "rollout": {"group_size": 4, **rollout},
        "logging": {"options": {"wandb_api_key": "secret-value"}},
        "checkpointing": {"resume_overrides": ["rollout"]},
    }


def _resume(tmp_path: Path, config: dict[str, Any]) -> tuple[int, dict, NonFiniteGuard, Loader]:
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    guard, loader = NonFiniteGuard(), Loader()
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    step, extra = resume_run(
        CheckpointManager(tmp_path / "ckpt", fsync=False), "auto", config,
        sources={"data.source": config["data"]["source"]}, guard=guard, loader=loader,
        trainable_only=False, distributed=False, extra={}, extra_keys=GRPO_RESUME_KEYS, **parts,
    )  # fmt: skip
    if step == 0:
        guard.skipped_steps, loader.position = 2, 7
        extra["guard"] = guard.state_dict()
        save_training_state(
            CheckpointManager(tmp_path / "ckpt", fsync=False), 1, data_state=loader.state_dict(),
            extra=extra, config=config, trainable_only=False, distributed=False, **parts,
        )  # fmt: skip
    return step, extra, guard, loader


def test_a_recipe_resumes_its_counters_with_secrets_redacted(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "tokenizer.json").write_text("{}")
    (tmp_path / "base" / "model.safetensors").write_bytes(b"\0" * 8)
    _, fresh, _, _ = _resume(tmp_path, _config(tmp_path))
    # The base directory is fingerprinted whole as the model, as tokenizer files as the tokenizer.
    assert len(fresh["inputs"]["model.checkpoint_dir"]) == 2
    assert list(fresh["inputs"]["tokenizer.path"]) == [str(tmp_path / "base" / "tokenizer.json")]
    saved = json.loads((tmp_path / "ckpt" / "step_1" / "config.json").read_text())
    assert saved["logging"]["options"]["wandb_api_key"] == REDACTED
    step, _, guard, loader = _resume(tmp_path, _config(tmp_path))
    assert (step, guard.skipped_steps, loader.position) == (1, 2, 7)


def test_a_recipe_key_never_changes_even_when_listed(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    _resume(tmp_path, _config(tmp_path))
    with pytest.raises(ResumeMismatchError) as err:
        _resume(tmp_path, _config(tmp_path, group_size=8))
    assert "rollout.group_size: saved 4, now 8" in str(err.value)
    assert "another checkpointing.output_dir" in str(err.value)
