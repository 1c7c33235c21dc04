"""The recipes' registries and the allow-list through the `tune` command (the machinery itself is
tested in tune-config)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tune.config import ConfigError, import_object
from tune.recipes.cli import main
from tune.recipes.config import LOGGERS, LR_SCHEDULES, OPTIMIZERS, load_config
from tune.recipes.sft import SFTConfig


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
    path = sft_yaml()
    override = ["training.optimizer.name=torch.optim.Adagrad"]
    cfg = load_config(path, SFTConfig, override, allow_imports=["torch.optim.*"])
    assert cfg.training.optimizer.name == "torch.optim.Adagrad"
    assert cfg.allow_imports == ["torch.optim.*"]  # what the recipe receives
    assert import_object(cfg.training.optimizer.name, cfg.allow_imports) is torch.optim.Adagrad
    # The same through --allow-import on the command line.
    args = ["training.optimizer.name=torch.optim:Adagrad", "--allow-import", "torch.optim.*"]
    assert main(["validate", str(path), *args]) == 0


def test_a_config_cannot_grant_itself_imports(sft_yaml, capsys) -> None:
    path = sft_yaml(allow_imports=["subprocess:*"])
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "allow_imports: a config cannot grant itself imports" in err
    assert "--allow-import" in err


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


@pytest.mark.parametrize("reg", [OPTIMIZERS, LR_SCHEDULES, LOGGERS])
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


@pytest.mark.parametrize(
    ("item", "hint"),
    [
        ("checkpointing.async_save=true", "never did anything"),
        ("data.hf_token=abc", "HF_TOKEN"),
        ("data.streaming=true", "never did anything"),
        ("data.builder=mine", "data.format"),
        ("training.loss=cross_entropy", "training.fused_ce"),
    ],
)
def test_a_removed_key_is_named_with_what_to_do_instead(sft_yaml, item: str, hint: str) -> None:
    key = item.partition("=")[0]
    with pytest.raises(ConfigError) as exc:  # as an override
        load_config(sft_yaml(), SFTConfig, [item])
    assert exc.value.key == key
    assert "was removed" in str(exc.value)
    assert hint in str(exc.value)
    section, _, name = key.partition(".")
    path = sft_yaml(**{section: {name: item.partition("=")[2]}})
    with pytest.raises(ConfigError, match=f"{key}: was removed"):  # in the file
        load_config(path, SFTConfig)
