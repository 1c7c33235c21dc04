"""Security canaries: pickles run no code, configs import nothing unlisted, secrets never leak.

A malicious pickle here calls ``exec`` to create a sentinel file when unpickled; a loader is safe
when it refuses the file and the sentinel stays absent.
"""

from __future__ import annotations

import contextlib
import pickle
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import tune.recipes
from tune.checkpoint import CheckpointManager, load_hf_checkpoint
from tune.checkpoint.commit import MANIFEST_NAME, write_manifest
from tune.config import ConfigError
from tune.dist.testing import clean_env
from tune.recipes.config import load_config
from tune.recipes.sft.config import SFTConfig
from tune.train.loggers import read_jsonl_metrics
from tune_testing import tune_command

pytestmark = pytest.mark.integration

BUNDLED = Path(tune.recipes.__file__).parent / "configs" / "sft" / "tiny_cpu_lora.yaml"


class _Payload:
    """Unpickling this object runs ``exec(code)``."""

    def __init__(self, sentinel: Path) -> None:
        self.code = f"open({str(sentinel)!r}, 'w').write('pwned')"

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (self.code,))


def _plant(path: Path, sentinel: Path, *, raw: bool = False) -> None:
    """Replace ``path`` by a malicious torch archive (or a raw pickle) and re-sign the manifest."""
    if raw:
        path.write_bytes(pickle.dumps(_Payload(sentinel)))
    else:
        torch.save(_Payload(sentinel), path)
    step_dir = next(p for p in [path.parent, path.parent.parent] if (p / MANIFEST_NAME).is_file())
    manifest = yaml.safe_load((step_dir / MANIFEST_NAME).read_text())
    (step_dir / MANIFEST_NAME).unlink()
    write_manifest(step_dir, manifest["step"], manifest["world_size"], True, False)


@pytest.fixture(scope="module")
def committed(make_in_process: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output directory of a committed 2-step single-process run."""
    out = tmp_path_factory.mktemp("committed") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        make_in_process(out).run("checkpointing.save_every_n_steps=1")
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize(
    "name", ["optimizer.pt", "scheduler.pt", "extra.pt", "data_rank0.pt", "rng_rank0.pt"]
)
def test_malicious_pickle_in_a_resumed_step_runs_no_code(
    name: str, committed: Path, in_process: Any, tmp_path: Path
) -> None:
    shutil.copytree(committed, in_process.out)
    sentinel = tmp_path / "sentinel"
    _plant(in_process.out / "checkpoints" / "step_2" / name, sentinel)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        in_process.run(
            "training.max_steps=4", "checkpointing.resume_overrides=[training.max_steps]"
        )
    assert not sentinel.exists()


def test_refused_pickle_error_names_the_file(
    committed: Path, in_process: Any, tmp_path: Path
) -> None:
    shutil.copytree(committed, in_process.out)
    target = in_process.out / "checkpoints" / "step_2" / "optimizer.pt"
    _plant(target, tmp_path / "sentinel")
    with pytest.raises(pickle.UnpicklingError) as info:
        in_process.run(
            "training.max_steps=4", "checkpointing.resume_overrides=[training.max_steps]"
        )
    assert str(target) in str(info.value)


def test_malicious_dcp_metadata_runs_no_code(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 4)
    manager = CheckpointManager(tmp_path / "checkpoints", fsync=False)
    step_dir = manager.save(1, sharded_state={"model": model.state_dict()})
    sentinel = tmp_path / "sentinel"
    _plant(step_dir / "sharded" / ".metadata", sentinel, raw=True)
    with contextlib.suppress(Exception):  # refusing is the point; which error is secondary
        manager.load(step_dir, sharded_state={"model": model.state_dict()})
    assert not sentinel.exists(), "unpickling sharded/.metadata ran the payload"


def test_malicious_pytorch_model_bin_runs_no_code(runs: Any, tmp_path: Path) -> None:
    from tune.models import model_from_checkpoint_dir

    ckpt = tmp_path / "ckpt"
    shutil.copytree(runs.assets.checkpoint_dir, ckpt)
    (ckpt / "model.safetensors").unlink()
    sentinel = tmp_path / "sentinel"
    torch.save(_Payload(sentinel), ckpt / "pytorch_model.bin")
    model = model_from_checkpoint_dir(ckpt, device="meta").model
    with pytest.raises(pickle.UnpicklingError):
        load_hf_checkpoint(model, ckpt)
    assert not sentinel.exists()


# ---- config injection ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "training.optimizer.name=os.system",
        "training.lr_schedule.name=os.system",
        "logging.loggers=[os.system]",
    ],
)
def test_unregistered_callable_is_refused_at_parse_time(override: str, runs: Any) -> None:
    overrides = [f"model.checkpoint_dir={runs.assets.checkpoint_dir}",
                 f"data.source={runs.assets.data_file}", override]  # fmt: skip
    with pytest.raises(ConfigError, match=r"os\.system") as info:
        load_config(BUNDLED, SFTConfig, overrides, recipe="sft")
    assert "--allow-import" in str(info.value) or "allow_imports" in str(info.value), info.value


def test_component_key_in_yaml_is_refused_before_anything_runs(runs: Any, tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel"
    tree = yaml.safe_load(BUNDLED.read_text())
    tree["training"]["optimizer"] = {"_component_": "os.system", "command": f"touch {sentinel}"}
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    overrides = [f"model.checkpoint_dir={runs.assets.checkpoint_dir}",
                 f"data.source={runs.assets.data_file}",
                 f"checkpointing.output_dir={tmp_path / 'out'}"]  # fmt: skip
    result = subprocess.run(tune_command("sft", str(path), overrides), capture_output=True,
                            text=True, timeout=120, env=clean_env())  # fmt: skip
    assert result.returncode == 2
    assert "_component_" in result.stderr, result.stderr[-2000:]
    assert "os.system" in result.stderr
    assert "Traceback" not in result.stderr
    assert not sentinel.exists()
    assert not (tmp_path / "out").exists()


# ---- secrets ------------------------------------------------------------------------------

ENV_CANARIES = {"HF_TOKEN": "hf_CANARYenv0123456789", "WANDB_API_KEY": "wandbCANARYenv0123456789"}
CONFIG_CANARY = "hf_CANARYcfg0123456789"


def _leaks(texts: dict[str, bytes]) -> list[str]:
    canaries = [*ENV_CANARIES.values(), CONFIG_CANARY]
    return [
        f"{c} in {where}" for where, blob in texts.items() for c in canaries if c.encode() in blob
    ]


def _everything_written(out: Path, result: Any) -> dict[str, bytes]:
    files = {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    return {**files, "stdout": result.stdout.encode(), "stderr": result.stderr.encode()}


@pytest.fixture(scope="module")
def canary_run(runs: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Everything a 2-step CLI run with secret canaries in env and config wrote or printed."""
    tmp = tmp_path_factory.mktemp("canaries")
    out = tmp / "out"
    command = runs.one_process(
        out, "training.max_steps=2", "checkpointing.save_every_n_steps=1",
        f"logging.options.wandb.api_key={CONFIG_CANARY}", "logging.loggers=[stdout,jsonl]",
        "checkpointing.save_merged=true",
    )  # fmt: skip
    result = runs.launch_ok(command, tmp / "stderr.txt", clean_env(**ENV_CANARIES))
    assert sorted(read_jsonl_metrics(out / "metrics.jsonl")) == [1, 2]
    return _everything_written(out, result)


def _in_step_dirs(name: str) -> bool:
    return "/checkpoints/step_" in name


def test_secret_canaries_never_reach_stdout_logs_metrics_outputs_or_saved_config(
    canary_run: dict[str, bytes],
) -> None:
    outside_steps = {k: v for k, v in canary_run.items() if not _in_step_dirs(k)}
    names = sorted(outside_steps)
    assert any(n.endswith("/config.yaml") for n in names)  # the saved resolved config
    assert any(n.endswith("metrics.jsonl") for n in names)  # the jsonl logger's payloads
    assert any("/adapter/" in n for n in names)
    assert any("/model/" in n for n in names)
    assert _leaks(outside_steps) == []


def test_environment_canaries_never_reach_checkpoints(canary_run: dict[str, bytes]) -> None:
    steps = {k: v for k, v in canary_run.items() if _in_step_dirs(k)}
    assert any(k.endswith("step_2/config.json") for k in steps)
    assert [leak for leak in _leaks(steps) if CONFIG_CANARY not in leak] == []


def test_config_secret_is_redacted_in_checkpoint_configs(canary_run: dict[str, bytes]) -> None:
    steps = {k: v for k, v in canary_run.items() if _in_step_dirs(k)}
    assert _leaks(steps) == []


@pytest.mark.distributed
def test_secret_override_is_not_logged_by_the_multi_rank_launcher(
    runs: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    command = runs.multi_rank(
        out, "training.max_steps=2", f"logging.options.wandb.api_key={CONFIG_CANARY}"
    )
    result = runs.launch_ok(command, tmp_path / "stderr.txt", clean_env(**ENV_CANARIES))
    assert _leaks({"stdout": result.stdout.encode(), "stderr": result.stderr.encode()}) == []
