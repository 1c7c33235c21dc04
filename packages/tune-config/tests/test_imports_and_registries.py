"""Dotted imports are refused unless the caller allows them; registries grow through entry points."""

from __future__ import annotations

import collections
import fractions
import json
import os
from pathlib import Path

import pytest
from config_test_schema import OPTIMIZERS, RunConfig

from tune.config import (
    ConfigError,
    Registry,
    check_component_keys,
    import_allowed,
    import_object,
    load_config,
)


def test_a_component_key_anywhere_is_refused_at_parse_time(write_yaml) -> None:
    text = (
        write_yaml()
        .read_text()
        .replace(
            "    name: adamw\n",
            "    name: adamw\n    kwargs:\n      _component_: os.system\n      command: rm -rf /\n",
        )
    )
    path = write_yaml(text, name="evil.yaml")
    line = text.splitlines().index("      _component_: os.system") + 1
    with pytest.raises(ConfigError) as exc:
        load_config(path, RunConfig)
    assert exc.value.key == "training.optimizer.kwargs._component_"
    assert str(exc.value).startswith(f"{path}:{line}: training.optimizer.kwargs._component_: ")
    assert "import of 'os.system' refused" in str(exc.value)
    # In a list too, and a non-string value is refused as well.
    with pytest.raises(ConfigError, match=r"^x: a\.1\._component_: import of '3' refused"):
        check_component_keys({"a": [{}, {"_component_": 3}]}, ["*"], source="x")


def test_a_dotted_registry_name_is_refused_without_the_allow_list(write_yaml) -> None:
    item = ["training.optimizer.name=os.system"]
    with pytest.raises(ConfigError) as exc:
        load_config(write_yaml(), RunConfig, item)
    assert exc.value.key == "training.optimizer.name"
    assert "import of 'os.system' refused" in str(exc.value)
    assert "command line ('training.optimizer.name=os.system')" in str(exc.value)
    assert "--allow-import PATTERN" in str(exc.value)
    assert "allowed now: none" in str(exc.value)
    with pytest.raises(ConfigError, match=r"allowed now: mypkg\.\*"):
        load_config(write_yaml(), RunConfig, item, allow_imports=["mypkg.*"])
    with pytest.raises(ConfigError) as exc:  # in a list field: the item's key
        load_config(write_yaml(), RunConfig, ["training.loggers=[stdout, os:system]"])
    assert exc.value.key == "training.loggers.1"


def test_an_allow_listed_import_is_accepted_and_resolves(write_yaml) -> None:
    item = ["training.optimizer.name=json.JSONDecoder"]
    cfg = load_config(write_yaml(), RunConfig, item, allow_imports=["json.*"])
    assert cfg.allow_imports == ["json.*"]  # what the program receives
    assert OPTIMIZERS.load(cfg.training.optimizer.name, cfg.allow_imports) is json.JSONDecoder
    # Allowed but not a class or function of that module: refused while loading, by key.
    with pytest.raises(ConfigError, match=r"training.optimizer.name: import of 'os:system'"):
        load_config(
            write_yaml(), RunConfig, ["training.optimizer.name=os:system"], allow_imports=["os:*"]
        )
    with pytest.raises(ConfigError, match=r"training.optimizer.name: cannot import"):
        load_config(
            write_yaml(), RunConfig, ["training.optimizer.name=json:Nope"], allow_imports=["json:*"]
        )


def test_a_config_cannot_grant_itself_imports(write_yaml) -> None:
    path = write_yaml(allow_imports=["subprocess:*"], name="grant.yaml")
    with pytest.raises(ConfigError) as exc:
        load_config(path, RunConfig, ["training.loggers=[subprocess:run]"])
    assert exc.value.key == "allow_imports"
    assert "a config cannot grant itself imports" in str(exc.value)
    assert "--allow-import" in str(exc.value)
    for item in ["allow_imports=[subprocess:*]", "allow_imports.0=os:system"]:
        with pytest.raises(ConfigError, match="imports are not granted by overrides"):
            load_config(write_yaml(), RunConfig, [item])


def test_the_environment_variable_allows_imports(write_yaml, monkeypatch) -> None:
    item = ["training.optimizer.name=json:JSONDecoder"]
    with pytest.raises(ConfigError):
        load_config(write_yaml(), RunConfig, item)
    monkeypatch.setenv("TUNE_ALLOW_IMPORTS", " json:JSONDecoder , mypkg.*,,")
    cfg = load_config(write_yaml(), RunConfig, item, allow_imports=["other.*", "mypkg.*"])
    assert cfg.allow_imports == ["other.*", "mypkg.*", "json:JSONDecoder"]


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("tune.config.loading:os.system", "tune.config.*"),
        ("tune.config.imports:os.system", "tune.*.*"),
        ("mypkg.sub:Thing", "mypkg:*"),
        ("mypkgevil.Thing", "mypkg.*"),
        ("os.system", "o*"),
        ("os:system", "os.sys?x"),
    ],
)
def test_a_star_never_crosses_a_dot_or_colon(path: str, pattern: str) -> None:
    assert not import_allowed(path, [pattern])
    with pytest.raises(PermissionError, match="refused"):
        import_object(path, [pattern])


def test_an_allowed_path_must_name_what_its_module_defines() -> None:
    # os.system is defined in posix: reaching it through `os` (or through any module that
    # imported it) is refused even where the pattern allows the path.
    with pytest.raises(PermissionError, match=r"system.*not a class or function defined in 'os'"):
        import_object("os:system", ["os:system"])
    with pytest.raises(PermissionError, match="is a module reached through"):
        import_object("tune.config.imports:os.system", ["tune.config.imports:*.*"])
    with pytest.raises(PermissionError, match="private name"):
        import_object("json:_default_decoder", ["json:*"])
    with pytest.raises(PermissionError, match="resolves to a str object, which is not a class"):
        import_object("tune.config.imports:ALLOW_ENV", ["tune.config.imports:*"])
    with pytest.raises(ImportError, match="no importable module prefix"):
        import_object("nosuchpkg_xyz.Thing", ["nosuchpkg_xyz.*"])
    # Re-exports from a sub-module of the allowed module are fine, and both spellings work.
    assert import_object("os.path:join", ["os.path.*"]) is os.path.join
    assert import_object("collections.OrderedDict", ["collections:*"]) is collections.OrderedDict
    assert import_allowed("mypkg.sub:Thing", ["mypkg.*:*"])


def test_unknown_registry_name_suggests_the_closest(write_yaml) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write_yaml(), RunConfig, ["training.optimizer.name=adamww"])
    assert exc.value.key == "training.optimizer.name"
    assert "unknown optimizer 'adamww' (did you mean 'adamw'?); known: adamw, own, sgd" in str(
        exc.value
    )
    assert "'tune_config_test.optimizers' entry-point group" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_config(write_yaml(), RunConfig, ["training.loggers=[stdout, jsonll]"])
    assert exc.value.key == "training.loggers.1"
    assert "unknown metric logger 'jsonll' (did you mean 'jsonl'?)" in str(exc.value)


def test_builtin_targets_resolve_lazily() -> None:
    assert OPTIMIZERS.load("adamw") is collections.OrderedDict
    assert OPTIMIZERS.load("sgd") is fractions.Fraction
    assert OPTIMIZERS.load("own") is None  # the program builds it itself
    with pytest.raises(KeyError, match="unknown optimizer 'nope'"):
        OPTIMIZERS.load("nope")
    with pytest.raises(PermissionError, match="refused"):
        OPTIMIZERS.load("os:system")


def _install_distribution(root: Path, group: str) -> None:
    """A fake installed distribution registering ``fancy`` in ``group``."""
    root.mkdir(parents=True)
    (root / "fancy_parts.py").write_text("class Fancy:\n    pass\n")
    info = root / "fancy_parts-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fancy-parts\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\nfancy = fancy_parts:Fancy\n")


def test_a_package_extends_a_registry_through_entry_points(
    write_yaml, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_distribution(tmp_path / "site", OPTIMIZERS.group)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert OPTIMIZERS.names() == ["adamw", "fancy", "own", "sgd"]
    assert OPTIMIZERS.entry_points() == {"fancy": "fancy_parts:Fancy"}
    assert OPTIMIZERS.load("fancy").__name__ == "Fancy"
    cfg = load_config(write_yaml(), RunConfig, ["training.optimizer.name=fancy"])
    assert cfg.training.optimizer.name == "fancy"
    # A registry with no builtins is its entry-point group alone.
    assert Registry(OPTIMIZERS.group, "optimizer").names() == ["fancy"]
