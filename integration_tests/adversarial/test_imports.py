"""A config never runs code that the command line did not allow (class: imports)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tune.recipes.commands.run import rank_argv
from tune.recipes.discovery import find_config

from .conftest import SHORT, Assets, Expect, tune_cli

pytestmark = pytest.mark.integration

KLASS = "imports"
# Callables a config might try to reach, directly or through a module that imported them.
DANGEROUS = [
    "os.system",
    "os:system",
    "posix:system",
    "subprocess.run",
    "subprocess:Popen",
    "builtins:exec",
    "builtins.eval",
    "importlib:import_module",
    "pickle:loads",
    "shutil:rmtree",
    "tune.train.loggers.redaction:os.system",
    "tune.config.imports:importlib.import_module",
]
FIELDS = {
    "training.optimizer.name": "{}",
    "training.lr_schedule.name": "{}",
    "logging.loggers": "[{}]",
}


def _sft_config(assets: Assets, tmp_path: Path, **top: object) -> tuple[Path, dict]:
    path, _ = find_config("sft/tiny_cpu_lora", "sft")
    tree = yaml.safe_load(path.read_text())
    tree["model"]["checkpoint_dir"] = str(assets.base)
    tree["data"]["source"] = str(assets.sft.data_file)
    tree["checkpointing"]["output_dir"] = str(tmp_path / "out")
    tree.update(top)
    return path, tree


def _write(tree: dict, tmp_path: Path, name: str = "cfg.yaml") -> Path:
    target = tmp_path / name
    target.write_text(yaml.safe_dump(tree, sort_keys=False))
    return target


@pytest.mark.parametrize("field", list(FIELDS))
@pytest.mark.parametrize("target", DANGEROUS)
def test_a_dotted_name_is_refused_without_the_command_line(
    field: str, target: str, assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    _, tree = _sft_config(assets, tmp_path)
    config = _write(tree, tmp_path)
    item = f"{field}={FIELDS[field].format(target)}"
    expect.refused(KLASS, ["validate", str(config), item], field, "refused", "--allow-import")


@pytest.mark.parametrize("grant", [["subprocess:run"], ["*"], ["*:*"], ["subprocess.*"], []])
def test_a_config_cannot_grant_itself_imports(
    grant: list[str], assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    sentinel = tmp_path / "ran"
    _, tree = _sft_config(assets, tmp_path, allow_imports=grant)
    tree["logging"]["loggers"] = ["subprocess:run"]
    tree["logging"]["options"] = {"subprocess:run": {"args": ["touch", str(sentinel)]}}
    config = _write(tree, tmp_path)
    # the attack of the report: `tune validate` said OK and `tune run` ran the command
    expect.refused(KLASS, ["validate", str(config)], "allow_imports", "cannot grant itself")
    expect.refused(
        KLASS,
        ["run", "sft", "--config", str(config)],
        "allow_imports",
        "--allow-import",
        sentinel=sentinel,
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("item", ["allow_imports=[subprocess:run]", "allow_imports.0=os:system"])
def test_an_override_cannot_grant_imports(
    item: str, assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    _, tree = _sft_config(assets, tmp_path)
    config = _write(tree, tmp_path)
    expect.refused(KLASS, ["validate", str(config), item], "allow_imports", "--allow-import")


@pytest.mark.parametrize(
    "place",
    ["training.optimizer.kwargs", "logging.options.jsonl", "model", "logging.loggers.0"],
)
def test_a_component_key_anywhere_is_refused_before_anything_runs(
    place: str, assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    sentinel = tmp_path / "ran"
    _, tree = _sft_config(assets, tmp_path)
    node: object = tree
    *parents, last = place.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})  # type: ignore[index]
    payload = {"_component_": "os.system", "command": f"touch {sentinel}"}
    if isinstance(node, list):
        node[int(last)] = payload
    else:
        node.setdefault(last, {}).update(payload)  # type: ignore[union-attr]
    config = _write(tree, tmp_path)
    expect.refused(
        KLASS, ["run", "sft", "--config", str(config)], "_component_", "os.system",
        sentinel=sentinel,
    )  # fmt: skip
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("target", "pattern"),
    [
        ("tune.train.loggers.redaction:os.system", "tune.train.*"),
        ("tune.train.loggers.redaction:os.system", "tune.*.*"),
        ("subprocess:run", "sub*"),
        ("os.system", "o*"),
        ("mypkgevil.Thing", "mypkg.*"),
        ("torch.optim:os.system", "torch.optim:*"),
    ],
)
def test_a_star_never_crosses_a_dot_or_colon(
    target: str, pattern: str, assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    _, tree = _sft_config(assets, tmp_path)
    config = _write(tree, tmp_path)
    argv = ["validate", str(config), f"training.optimizer.name={target}", "--allow-import", pattern]
    expect.refused(KLASS, argv, "training.optimizer.name", "refused", f"allowed now: {pattern}")


@pytest.mark.parametrize(
    ("target", "pattern", "reason"),
    [
        ("os:system", "os:system", "not a class or function defined in 'os'"),
        ("tune.config.imports:os", "tune.config.imports:*", "is a module"),
        (
            "tune.config.imports:importlib.import_module",
            "tune.config.imports:*.*",
            "is a module",
        ),
        ("torch.optim:_functional", "torch.optim:*", "private name"),
    ],
)
def test_an_allowed_path_must_name_what_its_module_defines(
    target: str, pattern: str, reason: str, assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    _, tree = _sft_config(assets, tmp_path)
    config = _write(tree, tmp_path)
    argv = ["validate", str(config), f"training.optimizer.name={target}", "--allow-import", pattern]
    expect.refused(KLASS, argv, "training.optimizer.name", reason)


def test_the_command_line_allow_list_reaches_the_running_recipe(
    assets: Assets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    argv = assets.argv("sft", out, *SHORT)
    argv += ["training.optimizer.name=torch.optim:Adagrad", "--allow-import", "torch.optim:Adagrad"]
    status, err = tune_cli(argv)
    assert status == 0, err
    optimizer = torch.load(out / "checkpoints" / "step_1" / "optimizer.pt", weights_only=True)
    assert all("sum" in s for s in optimizer["state"].values())  # Adagrad's state, not AdamW's
    # the environment variable reaches it too, and every rank gets the flag
    monkeypatch.setenv("TUNE_ALLOW_IMPORTS", "torch.optim:Adagrad")
    status, err = tune_cli([*argv[:-2], "checkpointing.resume=never"])
    assert status == 0, err
    ranks = rank_argv(["--nproc-per-node=2"], "sft", "c.yaml", [], ["torch.optim:*"])
    assert ranks[-2:] == ["--allow-import", "torch.optim:*"]
