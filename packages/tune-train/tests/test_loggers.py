"""Loggers write what they should, and never a secret."""

from __future__ import annotations

import io
import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch

from tune.train import JsonlLogger, MetricLogger, MultiLogger, StdoutLogger, redact_secrets
from tune.train.loggers import (
    REDACTED,
    TensorBoardLogger,
    drop_steps_from,
    is_secret_key,
    loggers_for_run,
    read_jsonl_metrics,
)

SECRET = "hf_abcdefSECRETvalue123"
WANDB_SECRET = "wandb0123456789secret"

CONFIG = {
    "model": {"path": "/models/tiny", "eos_token": "</s>", "max_new_tokens": 64},
    "hf_token": SECRET,
    "logging": {"wandb": {"api_key": WANDB_SECRET, "project": "p"}},
    "output_dir": f"/runs/{SECRET}/out",  # the env secret embedded in a string
    "tokenizer_path": "/models/tiny/tokenizer.json",
    "db_password": 1234,
    "use_auth_token": True,
}


@pytest.fixture(autouse=True)
def _secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("WANDB_API_KEY", WANDB_SECRET)


def test_redaction_of_keys_and_env_values() -> None:
    red = redact_secrets(CONFIG)
    assert red["hf_token"] == REDACTED
    assert red["logging"]["wandb"] == {"api_key": REDACTED, "project": "p"}
    assert red["output_dir"] == "/runs/***/out"
    assert red["db_password"] == REDACTED
    # not secrets: tokenizer settings, counts, paths, flags
    assert red["model"] == CONFIG["model"]
    assert red["tokenizer_path"] == CONFIG["tokenizer_path"]
    assert red["use_auth_token"] is True
    assert CONFIG["hf_token"] == SECRET  # the input is not modified
    assert is_secret_key("apiKey", "x")
    assert is_secret_key("GITHUB_TOKEN", "x")
    assert not is_secret_key("num_tokens", 12)
    assert not is_secret_key("tokens_per_s", 3.0)


def test_jsonl_logger_writes_steps_and_redacted_config(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "metrics.jsonl"
    logger = JsonlLogger(path)
    assert isinstance(logger, MetricLogger)
    logger.log_config(CONFIG)
    logger.log({"loss": torch.tensor(2.5), "lr": 1e-4, "num_tokens": 39}, step=1)
    logger.log({"loss": float("nan"), "skipped_steps": 1, "note": f"token {SECRET}"}, step=2)
    logger.close()
    text = path.read_text()
    assert SECRET not in text
    assert WANDB_SECRET not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert records[0]["config"]["hf_token"] == REDACTED
    assert records[0]["config"]["model"]["eos_token"] == "</s>"
    assert {k: records[1][k] for k in ("step", "loss", "lr", "num_tokens")} == {
        "step": 1, "loss": 2.5, "lr": 1e-4, "num_tokens": 39
    }  # fmt: skip
    assert records[2]["loss"] == "nan"
    assert records[2]["note"] == "token ***"
    with pytest.raises(RuntimeError, match="closed"):
        logger.log({"loss": 1.0}, step=3)


def test_stdout_logger_line_format() -> None:
    stream = io.StringIO()
    logger = StdoutLogger(stream)
    logger.log({"loss": 2.34567, "tokens_per_s": 1500.0, "skipped_steps": 0}, step=10)
    logger.log_config(CONFIG)
    out = stream.getvalue()
    assert out.splitlines()[0] == "step 10 | loss 2.346 | tokens_per_s 1500 | skipped_steps 0"
    assert SECRET not in out
    assert WANDB_SECRET not in out


def test_stdout_logger_excludes_patterns() -> None:
    stream = io.StringIO()
    logger = StdoutLogger(stream, exclude=["moe/layer*"])
    logger.log({"loss": 1.0, "moe/layer0/entropy": 0.5, "moe/entropy": 0.25}, step=3)
    assert stream.getvalue() == "step 3 | loss 1 | moe/entropy 0.25\n"


def test_multi_logger_fans_out(tmp_path: Path) -> None:
    stream = io.StringIO()
    multi = MultiLogger([StdoutLogger(stream), JsonlLogger(tmp_path / "m.jsonl")])
    multi.log({"loss": 1.0}, step=0)
    multi.close()
    assert "step 0 | loss 1" in stream.getvalue()
    assert json.loads((tmp_path / "m.jsonl").read_text())["loss"] == 1.0


def test_tensorboard_logger_writes_scalars_and_redacted_config(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is an optional extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tune.train import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path / "tb")
    for step, loss in enumerate([3.0, 2.0, 1.5]):
        logger.log({"loss": loss, "note": "text is skipped"}, step=step)
    logger.log_config(CONFIG)
    logger.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(0, 3.0), (1, 2.0), (2, 1.5)]
    raw = b"".join(p.read_bytes() for p in (tmp_path / "tb").iterdir())
    assert SECRET.encode() not in raw
    assert WANDB_SECRET.encode() not in raw
    assert b"eos_token" in raw  # the config was written


def test_wandb_logger_offline_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb", reason="wandb is an optional extra, not installed")
    from tune.train import WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger("tune-test", mode="offline", dir=str(tmp_path), config=CONFIG)
    logger.log({"loss": 1.0}, step=1)
    logger.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert SECRET.encode() not in raw
    assert WANDB_SECRET.encode() not in raw


def test_wandb_logger_sends_only_redacted_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a recording stand-in for the wandb module (the real one is optional)."""
    calls: list[tuple] = []

    class Run:
        config = types.SimpleNamespace(update=lambda d, **kw: calls.append(("update", d, kw)))

        def log(self, data, step):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    from tune.train import WandbLogger

    logger = WandbLogger("proj", mode="offline", config=CONFIG)
    logger.log({"loss": torch.tensor(0.5)}, step=4)
    logger.log_config({"hf_token": SECRET})
    logger.close()
    assert calls[0][1]["config"]["hf_token"] == REDACTED
    assert calls[0][1]["mode"] == "offline"
    assert calls[1] == ("log", {"loss": 0.5}, 4)
    assert calls[2][1] == {"hf_token": REDACTED}
    assert calls[3] == ("finish",)
    assert SECRET not in repr(calls)
    assert WANDB_SECRET not in repr(calls)


def test_mlflow_logger_local_file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow", reason="mlflow is an optional extra, not installed")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 deprecates the file store
    from tune.train import MLflowLogger

    logger = MLflowLogger("tune-test", tracking_uri=(tmp_path / "mlruns").as_uri())
    logger.log_config(CONFIG)
    logger.log({"loss": 1.25}, step=3)
    logger.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert SECRET.encode() not in raw
    assert WANDB_SECRET.encode() not in raw
    assert b"1.25" in raw


def test_optional_backends_fail_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from tune.train import MLflowLogger

    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` raise ImportError
    with pytest.raises(ImportError, match=r"tune-train\[mlflow\]"):
        MLflowLogger()


def _steps(path: Path) -> list[int | None]:
    return [json.loads(line).get("step") for line in path.read_text().splitlines()]


def test_jsonl_resume_drops_steps_logged_after_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    first = JsonlLogger(path)
    first.log_config({"lr": 1e-4})
    for step in range(1, 8):  # the run crashes after step 7; the checkpoint is at step 4
        first.log({"loss": float(step)}, step=step)
    first.close()
    with path.open("a") as f:
        f.write('{"step": 8, "loss": 1.')  # a line cut short by the crash
    resumed = JsonlLogger(path, resume_from_step=5)
    assert _steps(path) == [None, 1, 2, 3, 4]
    for step in range(5, 7):
        resumed.log({"loss": float(step)}, step=step)
    resumed.close()
    steps = _steps(path)
    assert steps == [None, 1, 2, 3, 4, 5, 6]
    assert len({s for s in steps if s is not None}) == len(steps) - 1  # no duplicates
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temp file left


def test_jsonl_resume_keeps_a_clean_file_and_tolerates_a_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    assert drop_steps_from(path, 3) == 0  # no file yet
    JsonlLogger(path, resume_from_step=0).close()
    assert path.read_text() == ""
    logger = JsonlLogger(path)
    logger.log({"loss": 1.0}, step=1)
    logger.close()
    before = path.read_text()
    assert drop_steps_from(path, 2) == 0
    assert path.read_text() == before
    assert drop_steps_from(path, 0) == 1
    assert path.read_text() == ""


@pytest.mark.parametrize("bad", [-1, 2.0, "3", True])
def test_jsonl_resume_step_is_checked(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match="JsonlLogger resume_from_step: expected an integer >= 0"):
        JsonlLogger(tmp_path / "m.jsonl", resume_from_step=bad)  # type: ignore[arg-type]


def test_read_jsonl_metrics_reads_what_the_logger_wrote(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    assert read_jsonl_metrics(path) == {}  # no file yet
    logger = JsonlLogger(path)
    logger.log_config({"loss": "not a metric"})
    logger.log({"loss": 2.5, "grad_norm": 1.0}, step=1)
    logger.log({"val_loss": 3.0}, step=1)
    logger.log({"loss": float("nan")}, step=2)
    logger.log({"loss": 1.5}, step=1)  # step 1 again, as after a resume: the later line wins
    logger.close()
    with path.open("a") as f:
        f.write('{"step": 3, "loss": 1.')  # a line cut short by a crash
    losses = read_jsonl_metrics(path)
    assert sorted(losses) == [1, 2]
    assert losses[1] == 1.5
    assert math.isnan(losses[2])
    assert read_jsonl_metrics(str(path), "val_loss") == {1: 3.0}
    assert read_jsonl_metrics(path, "accuracy") == {}


def _old_run(path: Path, steps: int) -> None:
    logger = JsonlLogger(path)
    for step in range(1, steps + 1):
        logger.log({"loss": float(step)}, step=step)
    logger.close()


def test_loggers_for_run_place_files_in_the_run_and_trim_for_resume(tmp_path: Path) -> None:
    _old_run(tmp_path / "metrics.jsonl", 6)  # crashed after step 6; checkpoint at step 4
    stream = io.StringIO()
    made: list[dict[str, object]] = []

    def custom(**kwargs: object) -> MetricLogger:  # a factory, not a class: kwargs untouched
        made.append(kwargs)
        return StdoutLogger(io.StringIO())

    sink = loggers_for_run(
        [(JsonlLogger, {}), (StdoutLogger, {"stream": stream}), (custom, {"a": 1})],
        output_dir=tmp_path,
        start_step=4,
    )
    assert _steps(tmp_path / "metrics.jsonl") == [1, 2, 3, 4]
    sink.log({"loss": 0.5}, step=5)
    sink.close()
    assert _steps(tmp_path / "metrics.jsonl") == [1, 2, 3, 4, 5]
    assert stream.getvalue().startswith("step 5 | loss 0.5")
    assert made == [{"a": 1}]
    # A fresh run (start_step=0) drops an old run's lines; an explicit path wins.
    loggers_for_run([(JsonlLogger, {})], output_dir=tmp_path).close()
    assert _steps(tmp_path / "metrics.jsonl") == []
    _old_run(tmp_path / "elsewhere.jsonl", 2)
    other = loggers_for_run(
        [(JsonlLogger, {"path": tmp_path / "elsewhere.jsonl"})], output_dir=tmp_path / "x"
    )
    other.close()
    assert _steps(tmp_path / "elsewhere.jsonl") == []
    assert not (tmp_path / "x").exists()


def test_loggers_for_run_put_tensorboard_events_under_the_run(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    sink = loggers_for_run([(TensorBoardLogger, {})], output_dir=tmp_path)
    sink.log({"loss": 1.0}, step=1)
    sink.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
