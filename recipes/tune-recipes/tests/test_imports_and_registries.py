"""Dotted imports are refused unless allow-listed; registries are extended through entry points."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tune.recipes.cli import main
from tune.recipes.config import (
    DATASETS,
    LOGGERS,
    LOSSES,
    LR_SCHEDULES,
    OPTIMIZERS,
    ConfigError,
    import_allowed,
    import_object,
    load_config,
)
from tune.recipes.sft import SFTConfig


def test_component_key_injection_is_refused_at_parse_time(sft_yaml) -> None:
    text = (
        sft_yaml()
        .read_text()
        .replace(
            "    name: adamw\n",
            "    name: adamw\n    kwargs:\n      _component_: os.system\n      command: rm -rf /\n",
        )
    )
    path = sft_yaml(text, name="evil.yaml")
    line = text.splitlines().index("      _component_: os.system") + 1
    with pytest.raises(ConfigError) as exc:
        load_config(path, SFTConfig)
    assert exc.value.key == "training.optimizer.kwargs._component_"
    assert str(exc.value).startswith(f"{path}:{line}: training.optimizer.kwargs._component_: ")
    assert "import of 'os.system' refused" in str(exc.value)


def test_dotted_component_name_is_refused_without_allow_list(sft_yaml) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(sft_yaml(), SFTConfig, ["training.optimizer.name=os.system"])
    assert exc.value.key == "training.optimizer.name"
    assert "import of 'os.system' refused" in str(exc.value)
    assert "command line ('training.optimizer.name=os.system')" in str(exc.value)
    # Not allowed by a pattern for another package either.
    with pytest.raises(ConfigError, match=r"allowed now: mypkg\.\*"):
        load_config(
            sft_yaml(), SFTConfig, ["training.optimizer.name=os.system"], allow_imports=["mypkg.*"]
        )


def test_allow_listed_import_is_accepted_and_resolves(sft_yaml) -> None:
    path = sft_yaml(allow_imports=["torch.optim.*"])
    cfg = load_config(path, SFTConfig, ["training.optimizer.name=torch.optim.Adagrad"])
    assert cfg.training.optimizer.name == "torch.optim.Adagrad"
    assert import_object(cfg.training.optimizer.name, cfg.allow_imports) is torch.optim.Adagrad
    # The same through --allow-import on the command line.
    base = sft_yaml(name="plain.yaml")
    args = ["training.optimizer.name=torch.optim:Adagrad", "--allow-import", "torch.optim.*"]
    assert main(["validate", str(base), *args]) == 0


def test_import_object_refuses_outside_the_allow_list() -> None:
    with pytest.raises(PermissionError, match=r"import of 'os\.system' refused"):
        import_object("os.system", ["torch.*"])
    assert import_object("os.path:join", ["os.path.*"]) is __import__("os").path.join
    assert import_allowed("mypkg.sub:Thing", ["mypkg.*"])
    assert not import_allowed("mypkgevil.Thing", ["mypkg.*"])


def test_unknown_registry_name_suggests_the_closest(sft_yaml) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(sft_yaml(), SFTConfig, ["training.optimizer.name=adamww"])
    assert exc.value.key == "training.optimizer.name"
    assert "unknown optimizer 'adamww' (did you mean 'adamw'?)" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_config(sft_yaml(), SFTConfig, ["logging.loggers=[stdout, jsonll]"])
    assert exc.value.key == "logging.loggers.1"
    assert "did you mean 'jsonl'" in str(exc.value)


def test_builtin_targets_resolve_lazily() -> None:
    import tune.train

    assert OPTIMIZERS.load("adamw") is torch.optim.AdamW
    assert OPTIMIZERS.load("sgd") is torch.optim.SGD
    assert LOGGERS.load("stdout") is tune.train.StdoutLogger
    assert LR_SCHEDULES.load("cosine") is tune.train.cosine_schedule_with_warmup
    with pytest.raises(KeyError, match="unknown optimizer 'nope'"):
        OPTIMIZERS.load("nope")


@pytest.mark.parametrize("reg", [OPTIMIZERS, LR_SCHEDULES, LOSSES, DATASETS, LOGGERS])
def test_every_builtin_target_exists(reg) -> None:
    # Guards against a library renaming what a built-in name points at.
    for name, target in reg.builtins.items():
        if name == "adamw8bit":
            continue  # torchao.optim compiles kernels on first use; import checked by tune-quant
        assert callable(reg.load(name)), f"{reg.group}: {name} -> {target}"


def test_a_package_extends_a_registry_through_entry_points(sft_yaml, echo_path: Path) -> None:
    # The fake `echo-recipes` distribution registers `echo_sgd` in `tune.optimizers`.
    assert "echo_sgd" in OPTIMIZERS.names()
    assert OPTIMIZERS.load("echo_sgd") is torch.optim.SGD
    cfg = load_config(sft_yaml(), SFTConfig, ["training.optimizer.name=echo_sgd"])
    assert cfg.training.optimizer.name == "echo_sgd"
