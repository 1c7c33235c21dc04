"""Registry names -> tune.train's optimizer, schedule and loggers (the building is tested there)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tune.recipes.common.metric_logging import build_loggers
from tune.recipes.common.optimization import build_optimizer, build_schedule
from tune.train import JsonlLogger, StdoutLogger

ADAM = {"lr": 1e-2, "weight_decay": 0.1, "betas": [0.8, 0.9], "eps": 1e-6}


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.randn(4, 3))]


def test_optimizer_by_name_gets_adam_settings_only_if_it_is_adam() -> None:
    adamw = build_optimizer(_params(), "adamw", kwargs={"amsgrad": True}, **ADAM)
    assert type(adamw) is torch.optim.AdamW
    group = adamw.param_groups[0]
    assert (group["betas"], group["eps"], group["amsgrad"], group["fused"]) == (
        (0.8, 0.9), 1e-6, True, True)  # fmt: skip
    sgd = build_optimizer(_params(), "sgd", kwargs={"momentum": 0.9}, **ADAM)  # no betas for SGD
    assert (type(sgd), sgd.param_groups[0]["momentum"]) == (torch.optim.SGD, 0.9)
    with pytest.raises(ValueError, match=r"^training\.optimizer: the optimizer's kwargs set fo"):
        build_optimizer(_params(), "adamw", kwargs={"foreach": True}, implementation="fused",
                        **ADAM)  # fmt: skip
    with pytest.raises(PermissionError, match=r"torch\.optim\.RMSprop.*--allow-import"):
        build_optimizer(_params(), "torch.optim.RMSprop", kwargs={}, **ADAM)
    rms = build_optimizer(_params(), "torch.optim.RMSprop", kwargs={}, allow_imports=["torch.optim.RMSprop"],
                          **ADAM)  # fmt: skip
    assert rms.param_groups[0]["eps"] == 1e-8  # the class's own eps, not the config's


@pytest.mark.parametrize(
    ("name", "rates"),
    [("constant", [0.5, 1.0, 1.0, 1.0, 1.0]), ("linear", [0.5, 1.0, 0.7, 0.4, 0.1]),
     ("warmup_stable_decay", [0.5, 1.0, 1.0, 1.0, 0.1])],
)  # fmt: skip
def test_schedule_by_name(name: str, rates: list[float]) -> None:
    opt = torch.optim.SGD(_params(), lr=1.0)
    sched = build_schedule(opt, name, warmup_steps=1, total_steps=4, min_lr_ratio=0.1)
    seen = []
    for _ in rates:
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(rates)


def test_loggers_by_name_with_the_configured_jsonl_path(tmp_path: Path) -> None:
    sink = build_loggers(["stdout", "jsonl"], output_dir=tmp_path / "run",
                         jsonl_path=str(tmp_path / "m.jsonl"), options={})  # fmt: skip
    assert [type(lg) for lg in sink.loggers] == [StdoutLogger, JsonlLogger]
    assert sink.loggers[1].path == tmp_path / "m.jsonl"
    sink.close()
    sink = build_loggers(["jsonl"], output_dir=tmp_path / "run", jsonl_path=None, options={})
    assert sink.loggers[0].path == tmp_path / "run" / "metrics.jsonl"
    sink.close()
