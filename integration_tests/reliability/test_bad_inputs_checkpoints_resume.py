"""Bad checkpoints, unsafe paths and bad resumes: each stops before step 0 naming the tensor/key.

Runs go through the real sft loop in this process. A resume case starts from a committed 2-step
run and changes one thing; the run must refuse, and write no new step.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import tune.checkpoint.training_state as training_state
from tune.train.loggers import read_jsonl_metrics
from tune_testing import make_tiny_checkpoint

pytestmark = pytest.mark.integration

Q_PROJ = "model.layers.0.self_attn.q_proj.weight"


def _copy_checkpoint(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _edit_weights(directory: Path, edit: Any) -> None:
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


# ---- base checkpoint ----------------------------------------------------------------------


def _broken_checkpoint(in_process: Any, tmp_path: Path, edit: Any) -> Path:
    ckpt = _copy_checkpoint(in_process.runs.assets.checkpoint_dir, tmp_path / "ckpt")
    _edit_weights(ckpt, edit)
    return ckpt


def test_checkpoint_missing_a_tensor_names_it(in_process: Any, tmp_path: Path) -> None:
    name = "model.layers.1.mlp.down_proj.weight"
    ckpt = _broken_checkpoint(in_process, tmp_path, lambda t: t.pop(name))
    err = in_process.fails(f"model.checkpoint_dir={ckpt}")
    assert str(ckpt) in str(err), err
    assert "missing keys" in str(err), err
    assert "'layers.1.mlp.down_proj.weight'" in str(err), err  # the native name of the tensor


def test_checkpoint_with_an_extra_tensor_names_it(in_process: Any, tmp_path: Path) -> None:
    name = "model.layers.0.mlp.extra_proj.weight"
    ckpt = _broken_checkpoint(in_process, tmp_path, lambda t: t.update({name: torch.zeros(4, 4)}))
    err = in_process.fails(f"model.checkpoint_dir={ckpt}")
    assert name in str(err), err


def test_checkpoint_tensor_with_a_wrong_shape_names_it_and_both_shapes(
    in_process: Any, tmp_path: Path
) -> None:
    ckpt = _broken_checkpoint(
        in_process, tmp_path, lambda t: t.update({Q_PROJ: torch.zeros(64, 128)})
    )
    err = in_process.fails(f"model.checkpoint_dir={ckpt}")
    assert Q_PROJ in str(err), err
    assert "64" in str(err), err
    assert "128" in str(err), err


def test_checkpoint_tensor_with_a_non_float_dtype_names_it(in_process: Any, tmp_path: Path) -> None:
    ckpt = _broken_checkpoint(
        in_process, tmp_path, lambda t: t.update({Q_PROJ: torch.zeros(128, 128, dtype=torch.int32)})
    )
    err = in_process.fails(f"model.checkpoint_dir={ckpt}")
    assert Q_PROJ in str(err), err
    assert "int32" in str(err), err


def test_architecture_mismatch_names_model_type(in_process: Any, tmp_path: Path) -> None:
    ckpt = _copy_checkpoint(in_process.runs.assets.checkpoint_dir, tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    config.update(model_type="bert", architectures=["BertForMaskedLM"])
    (ckpt / "config.json").write_text(json.dumps(config))
    err = in_process.fails(f"model.checkpoint_dir={ckpt}")
    assert "bert" in str(err), err


def test_shard_name_escaping_the_directory_is_refused(in_process: Any, tmp_path: Path) -> None:
    ckpt = _copy_checkpoint(in_process.runs.assets.checkpoint_dir, tmp_path / "ckpt")
    tensors = load_file(ckpt / "model.safetensors")
    outside = tmp_path / "outside.safetensors"
    save_file(tensors, outside, metadata={"format": "pt"})
    (ckpt / "model.safetensors").rename(ckpt / "unreferenced.safetensors")
    index = {"metadata": {}, "weight_map": dict.fromkeys(tensors, "../outside.safetensors")}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    err = in_process.fails(f"model.checkpoint_dir={ckpt}")
    assert "../outside.safetensors" in str(err), err
    assert type(err).__name__ == "UnsafeCheckpointPathError", repr(err)


def test_qlora_on_layers_nf4_cannot_hold_names_the_module(in_process: Any, tmp_path: Path) -> None:
    ckpt = make_tiny_checkpoint(tmp_path / "small", hidden_size=48, num_layers=1, num_heads=2,
                                num_kv_heads=2, intermediate_size=96)  # fmt: skip
    err = in_process.fails(f"model.checkpoint_dir={ckpt}", "training.method=qlora")
    assert "proj" in str(err), err


# ---- resume -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_run(make_in_process: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output directory holding a committed 2-step run (step_1, step_2)."""
    out = tmp_path_factory.mktemp("saved") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        make_in_process(out).run("checkpointing.save_every_n_steps=1")
    finally:
        torch.set_num_threads(threads)
    return out


def _resume_fails(in_process: Any, saved_run: Path, *overrides: str) -> BaseException:
    """Resume a copy of ``saved_run`` with changed settings; it must fail, adding no step."""
    shutil.copytree(saved_run, in_process.out)
    before = (in_process.out / "metrics.jsonl").read_text()
    with pytest.raises(Exception) as info:
        in_process.run(
            "training.max_steps=4",
            "checkpointing.resume_overrides=[training.max_steps]",
            *overrides,
        )
    assert (in_process.out / "metrics.jsonl").read_text() == before, "a step ran"
    return info.value


def test_resume_with_a_changed_dataset_names_the_key(
    in_process: Any, saved_run: Path, tmp_path: Path
) -> None:
    data = tmp_path / "other.jsonl"
    shutil.copy(in_process.runs.assets.data_file, data)
    err = _resume_fails(in_process, saved_run, f"data.source={data}")
    assert "data.source" in str(err), err


def _run_on_private_files(in_process: Any, tmp_path: Path) -> tuple[Path, Path, tuple[str, ...]]:
    """A committed 2-step run on copies of the data and tokenizer (which a test then edits)."""
    data = tmp_path / "data.jsonl"
    shutil.copy(in_process.runs.assets.data_file, data)
    tok = _copy_checkpoint(in_process.runs.assets.checkpoint_dir, tmp_path / "tok")
    settings = (
        f"data.source={data}",
        f"tokenizer.path={tok}",
        "checkpointing.save_every_n_steps=1",
    )
    in_process.run(*settings)
    return data, tok, settings


def test_resume_after_rows_were_removed_from_the_data_file_is_refused(
    in_process: Any, tmp_path: Path
) -> None:
    data, _, settings = _run_on_private_files(in_process, tmp_path)
    data.write_text("".join(data.read_text().splitlines(keepends=True)[:200]))
    with pytest.raises(ValueError, match=r"data\.source: .*data\.jsonl changed size"):
        in_process.run(
            *settings, "training.max_steps=4", "checkpointing.resume_overrides=[training.max_steps]"
        )


@pytest.mark.parametrize("changed", ["data", "tokenizer"])
def test_resume_after_a_file_changed_in_place_is_refused(
    changed: str, in_process: Any, tmp_path: Path
) -> None:
    data, tok, settings = _run_on_private_files(in_process, tmp_path)
    if changed == "data":
        rows = data.read_text().splitlines(keepends=True)
        rows[0] = json.dumps({**json.loads(rows[0]), "output": "edited"}) + "\n"
        data.write_text("".join(rows))
    else:
        from tokenizers import Tokenizer as HFTokenizer

        hf = HFTokenizer.from_file(str(tok / "tokenizer.json"))
        hf.add_tokens(["<new_token>"])
        hf.save(str(tok / "tokenizer.json"))
    with pytest.raises(Exception, match=changed):
        in_process.run(
            *settings, "training.max_steps=4", "checkpointing.resume_overrides=[training.max_steps]"
        )


def test_resume_with_a_changed_tokenizer_names_the_key(
    in_process: Any, saved_run: Path, tmp_path: Path
) -> None:
    tok = _copy_checkpoint(in_process.runs.assets.checkpoint_dir, tmp_path / "tok")
    err = _resume_fails(in_process, saved_run, f"tokenizer.path={tok}")
    assert "tokenizer.path" in str(err), err


def test_resume_with_a_changed_sequence_length_names_the_key(
    in_process: Any, saved_run: Path
) -> None:
    err = _resume_fails(in_process, saved_run, "data.max_seq_len=128")
    assert "data.max_seq_len: saved 256, now 128" in str(err), err


def test_output_dir_holding_another_runs_checkpoints_is_refused(
    in_process: Any, saved_run: Path
) -> None:
    err = _resume_fails(in_process, saved_run, "training.seed=7")
    assert "another checkpointing.output_dir" in str(err), err
    assert "training.seed" in str(err), err


def test_resume_path_without_a_checkpoint_names_the_path(in_process: Any, tmp_path: Path) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    err = in_process.fails(f"checkpointing.resume={empty}")
    assert str(empty) in str(err), err
    assert "refusing to start from scratch" in str(err), err


def test_resume_from_a_truncated_step_names_the_file(
    in_process: Any, saved_run: Path, tmp_path: Path
) -> None:
    shutil.copytree(saved_run, tmp_path / "copy")
    step = tmp_path / "copy" / "checkpoints" / "step_2"
    optimizer = step / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    err = in_process.fails(f"checkpointing.resume={step}")
    assert str(optimizer) in str(err), err
    assert "truncated" in str(err), err


def test_resume_auto_skips_a_truncated_latest_step(
    in_process: Any, saved_run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    shutil.copytree(saved_run, in_process.out)
    optimizer = in_process.out / "checkpoints" / "step_2" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    summary = in_process.run(
        "training.max_steps=3", "checkpointing.resume_overrides=[training.max_steps]"
    )
    assert summary["step"] == 3
    assert "skipping checkpoint" in caplog.text
    assert "resumed from" in caplog.text
    assert "step_1 (step 1)" in caplog.text


# ---- disk full during a save --------------------------------------------------------------


def _full_disk_at(step: int) -> Any:
    original = training_state.torch_save_durable

    def save(path: Path, obj: Any, fsync: bool) -> None:
        if path.parent.name == f".step_{step}.tmp":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() reports it
        original(path, obj, fsync)

    return save


def test_disk_full_during_a_save_keeps_the_previous_step_and_resumes_exactly(
    in_process: Any, make_in_process: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = ("training.max_steps=4", "checkpointing.save_every_n_steps=1",
             "training.lora.dropout=0.1")  # fmt: skip
    reference = make_in_process(tmp_path / "reference")
    reference.run(*every)
    with monkeypatch.context() as patch:
        patch.setattr(training_state, "torch_save_durable", _full_disk_at(3))
        with pytest.raises(OSError, match="No space left"):
            in_process.run(*every)
    steps = sorted(p.name for p in (in_process.out / "checkpoints").iterdir())
    assert steps == [".step_3.tmp", "step_1", "step_2"]
    in_process.run(*every)  # same command, nothing cleaned by hand
    assert read_jsonl_metrics(in_process.out / "metrics.jsonl") == read_jsonl_metrics(
        reference.out / "metrics.jsonl"
    )
    assert not any(p.name.startswith(".") for p in (in_process.out / "checkpoints").iterdir())


def test_disk_full_error_names_the_checkpoint_being_written(
    in_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(training_state, "torch_save_durable", _full_disk_at(1))
    with pytest.raises(OSError) as info:
        in_process.run("checkpointing.save_every_n_steps=1")
    assert "step_1" in str(info.value), info.value
