"""What a run shows and writes: a copied recipe file runs, metric lines go above the progress bar,
the loss curve is drawn, and a plain LoRA run neither imports torchao nor prints its warnings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tqdm.std

from tune.recipes.cli import main
from tune_testing import TinyAssets, tiny_overrides

SHORT = ("training.max_steps=2", "training.lr_schedule.warmup_steps=0", "eval.every_n_steps=1")


def test_a_copied_recipe_file_runs_and_its_metrics_print_above_the_bar(
    tiny_assets: TinyAssets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["cp", "sft", str(tmp_path / "mine") + "/"]) == 0
    copy = tmp_path / "mine" / "loop.py"
    marker = tmp_path / "ran_the_copy"
    source = copy.read_text()
    head = "    return run_training(config, _train)\n"
    assert head in source
    copy.write_text(source.replace(head, f"    Path({str(marker)!r}).touch()\n{head}"))
    written: list[str] = []
    monkeypatch.setattr(
        tqdm.std.tqdm,
        "write",
        classmethod(lambda cls, s, file=None, end="\n", nolock=False: written.append(s)),
    )
    out = tmp_path / "out"
    overrides = tiny_overrides(tiny_assets, out, *SHORT, "logging.progress_bar=true",
                               "logging.loggers=[stdout]")  # fmt: skip
    assert main(["run", str(copy), "--config", "sft/tiny_cpu_lora", *overrides]) == 0
    assert marker.exists()  # the copy ran, not the installed recipe
    assert any(line.startswith("step 2 | loss") for line in written), written
    # metrics.jsonl is always written (stdout was the only logger), and the curve from it
    steps = [json.loads(line).get("step") for line in (out / "metrics.jsonl").open()]
    assert 2 in steps
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_recipe_file_without_run_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    assert main(["run", str(bad), "--config", "sft/tiny_cpu_lora"]) == 2
    assert "defines neither `recipe` (a Recipe) nor a `run(config)`" in capsys.readouterr().err


# Heavy modules a single-device LoRA sft run has no use for (DCP: ~0.5 s of start-up).
UNNEEDED_MODULES = (
    "torchao", "transformers", "peft", "torch.distributed.checkpoint",
    "torch.distributed.pipelining",
)  # fmt: skip


def test_plain_lora_run_imports_no_torchao_and_prints_no_warning(
    tiny_assets: TinyAssets, tmp_path: Path
) -> None:
    overrides = tiny_overrides(tiny_assets, tmp_path / "out", *SHORT)
    code = (
        "import sys; from tune.recipes.cli import main; "
        f"status = main(['run', 'sft', '--config', 'sft/tiny_cpu_lora', *{overrides!r}]); "
        f"print([m for m in {UNNEEDED_MODULES!r} if m in sys.modules]); sys.exit(status)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    startup = re.search(
        r"start-up: ([0-9.]+) s from process start to the first step", result.stderr
    )
    assert startup is not None, result.stderr[-3000:]
    assert 0 < float(startup.group(1)) < 240
    assert re.search(r"loaded llama \(.*\) from .* in [0-9.]+ s", result.stderr)
    noise = [line for line in result.stderr.splitlines() if "WARNING" in line or "_pytree" in line]
    assert noise == []
