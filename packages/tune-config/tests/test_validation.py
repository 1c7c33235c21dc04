"""Checks collect every finding by key; validate_config raises on errors, returns warnings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tune.config import (
    Checks,
    ConfigError,
    ConfigValidationError,
    Issue,
    ValidationContext,
    to_container,
    validate_config,
    where,
    world_size_from_env,
)


def test_checks_helpers_record_errors_by_key() -> None:
    checks = Checks()
    assert checks.positive("a", 1)
    assert checks.positive("a", None)
    assert not checks.positive("b", 0)
    assert checks.non_negative("c", 0)
    assert not checks.non_negative("d", -1)
    assert checks.in_range("e", 0.0, 0.0, 1.0)
    assert not checks.in_range("f", 1.0, 0.0, 1.0)
    assert not checks.require(False, "g", "must be even")
    assert [str(i) for i in checks.errors] == [
        "error: b: must be > 0, got 0",
        "error: d: must be >= 0, got -1",
        "error: f: must be in [0.0, 1.0), got 1.0",
        "error: g: must be even",
    ]


def test_missing_paths_are_errors_or_warnings(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    checks = Checks()
    assert checks.path_exists("d", str(tmp_path), "dir")
    assert checks.path_exists("f", str(tmp_path / "f.txt"), "file")
    assert checks.path_exists("n", None, "any")
    assert not checks.path_exists("x", str(tmp_path / "f.txt"), "dir")
    assert checks.errors == [Issue("x", f"directory not found locally: {tmp_path / 'f.txt'}")]
    lenient = Checks(ValidationContext(missing_paths="warn"))
    assert not lenient.path_exists("y", str(tmp_path / "none"), "any")
    assert lenient.errors == []
    assert lenient.issues[0].severity == "warning"


@dataclass
class _Schema:
    lr: float = 1.0
    steps: int = 1

    def validate(self, context: ValidationContext) -> list[Issue]:
        checks = Checks(context)
        checks.positive("lr", self.lr)
        checks.positive("steps", self.steps)
        if context.world_size > 1:
            checks.warn("steps", "few steps for several processes")
        return checks.issues


def test_validate_config_raises_every_error_on_one_line() -> None:
    with pytest.raises(ConfigValidationError) as exc:
        validate_config(_Schema(lr=0, steps=0), ValidationContext(), "run.yaml")
    assert exc.value.keys == ["lr", "steps"]
    assert str(exc.value) == (
        "run.yaml: 2 invalid setting(s): lr: must be > 0, got 0; steps: must be > 0, got 0"
    )
    warnings = validate_config(_Schema(), ValidationContext(world_size=2))
    assert [i.key for i in warnings] == ["steps"]
    assert validate_config(object()) == []  # no validate(): nothing to check


def test_world_size_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert world_size_from_env() == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert world_size_from_env() == 4
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(ValueError, match="WORLD_SIZE='four' is not an integer"):
        world_size_from_env()
    monkeypatch.setenv("WORLD_SIZE", "0")
    with pytest.raises(ValueError, match="must be >= 1"):
        world_size_from_env()


def test_errors_name_the_location() -> None:
    assert where(None) == "<config>"
    assert where("a.yaml", 3) == "a.yaml:3"
    assert where("a.yaml", "command line ('x=1')") == "command line ('x=1')"
    err = ConfigError("a.b", "unknown key", "a.yaml", 3)
    assert (str(err), err.key) == ("a.yaml:3: a.b: unknown key", "a.b")


def test_to_container_gives_plain_trees() -> None:
    assert to_container({"s": _Schema(), "t": (1, [_Schema(lr=2.0)])}) == {
        "s": {"lr": 1.0, "steps": 1},
        "t": [1, [{"lr": 2.0, "steps": 1}]],
    }
