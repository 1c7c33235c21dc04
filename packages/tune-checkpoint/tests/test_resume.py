"""Resume: the policy on changed settings, the step to go on from, and an exact continuation
(plain state dicts and DCP) with the current hyperparameters applied."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tune.checkpoint import (
    CheckpointManager,
    CorruptCheckpointError,
    NoCheckpointFoundError,
    ResumeMismatchError,
    ResumePolicy,
    StateDictMismatchError,
    changed_settings,
    check_resume_compatible,
    find_resume_step,
    fingerprint_inputs,
    load_training_state,
    resume_run,
    save_training_state,
)

POLICY = ResumePolicy(
    invariant_keys=("data.source", "training.seed"),
    free_keys=("logging", "checkpointing.keep_last_n"),
    override_key="checkpointing.resume_overrides",
    start_over="use another output_dir",
)
SAVED = {
    "data": {"source": "a.jsonl"},
    "rollout": {"group_size": 4, "prompts_per_step": 8},
    "training": {"optimizer": {"lr": 1e-4}, "max_steps": 10, "seed": 0},
    "logging": {"loggers": ["jsonl"]},
    "checkpointing": {"resume_overrides": []},
}


def _now(**sections: dict) -> dict:
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in SAVED.items()}
    for name, values in sections.items():
        tree[name] = {**tree[name], **values}
    return tree


def test_an_invariant_key_never_changes_even_when_listed() -> None:
    now = _now(rollout={"group_size": 8}, checkpointing={"resume_overrides": ["rollout"]})
    assert check_resume_compatible(SAVED, now, Path("step_2"), POLICY) == {
        "rollout.group_size": (4, 8)
    }
    strict = ResumePolicy(("rollout.group_size",), override_key=POLICY.override_key)
    with pytest.raises(ResumeMismatchError, match=r"step_2 .*rollout\.group_size: saved 4, now 8"):
        check_resume_compatible(SAVED, now, Path("step_2"), strict)
    with pytest.raises(ResumeMismatchError, match=r"data\.source: saved 'a.jsonl', now 'b.jsonl'"):
        check_resume_compatible(SAVED, _now(data={"source": "b.jsonl"}), "step_2", POLICY)


def test_any_other_change_is_refused_naming_it_unless_listed() -> None:
    now = _now(training={"optimizer": {"lr": 3e-4}, "max_steps": 20})
    with pytest.raises(ResumeMismatchError) as err:
        check_resume_compatible(SAVED, now, Path("step_2"), POLICY)
    message = str(err.value)
    assert "training.max_steps: saved 10, now 20" in message
    assert "training.optimizer.lr: saved 0.0001, now 0.0003" in message
    assert "checkpointing.resume_overrides=[training.max_steps,training.optimizer.lr]" in message
    assert message.endswith("use another output_dir")
    listed = _now(
        training={"optimizer": {"lr": 3e-4}, "max_steps": 20},
        checkpointing={"resume_overrides": ["training.optimizer.lr", "training.max_steps"]},
    )
    applied = check_resume_compatible(SAVED, listed, Path("step_2"), POLICY)
    assert applied == {"training.max_steps": (10, 20), "training.optimizer.lr": (1e-4, 3e-4)}
    # A listed section covers the keys under it.
    section = _now(training={"max_steps": 20}, checkpointing={"resume_overrides": ["training"]})
    assert check_resume_compatible(SAVED, section, Path("step_2"), POLICY) == {
        "training.max_steps": (10, 20)
    }
    # Without an override key nothing else may change.
    with pytest.raises(ResumeMismatchError, match=r"Restore them, or resume from another"):
        check_resume_compatible(SAVED, listed, "step_2", ResumePolicy(("data.source",)))


def test_free_keys_and_keys_new_to_the_config_pass_silently() -> None:
    now = _now(logging={"loggers": ["stdout"]}, checkpointing={"keep_last_n": 5})
    now["training"] = {**now["training"], "brand_new_key": 1}
    assert changed_settings(SAVED, now, POLICY.free_keys) == {}
    assert check_resume_compatible(SAVED, now, Path("step_2"), POLICY) == {}


def test_bad_policies_and_configs_are_refused() -> None:
    with pytest.raises(ValueError, match=r"invariant_keys must be a sequence .* got 'data'"):
        ResumePolicy(invariant_keys="data")  # type: ignore[arg-type]
    with pytest.raises(ResumeMismatchError, match=r"step_3: no saved config"):
        check_resume_compatible(None, SAVED, "step_3", POLICY)


class Loader:
    """A data stream whose batches depend only on its position."""

    def __init__(self) -> None:
        self.position = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.position)
        self.position += 1
        return torch.randn(4, 8, generator=g), torch.randn(4, 1, generator=g)

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]


def _setup(lr: float = 1e-2, weight_decay: float = 0.0, freeze_first: bool = False) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.Tanh(), nn.Linear(16, 1))
    if freeze_first:
        model[0].requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler}


def _step(parts: dict, loader: Loader) -> float:
    x, y = loader.next()
    loss = ((parts["model"](x) - y) ** 2).mean()  # dropout draws from torch's RNG
    parts["optimizer"].zero_grad()
    loss.backward()
    parts["optimizer"].step()
    parts["scheduler"].step()
    return loss.item()


def _run(
    root: Path,
    config: dict,
    steps: int,
    *,
    save_at: int = 0,
    inputs: Any = None,
    setup: dict | None = None,
    **kw: bool,
) -> tuple[list[float], dict]:
    """Train to ``steps`` (resuming from ``root`` if it holds a step), saving at ``save_at``."""
    parts, loader = _setup(**(setup or {})), Loader()
    manager = CheckpointManager(root, fsync=False)
    step, extra = resume_run(manager, "auto", config, policy=POLICY, loader=loader,
                             inputs=inputs, extra={"seen": 0}, **parts, **kw)  # fmt: skip
    losses = []
    while step < steps:
        losses.append(_step(parts, loader))
        step += 1
        extra["seen"] += 4
        if step == save_at:
            save_training_state(manager, step, data_state=loader.state_dict(), extra=extra,
                                config=config, **parts, **kw)  # fmt: skip
    return losses, {"extra": extra, **parts}


@pytest.mark.parametrize(
    ("distributed", "resume_distributed"),
    [(False, False), (True, True), (True, False)],
    ids=["plain", "dcp", "dcp_resumed_in_one_process"],
)
def test_resume_continues_exactly(
    tmp_path: Path, distributed: bool, resume_distributed: bool
) -> None:
    if distributed:
        pytest.importorskip("numpy")  # DCP on CPU needs numpy
    config = _now()
    full, _ = _run(tmp_path / "full", config, 6)
    first, _ = _run(tmp_path / "run", config, 3, save_at=3, distributed=distributed)
    # A step of DCP shards only (as several ranks write it) loads in one process as well.
    second, state = _run(tmp_path / "run", config, 6, distributed=resume_distributed)
    assert first + second == full  # bit for bit: weights, optimizer, schedule, RNG, data position
    assert state["extra"]["seen"] == 24
    sharded = (tmp_path / "run" / "step_3" / "sharded").is_dir()
    assert sharded == distributed
    assert (tmp_path / "run" / "step_3" / "model").is_dir() != sharded


def test_accepted_changes_take_effect_and_are_recorded(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text("1\n")
    inputs = fingerprint_inputs({"data.source": data})
    config = _now()
    _run(tmp_path / "run", config, 2, save_at=2, inputs=inputs)
    changed = _now(
        training={"optimizer": {"lr": 5e-2}, "max_steps": 10},
        checkpointing={"resume_overrides": ["training.optimizer"]},
    )
    _, state = _run(tmp_path / "run", changed, 2, inputs=inputs,
                    setup={"lr": 5e-2, "weight_decay": 0.3})  # fmt: skip
    group, scheduler = state["optimizer"].param_groups[0], state["scheduler"]
    assert scheduler.base_lrs == [5e-2]
    assert group["initial_lr"] == 5e-2
    assert group["lr"] == pytest.approx(5e-2 / 3)  # the schedule at step 2, from the new base
    assert group["weight_decay"] == 0.3  # current hyperparameters win over the saved ones
    assert state["extra"]["resume_overrides"] == [
        {"step": 2, "changed": {"training.optimizer.lr": [1e-4, 5e-2]}}
    ]
    assert state["extra"]["inputs"] == inputs
    assert json.loads((tmp_path / "run" / "step_2" / "config.json").read_text()) == config


def test_trainable_only_saves_and_checks_only_the_trainable_weights(tmp_path: Path) -> None:
    _run(tmp_path / "run", _now(), 1, save_at=1, trainable_only=True, setup={"freeze_first": True})
    saved = CheckpointManager(tmp_path / "run").load(restore_rng=False).model_state
    assert saved is not None
    assert sorted(saved) == ["3.bias", "3.weight"]
    parts = _setup()  # nothing frozen: the checkpoint lacks the first layer
    with pytest.raises(
        StateDictMismatchError, match=r"step_1/model: .*missing '0.bias', '0.weight'"
    ):
        load_training_state(CheckpointManager(tmp_path / "run"), None, **parts)


def test_find_resume_step_never_starts_fresh_silently(tmp_path: Path) -> None:
    config = _now()
    manager = CheckpointManager(tmp_path / "run", fsync=False)
    assert find_resume_step(manager, "auto", config, POLICY) is None  # nothing saved yet
    with pytest.raises(NoCheckpointFoundError, match=r"resume='.*nowhere'.*refusing to start"):
        find_resume_step(manager, str(tmp_path / "nowhere"), config, POLICY)
    data = tmp_path / "rows.jsonl"
    data.write_text("1\n")
    _run(tmp_path / "run", config, 1, save_at=1, inputs=fingerprint_inputs({"data.source": data}))
    assert find_resume_step(manager, "never", config, POLICY) is None
    assert find_resume_step(manager, "auto", config, POLICY) == tmp_path / "run" / "step_1"
    data.write_text("2\n")
    with pytest.raises(ResumeMismatchError, match=r"data\.source: .*rows\.jsonl changed content"):
        find_resume_step(manager, "auto", config, POLICY, fingerprint_inputs({"data.source": data}))
    (tmp_path / "run" / "step_1" / "optimizer.pt").write_bytes(b"truncated")
    with pytest.raises(CorruptCheckpointError, match=r"optimizer\.pt.*no valid step is left"):
        find_resume_step(manager, "auto", config, POLICY)
