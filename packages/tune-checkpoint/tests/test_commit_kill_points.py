"""A save killed (os._exit) before EVERY filesystem operation it makes leaves a complete step.

Each case forks a child that counts the filesystem calls of one `CheckpointManager.save` (mkdir,
open for writing, rename, replace, unlink, rmdir, rmtree, fsync) and exits with 137 just before
call number k, as a `kill -9` there would. A fresh manager must then find the previous step or the
new one, complete and with the right content, never nothing or an older one; `recover()` (what
the next save runs first) must commit it as `step_<n>` and leave no scratch behind.
"""

from __future__ import annotations

import builtins
import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tune.checkpoint import CheckpointManager

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

_OS_CALLS = ("mkdir", "rename", "replace", "unlink", "remove", "rmdir", "fsync")
_NO_KILL = 10**9


def _state(value: int) -> dict[str, Any]:
    return dict(
        model_state={f"w{i}": torch.full((64, 64), float(value)) for i in range(3)},
        optimizer_state={"state": {0: {"exp_avg": torch.full((8,), float(value))}}},
        extra={"value": value},
        data_state={"position": value},
        config={"value": value},
    )


def _manager(root: Path, keep_last_n: int | None) -> CheckpointManager:
    # 20_000-byte shards: several weight files and an index, so more points to kill at.
    return CheckpointManager(root, keep_last_n=keep_last_n, fsync=False, max_shard_size=20_000)


def _arm(kill_at: int, counter: list[int]) -> None:
    """In the child: count filesystem calls, exit with 137 just before call `kill_at`."""

    def counted(original: Callable[..., Any], writes_only: bool = False) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            mode = args[1] if len(args) > 1 else kwargs.get("mode", "r")
            if not writes_only or any(c in str(mode) for c in "wax+"):
                counter[0] += 1
                if counter[0] == kill_at:
                    os._exit(137)
            return original(*args, **kwargs)

        return call

    for name in _OS_CALLS:
        setattr(os, name, counted(getattr(os, name)))
    shutil.rmtree = counted(shutil.rmtree)  # type: ignore[assignment]
    builtins.open = io.open = counted(io.open, writes_only=True)  # type: ignore[assignment]


def _save_in_child(root: Path, step: int, value: int, keep: int | None, kill_at: int) -> int:
    """Fork, save in the child with the kill armed; returns the child's exit code."""
    count_file = root.parent / "calls"
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            counter = [0]
            _arm(kill_at, counter)
            _manager(root, keep).save(step, **_state(value))
            count_file.write_text(str(counter[0]))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _content(path: Path) -> int:
    state = CheckpointManager(path.parent).load(path, checksums=True, restore_rng=False)
    value = state.extra["value"]
    assert state.model_state is not None
    assert state.optimizer_state is not None
    for tensor in state.model_state.values():
        assert torch.equal(tensor, torch.full((64, 64), float(value)))
    assert torch.equal(state.optimizer_state["state"][0]["exp_avg"], torch.full((8,), float(value)))
    assert state.data_state == {"position": value}
    assert state.config == {"value": value}
    return int(value)


# (name, committed before: {step: value}, the save: (step, value), keep_last_n, allowed results)
SCENARIOS = {
    "new_step_with_retention": ({1: 1}, (2, 2), 1, {(1, 1), (2, 2)}),
    "same_step_again": ({1: 1, 2: 2}, (2, 22), None, {(2, 2), (2, 22)}),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_kill_before_every_filesystem_call_of_a_save(tmp_path: Path, scenario: str) -> None:
    before, (step, value), keep, allowed = SCENARIOS[scenario]
    template = tmp_path / "template"
    for s, v in before.items():
        _manager(template, None).save(s, **_state(v))
    probe = tmp_path / "probe" / "ckpt"
    probe.parent.mkdir()
    shutil.copytree(template, probe)
    assert _save_in_child(probe, step, value, keep, _NO_KILL) == 0
    total = int((probe.parent / "calls").read_text())
    assert total > 10

    seen = set()
    for kill_at in range(1, total + 1):
        case = tmp_path / f"k{kill_at}"
        case.mkdir()
        root = case / "ckpt"
        shutil.copytree(template, root)
        assert _save_in_child(root, step, value, keep, kill_at) == 137, kill_at
        found = CheckpointManager(root).latest(checksums=True)
        assert found is not None, f"nothing to resume after a kill at call {kill_at}"
        result = (CheckpointManager(root).load(found, restore_rng=False).step, _content(found))
        assert result in allowed, (kill_at, found, result)
        seen.add(result)
        # What the next save does first: commit the complete copy, remove the rest.
        manager = _manager(root, keep)
        manager.recover()
        assert not [p.name for p in root.iterdir() if p.name.startswith(".")], kill_at
        recovered = manager.latest(checksums=True)
        assert recovered == root / f"step_{result[0]}"
        assert _content(recovered) == result[1]
        manager.save(step + 1, **_state(100))
        assert manager.latest() == root / f"step_{step + 1}"
        shutil.rmtree(case)
    assert seen == allowed  # both outcomes occur: the kill points span the commit
